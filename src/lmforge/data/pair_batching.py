"""Sentence pairs -> padded batches: encoding, length filtering and token-budget length buckets.

Sources end with ``<eos>``; the decoder reads ``<bos> y`` and predicts ``y <eos>``. Batches group pairs of similar
length (so little padding is wasted) and hold at most ``max_tokens`` padded tokens on the longer side; padding is
dynamic (each batch is padded to its own longest pair). Targets at padding are ``-100``, so the loss never counts
them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch

__all__ = ["PairBatch", "encode_source", "encode_pairs", "filter_pairs", "token_batches", "collate_pairs", "IGNORE_INDEX"]

IGNORE_INDEX = -100


@dataclass
class PairBatch:
    """A padded batch: ``src`` (B, S), ``tgt_in`` (B, T) starting with ``<bos>``, ``tgt_out`` (B, T) ending with
    ``<eos>`` and ``-100`` at padding."""

    src: Any
    tgt_in: Any
    tgt_out: Any

    def to(self, device: Any, non_blocking: bool = False) -> "PairBatch":
        """The batch on ``device``."""
        return PairBatch(*(t.to(device, non_blocking=non_blocking) for t in (self.src, self.tgt_in, self.tgt_out)))

    @property
    def num_tokens(self) -> int:
        """Target tokens trained on (padding excluded)."""
        return int((self.tgt_out != IGNORE_INDEX).sum())


def encode_source(tokenizer: Any, text: str) -> list[int]:
    """Source ids as models see them: the text's ids followed by ``<eos>``."""
    return tokenizer.encode(text) + [tokenizer.eos_id]


def encode_pairs(pairs: Sequence[tuple[str, str]], src_tokenizer: Any, tgt_tokenizer: Any) -> tuple[list[list[int]], list[list[int]]]:
    """Source ids (with ``<eos>``) and bare target ids of each pair (batch-encoded)."""
    src = src_tokenizer.encode_batch([s for s, _ in pairs])
    tgt = tgt_tokenizer.encode_batch([t for _, t in pairs])
    return [s + [src_tokenizer.eos_id] for s in src], [list(t) for t in tgt]


def filter_pairs(src_ids: Sequence[Sequence[int]], tgt_ids: Sequence[Sequence[int]], max_len: int,
                 max_ratio: Optional[float] = None) -> list[int]:
    """Indices of the pairs worth training on.

    A pair is dropped when either side is empty, when either side (with its ``<eos>``) is longer than ``max_len``
    tokens, or, with ``max_ratio``, when one side is more than ``max_ratio`` times longer than the other (a sign of
    misalignment).
    """
    keep = []
    for i, (s, t) in enumerate(zip(src_ids, tgt_ids)):
        ls, lt = len(s) - 1, len(t)  # real tokens (the source carries its <eos>)
        if ls <= 0 or lt <= 0 or ls + 1 > max_len or lt + 1 > max_len:
            continue
        if max_ratio is not None and max(ls, lt) > max_ratio * min(ls, lt):
            continue
        keep.append(i)
    return keep


def token_batches(src_lens: Sequence[int], tgt_lens: Sequence[int], max_tokens: int, *,
                  shuffle: bool = False, seed: int = 0, max_sentences: Optional[int] = None) -> list[list[int]]:
    """Groups pair indices into length-bucketed batches under a token budget.

    Pairs are sorted by target then source length (ties in a seeded random order when ``shuffle``); consecutive
    pairs fill a batch while ``rows x longest side`` stays within ``max_tokens`` (a single longer pair gets a batch
    of its own). With ``shuffle`` the batch order is seeded-random too.

    Args:
        src_lens: source lengths (as fed to the encoder).
        tgt_lens: decoder lengths (target tokens + 1).
        max_tokens: the padded-token budget of a batch.
        shuffle: randomise tie order and batch order.
        seed: the seed of that randomness (e.g. ``base_seed + epoch``).
        max_sentences: an optional cap on rows per batch.

    Returns:
        Lists of indices into the pairs.
    """
    n = len(src_lens)
    src_a, tgt_a = np.asarray(src_lens), np.asarray(tgt_lens)
    rng = np.random.default_rng(seed)
    base = rng.permutation(n) if shuffle else np.arange(n)
    order = base[np.lexsort((src_a[base], tgt_a[base]))]  # by target length, then source length; stable
    batches: list[list[int]] = []
    cur: list[int] = []
    longest = 0
    for i in order.tolist():
        need = max(longest, int(src_a[i]), int(tgt_a[i]))
        if cur and ((len(cur) + 1) * need > max_tokens or (max_sentences and len(cur) >= max_sentences)):
            batches.append(cur)
            cur, need = [], max(int(src_a[i]), int(tgt_a[i]))
        cur.append(i)
        longest = need
    if cur:
        batches.append(cur)
    if shuffle:
        batches = [batches[j] for j in rng.permutation(len(batches))]
    return batches


def collate_pairs(src_seqs: Sequence[Sequence[int]], tgt_seqs: Sequence[Sequence[int]], pad_id: int, bos_id: int,
                  eos_id: int) -> PairBatch:
    """Right-pads a list of pairs into a :class:`PairBatch` (dynamic padding: to this batch's longest)."""

    b = len(src_seqs)
    s_len = max(len(s) for s in src_seqs)
    t_len = max(len(t) for t in tgt_seqs) + 1
    src = torch.full((b, s_len), pad_id, dtype=torch.long)
    tgt_in = torch.full((b, t_len), pad_id, dtype=torch.long)
    tgt_out = torch.full((b, t_len), IGNORE_INDEX, dtype=torch.long)
    for r, (s, t) in enumerate(zip(src_seqs, tgt_seqs)):
        src[r, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        tgt_in[r, : len(t) + 1] = torch.as_tensor([bos_id, *t], dtype=torch.long)
        tgt_out[r, : len(t) + 1] = torch.as_tensor([*t, eos_id], dtype=torch.long)
    return PairBatch(src, tgt_in, tgt_out)
