"""Language-model figures on a token split: loss, perplexity, bits per character and bits per byte.

Bits per character (and per byte) divide the *total* information, in bits, that the model needs for the split
by the number of characters (bytes) of the text the split was made from, never by the number of tokens, so
models with different tokenizers compare fairly. Padding targets (-100) never count.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.data import eval_window_starts, IGNORE_INDEX, iter_eval_batches

__all__ = ["evaluate_lm", "lm_figures"]

_LN2 = math.log(2.0)


def lm_figures(total_nats: float, predicted: int, split_targets: int, meta_split: Optional[dict]) -> dict[str, Any]:
    """Turns a summed loss into the reported figures.

    Args:
        total_nats: summed cross-entropy (natural log) over the ``predicted`` targets.
        predicted: how many targets were scored.
        split_targets: how many targets the whole split has (``tokens - 1``); when fewer were scored, bits per
            character and per byte are scaled up to the whole split (an estimate).
        meta_split: ``{"chars", "bytes", ...}`` of the split's text, or ``None`` (then the per-char and per-byte
            figures are ``None``).

    Returns:
        ``loss``, ``perplexity``, ``bits_per_char``, ``bits_per_byte`` and ``tokens``.
    """
    loss = total_nats / max(1, predicted)
    bits = loss / _LN2 * split_targets  # the whole split's information content
    chars = (meta_split or {}).get("chars")
    nbytes = (meta_split or {}).get("bytes")
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "bits_per_char": bits / chars if chars else None,
        "bits_per_byte": bits / nbytes if nbytes else None,
        "tokens": predicted,
    }


@torch.no_grad()
@torch.no_grad()
def score_batches(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                  device: str | torch.device, autocast: Any = None) -> tuple[float, int]:
    """The one validation loop: summed next-token cross-entropy (nats) and the number of targets scored over
    ``(inputs, targets)`` batches (targets equal to ``IGNORE_INDEX`` are skipped), in eval mode, the model's
    train/eval mode restored afterwards."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            with autocast() if autocast is not None else contextlib.nullcontext():
                logits, _ = model(x)
            nll = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1),  # (B*T, V)
                                  ignore_index=IGNORE_INDEX, reduction="sum")
            total += float(nll)
            count += int((y != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    return total, count


def _reporting(batches: Iterator[Any], progress: Callable[[int, int], None], batch_size: int, total: int) -> Iterator[Any]:
    """``batches`` as they are, calling ``progress(windows_done, total)`` once each batch has been scored."""
    done = 0
    for batch in batches:
        yield batch
        done = min(total, done + batch_size)
        progress(done, total)


def evaluate_lm(model: torch.nn.Module, tokens: np.ndarray, meta_split: Optional[dict], block_size: int,
                batch_size: int, device: str | torch.device | None = None, max_batches: Optional[int] = None,
                autocast: Any = None, max_tokens: Optional[int] = None,
                progress: Optional[Callable[[int, int], None]] = None) -> dict[str, Any]:
    """Scores a causal LM on every token of a split (contiguous windows, each target exactly once), or on at most
    ``max_tokens`` of them (windows spread evenly over the split, always the same ones).

    Args:
        model: a :class:`~lmforge.models.protocol.CausalLM`; its train/eval mode is restored afterwards.
        tokens: 1-D token ids of the split (documents joined with ``eos``).
        meta_split: the split's ``{"chars", "bytes"}`` (from ``LMData.meta["val"]``), or ``None``.
        block_size: window length.
        batch_size: windows per forward pass.
        device: where to run; default: the model's device.
        max_batches: score only the first this many batches (bits per char/byte are then estimates).
        autocast: an optional context-manager factory (e.g. ``Precision.autocast``).
        max_tokens: score at most this many targets (bits per char/byte are then estimates for the split);
            ``None`` or a number at least the split's size scores every target.
        progress: called as ``progress(windows_done, windows_total)`` after each batch.

    Returns:
        ``loss`` (nats/token), ``perplexity``, ``bits_per_char``, ``bits_per_byte``, ``tokens`` (targets
        scored) and ``tokens_per_s``.

    Example:
        >>> figs = evaluate_lm(model, data.val, data.meta["val"], 64, 32)  # doctest: +SKIP
        >>> round(figs["bits_per_char"], 3)  # doctest: +SKIP
    """

    if device is None:
        device = next(model.parameters()).device
    t0 = time.perf_counter()
    starts = eval_window_starts(len(tokens), block_size, max_tokens)
    batches = itertools.islice(iter_eval_batches(tokens, block_size, batch_size, starts=starts), max_batches)
    if progress is not None:
        batches = _reporting(batches, progress, batch_size, len(starts))
    total, count = score_batches(model, batches, device, autocast)
    seconds = time.perf_counter() - t0
    figs = lm_figures(total, count, max(1, len(tokens) - 1), meta_split)
    figs["tokens_per_s"] = count / seconds if seconds > 0 else float("inf")
    return figs
