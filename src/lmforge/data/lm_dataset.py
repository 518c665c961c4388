"""``(x, y)`` windows of ``block_size`` tokens from a 1-D token array: random ones for training,
contiguous non-overlapping ones that cover a split exactly once for evaluation."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from lmforge.errors import DataError

__all__ = ["sample_batch", "iter_eval_batches", "IGNORE_INDEX"]

#: Target value that the loss ignores (``F.cross_entropy``'s default ``ignore_index``).
IGNORE_INDEX = -100


def _check(tokens: np.ndarray, block_size: int, batch_size: int, need: int, what: str) -> None:
    if block_size < 1 or batch_size < 1:
        raise DataError(f"block_size and batch_size must be at least 1, got {block_size} and {batch_size}")
    if len(tokens) < need:
        raise DataError(f"the {what} has {len(tokens)} tokens, too few for block_size={block_size} (needs at least "
                        f"{need}); lower the block size (e.g. data.block_size={max(1, len(tokens) - 1)}) or use a larger corpus")


def sample_batch(tokens: np.ndarray, block_size: int, batch_size: int,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random training windows: ``y`` is ``x`` shifted by one token.

    Args:
        tokens: 1-D token ids (a memmap from :func:`~lmforge.data.prepare_lm_data`).
        block_size: window length T.
        batch_size: number of windows B.
        generator: a CPU ``torch.Generator`` for reproducible windows.

    Returns:
        ``(x, y)``, int64 tensors of shape (B, T) on the CPU.

    Raises:
        DataError: the split holds fewer than ``block_size + 1`` tokens.
    """
    _check(tokens, block_size, batch_size, block_size + 1, "split")
    starts = torch.randint(0, len(tokens) - block_size, (batch_size,), generator=generator).numpy()
    index = starts[:, None] + np.arange(block_size + 1)[None, :]  # (B, T+1)
    window = torch.from_numpy(np.asarray(tokens[index], dtype=np.int64))  # (B, T+1)
    return window[:, :-1].contiguous(), window[:, 1:].contiguous()


def iter_eval_batches(tokens: np.ndarray, block_size: int, batch_size: int,
                      pad_id: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Contiguous, non-overlapping windows that predict every token after the first exactly once.

    Window ``k`` has inputs ``tokens[kT : kT+T]`` and targets ``tokens[kT+1 : kT+T+1]``. The last window may
    be shorter; it is padded with ``pad_id`` in ``x`` and ``IGNORE_INDEX`` (-100) in ``y``, so padding never
    counts in a loss or a token count.

    Args:
        tokens: 1-D token ids.
        block_size: window length T.
        batch_size: windows per batch (the last batch may hold fewer).
        pad_id: input id used for padding.

    Yields:
        ``(x, y)``, int64 tensors of shape (B, T).

    Raises:
        DataError: the split holds fewer than 2 tokens.
    """
    _check(tokens, block_size, batch_size, 2, "evaluation split")
    n_targets = len(tokens) - 1
    starts = list(range(0, n_targets, block_size))
    for b in range(0, len(starts), batch_size):
        chunk = starts[b:b + batch_size]
        x = torch.full((len(chunk), block_size), pad_id, dtype=torch.long)  # (B, T)
        y = torch.full((len(chunk), block_size), IGNORE_INDEX, dtype=torch.long)  # (B, T)
        for row, s in enumerate(chunk):
            n = min(block_size, n_targets - s)
            window = torch.from_numpy(np.asarray(tokens[s:s + n + 1], dtype=np.int64))
            x[row, :n] = window[:-1]
            y[row, :n] = window[1:]
        yield x, y
