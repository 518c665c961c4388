"""``(x, y)`` windows of ``block_size`` tokens from a 1-D token array (a memory-mapped shard store or any array):
non-overlapping ones in a seeded random order for training (:class:`WindowSampler`), contiguous ones that cover
a split exactly once, or an evenly spread bounded subset of them, for evaluation."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from lmforge.errors import DataError

__all__ = ["sample_batch", "iter_eval_batches", "eval_window_starts", "gather_windows", "WindowSampler", "IGNORE_INDEX"]

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


def gather_windows(tokens: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """``tokens[s : s + length]`` for each start, as one (len(starts), length) int64 array (row by row, so a
    memory-mapped store reads only those bytes)."""
    out = np.empty((len(starts), length), dtype=np.int64)
    for row, s in enumerate(starts):
        out[row] = tokens[int(s):int(s) + length]
    return out


class WindowSampler:
    """Training windows of ``block_size + 1`` tokens in a seeded random order; the windows of a batch never overlap.

    The split is cut into ``block_size``-token cells. Epoch ``e`` visits every cell once, in an order shuffled by a
    generator seeded with ``(seed, e)``; a batch is the next ``batch_size`` cells of that order, each window
    starting at the same seeded phase inside its cell (a new phase every batch, so over training windows start at
    every position, as with uniformly random windows). So the windows of one batch are disjoint, ranks that take
    disjoint rows of the global batch read disjoint windows, and ``(epoch, pos)`` is all a checkpoint needs to
    resume exactly. The order of one epoch is kept as uint32 (4 bytes a cell).

    Args:
        n_tokens: length of the split.
        block_size: window length T (each window holds T + 1 tokens: inputs and the shifted targets).
        seed: the order's seed.
    """

    def __init__(self, n_tokens: int, block_size: int, seed: int = 0) -> None:
        if n_tokens < block_size + 1:
            raise DataError(f"the training split has {n_tokens} tokens, too few for block_size={block_size}; lower the block size")
        self.n, self.block_size, self.seed = n_tokens, block_size, seed
        self.phases = min(block_size, n_tokens - block_size)  # a window may start this far into its cell
        self.epoch, self.pos = 0, 0
        self._cached: tuple[int, np.ndarray] | None = None

    def _order(self, epoch: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != epoch:
            count = (self.n - self.phases) // self.block_size
            order = np.arange(count, dtype=np.uint32 if count < 2 ** 32 else np.int64)
            np.random.default_rng([self.seed, epoch]).shuffle(order)
            self._cached = (epoch, order)
        return self._cached[1]

    @property
    def windows_per_epoch(self) -> int:
        return len(self._order(self.epoch))

    def next_starts(self, batch_size: int) -> np.ndarray:
        """Start offsets of the next ``batch_size`` windows (an epoch's remainder smaller than a batch is skipped)."""
        order = self._order(self.epoch)
        if self.pos + batch_size > len(order) and len(order) >= batch_size:
            self.epoch, self.pos = self.epoch + 1, 0
            order = self._order(self.epoch)
        phase = int(np.random.default_rng([self.seed, self.epoch, self.pos, 1]).integers(0, self.phases))
        cells = np.resize(np.roll(order, -self.pos), batch_size)  # wraps only when an epoch is smaller than a batch
        self.pos += batch_size
        if self.pos >= len(order):
            self.epoch, self.pos = self.epoch + 1, 0
        return phase + cells.astype(np.int64) * self.block_size

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])


def eval_window_starts(n_tokens: int, block_size: int, max_tokens: int | None = None) -> np.ndarray:
    """Starts of the evaluation windows: every ``block_size``-th position (each target once), or, when the
    split has more than ``max_tokens`` targets, ``max_tokens // block_size`` of them spread evenly (deterministic).
    """
    n_targets = n_tokens - 1
    starts = np.arange(0, max(n_targets, 0), block_size, dtype=np.int64)
    if max_tokens is None or n_targets <= max_tokens:
        return starts
    full = n_targets // block_size  # windows with block_size targets
    k = max(1, min(full, max_tokens // block_size))
    return (np.arange(k, dtype=np.int64) * full // k) * block_size


def iter_eval_batches(tokens: np.ndarray, block_size: int, batch_size: int, pad_id: int = 0,
                      starts: np.ndarray | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Contiguous, non-overlapping windows that predict every token after the first exactly once.

    Window ``k`` has inputs ``tokens[kT : kT+T]`` and targets ``tokens[kT+1 : kT+T+1]``. The last window may
    be shorter; it is padded with ``pad_id`` in ``x`` and ``IGNORE_INDEX`` (-100) in ``y``, so padding never
    counts in a loss or a token count.

    Args:
        tokens: 1-D token ids.
        block_size: window length T.
        batch_size: windows per batch (the last batch may hold fewer).
        pad_id: input id used for padding.
        starts: only these windows (from :func:`eval_window_starts`); default: all of them.

    Yields:
        ``(x, y)``, int64 tensors of shape (B, T).

    Raises:
        DataError: the split holds fewer than 2 tokens.
    """
    _check(tokens, block_size, batch_size, 2, "evaluation split")
    n_targets = len(tokens) - 1
    starts = eval_window_starts(len(tokens), block_size) if starts is None else starts
    for b in range(0, len(starts), batch_size):
        chunk = starts[b:b + batch_size]
        x = torch.full((len(chunk), block_size), pad_id, dtype=torch.long)  # (B, T)
        y = torch.full((len(chunk), block_size), IGNORE_INDEX, dtype=torch.long)  # (B, T)
        for row, s in enumerate(chunk.tolist()):
            n = min(block_size, n_targets - s)
            window = torch.from_numpy(np.asarray(tokens[s:s + n + 1], dtype=np.int64))
            x[row, :n] = window[:-1]
            y[row, :n] = window[1:]
        yield x, y
