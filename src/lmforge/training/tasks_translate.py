"""``TranslationTask``: what the shared :class:`~lmforge.training.trainer.Trainer` needs to train a seq2seq model.

Batches are token-budget length buckets (:func:`~lmforge.data.pair_batching.token_batches`), reshuffled each
epoch with ``seed + epoch``. One optimiser step takes the next ``world_size x grad_accum`` buckets of the epoch;
micro-batch ``m`` of rank ``r`` is bucket ``m * world_size + r``, so every rank walks the same sequence and a
data-parallel run sees the same data as a single process. The loss is token-level cross-entropy with optional
label smoothing (arXiv:1512.00567), padding excluded. The final evaluation adds BLEU and chrF of greedy
translations of (up to ``bleu_sentences`` of) the validation pairs.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.data.pair_batching import collate_pairs, IGNORE_INDEX, PairBatch, token_batches
from lmforge.errors import DataError
from lmforge.evaluation.translation import corpus_scores
from lmforge.inference.translate import Translator

__all__ = ["TranslationTask"]


class TranslationTask:
    """Sentence-pair training for the shared trainer.

    Args:
        train_src: source ids of each training pair (ending with ``<eos>``).
        train_tgt: bare target ids of each training pair.
        val_src: validation source ids.
        val_tgt: validation target ids.
        pad_id: padding id (the models' ``pad_idx``).
        bos_id: the decoder's start id.
        eos_id: the end id.
        max_tokens: the token budget of one batch.
        seed: seeds the epoch shuffles.
        label_smoothing: cross-entropy label smoothing.
        val_text: ``(source, reference)`` strings of the validation pairs, for BLEU in the final evaluation.
        tokenizers: ``(src_tokenizer, tgt_tokenizer)``, needed with ``val_text``.
        bleu_sentences: at most this many validation pairs are translated for BLEU (``0`` disables BLEU).
        bleu_beam: beam size of those translations (1 = greedy).
    """

    def __init__(self, train_src: Sequence[Sequence[int]], train_tgt: Sequence[Sequence[int]],
                 val_src: Sequence[Sequence[int]], val_tgt: Sequence[Sequence[int]], *, pad_id: int, bos_id: int,
                 eos_id: int, max_tokens: int = 4096, seed: int = 1337, label_smoothing: float = 0.0,
                 val_text: Optional[Sequence[tuple[str, str]]] = None, tokenizers: Optional[tuple[Any, Any]] = None,
                 bleu_sentences: int = 1000, bleu_beam: int = 1) -> None:
        if not train_src:
            raise DataError("no training pairs are left after filtering; check the files or raise data.max_len")
        if not val_src:
            raise DataError("no validation pairs; pass data.val_src/val_tgt or raise data.val_fraction")
        self.train_src, self.train_tgt = list(train_src), list(train_tgt)
        self.val_src, self.val_tgt = list(val_src), list(val_tgt)
        self.ids = dict(pad_id=pad_id, bos_id=bos_id, eos_id=eos_id)
        self.max_tokens = max_tokens
        self.seed = seed
        self.label_smoothing = label_smoothing
        self.val_text = list(val_text) if val_text is not None else None
        self.tokenizers = tokenizers
        self.bleu_sentences, self.bleu_beam = bleu_sentences, bleu_beam
        self._src_lens = [len(s) for s in self.train_src]
        self._tgt_lens = [len(t) + 1 for t in self.train_tgt]
        self.device = torch.device("cpu")
        self.rank, self.world_size, self.grad_accum = 0, 1, 1
        self.epoch, self.cursor, self.steps_drawn = 0, 0, 0
        self._epoch_batches = self._batches_for(0)
        self._val_batches = token_batches([len(s) for s in self.val_src], [len(t) + 1 for t in self.val_tgt],
                                          max_tokens)

    def _batches_for(self, epoch: int) -> list[list[int]]:
        return token_batches(self._src_lens, self._tgt_lens, self.max_tokens, shuffle=True, seed=self.seed + epoch)

    # --- the Task protocol -------------------------------------------------------------------------------
    def setup(self, *, device: torch.device, rank: int, world_size: int, grad_accum: int) -> None:
        self.device = torch.device(device)
        self.rank, self.world_size, self.grad_accum = rank, world_size, grad_accum

    def _next_bucket(self) -> list[int]:
        if self.cursor >= len(self._epoch_batches):
            self.epoch += 1
            self.cursor = 0
            self._epoch_batches = self._batches_for(self.epoch)
        bucket = self._epoch_batches[self.cursor]
        self.cursor += 1
        return bucket

    def _collate(self, rows: Sequence[int], src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]]) -> PairBatch:
        return collate_pairs([src[i] for i in rows], [tgt[i] for i in rows], **self.ids)

    def next_batches(self) -> list[PairBatch]:
        buckets = [self._next_bucket() for _ in range(self.world_size * self.grad_accum)]
        self.steps_drawn += 1
        mine = [buckets[m * self.world_size + self.rank] for m in range(self.grad_accum)]
        non_blocking = self.device.type == "cuda"
        return [self._collate(b, self.train_src, self.train_tgt).to(self.device, non_blocking) for b in mine]

    def loss(self, model: torch.nn.Module, batch: PairBatch) -> torch.Tensor:
        logits = model(batch.src, batch.tgt_in)  # (B, T, V)
        return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), batch.tgt_out.reshape(-1),  # (B*T, V)
                               ignore_index=IGNORE_INDEX, label_smoothing=self.label_smoothing)

    def batch_tokens(self, batch: PairBatch) -> int:
        return batch.num_tokens

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, max_batches: Optional[int] = None) -> dict[str, Any]:
        was_training = model.training
        model.eval()
        try:
            batches = self._val_batches
            if max_batches is not None and max_batches < len(batches):
                # a fixed subset spread over all lengths, so successive evaluations compare
                batches = [batches[i] for i in np.linspace(0, len(batches) - 1, max_batches).round().astype(int)]
            total, count = 0.0, 0
            for rows in batches:
                b = self._collate(rows, self.val_src, self.val_tgt).to(self.device)
                logits = model(b.src, b.tgt_in)
                total += float(F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), b.tgt_out.reshape(-1),
                                               ignore_index=IGNORE_INDEX, reduction="sum"))
                count += b.num_tokens
            loss = total / max(count, 1)
            figs: dict[str, Any] = {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": count}
            if max_batches is None:
                figs.update(self._bleu(model))
            return figs
        finally:
            model.train(was_training)

    def _bleu(self, model: torch.nn.Module) -> dict[str, Any]:
        if not self.val_text or self.tokenizers is None or self.bleu_sentences <= 0:
            return {}

        pairs = self.val_text[: self.bleu_sentences]
        translator = Translator(model, *self.tokenizers)
        hyps = translator.translate([s for s, _ in pairs], beam=self.bleu_beam, batch_size=64)
        scores = corpus_scores(hyps, [r for _, r in pairs])
        return {"bleu": scores["bleu"], "chrf": scores["chrf"], "bleu_signature": scores["bleu_signature"],
                "bleu_sentences": len(pairs), "bleu_beam": self.bleu_beam}

    def steps_per_epoch(self) -> float:
        return max(1.0, len(self._epoch_batches) / (self.world_size * self.grad_accum))

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "steps_drawn": self.steps_drawn}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self.steps_drawn = int(state.get("steps_drawn", 0))
        self._epoch_batches = self._batches_for(self.epoch)
