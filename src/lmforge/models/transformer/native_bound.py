"""The C decoding step (:mod:`lmforge.models.transformer.native`) bound to one fixed key/value cache, for the
batching engine's slots: each decoding step advances any set of the cache's rows, and prompts are fed straight
into the rows they will decode in."""

from __future__ import annotations

import ctypes
from typing import Any

import torch
from torch import Tensor

from lmforge.models.transformer.native import _I, _P, NativeStep

__all__ = ["BoundCache"]


class BoundCache:
    """A :class:`NativeStep` bound to one cache that never moves in memory: per layer ``k``, ``v`` of shape
    (rows, Hkv, columns, hd) in one layout with contiguous last two dimensions, and ``valid`` (rows, columns) bool.
    Its layout is checked, and its pointers taken, once: a decoding step (:meth:`decode`) then costs a few
    microseconds of Python beside the C call. The batching engine's slots decode through it
    (:class:`~lmforge.inference.slots.KVSlots`), their sequences staying in whatever rows they joined at.
    """

    def __init__(self, step: NativeStep, k: list[Tensor], v: list[Tensor], valid: Tensor) -> None:
        k0 = k[0]
        if k0.stride(3) != 1 or k0.stride(2) != k0.shape[3] or any(t.stride() != k0.stride() for t in (*k, *v)):
            raise ValueError("the caches must share one layout with contiguous last two dimensions")
        if valid.dtype != torch.bool or valid.stride(1) != 1 or valid.shape != (k0.shape[0], k0.shape[2]):
            raise ValueError("valid must be a (rows, columns) bool tensor with contiguous rows")
        self.step, self.k, self.v, self.valid = step, k, v, valid  # kept alive with this object
        self.rows, self.columns = k0.shape[0], k0.shape[2]
        self._kptrs = [t.data_ptr() for t in k]
        self._vptrs = [t.data_ptr() for t in v]
        self._col_bytes = k0.stride(2) * k0.element_size()  # bytes from one column to the next
        self._strides = (k0.stride(0), k0.stride(1))
        self._vstride = valid.stride(0)
        self._layers = len(k)

    def decode(self, tokens: list[int], positions: list[int], rows: list[int], column: int, base: int = 0) -> Tensor:
        """Feeds ``tokens[i]`` at position ``positions[i]`` into cache row ``rows[i]`` (distinct rows) at ``column``,
        which is marked valid; each attends to its row's valid columns from ``base`` to ``column``. Returns the
        next-token logits (len(rows), V), in the order of ``rows``."""
        B = len(tokens)
        if not 0 <= base <= column < self.columns:
            raise ValueError(f"column {column} (from {base}) is outside the cache's {self.columns} columns")
        if B:
            self.step.check_ids(min(tokens), max(tokens), tokens)
        return self._run(B, 1, (_I * B)(*tokens), (_I * B)(*positions), rows, column - base, base, 1)

    def feed(self, tokens: Tensor, positions: Tensor, rows: list[int], column: int) -> Tensor:
        """Feeds prompts: ``tokens`` and ``positions`` (B, T) int64, row ``i`` into cache row ``rows[i]`` (distinct)
        at columns ``column .. column + T - 1``, each token attending to its row's columns from ``column`` on up
        to its own that ``valid`` marks (the caller marks them, leaving a left-padded row's padding unmarked).
        Returns the logits of each row's last token (B, V)."""
        B, T = tokens.shape
        if not 0 <= column <= column + T <= self.columns:
            raise ValueError(f"columns {column} .. {column + T - 1} are outside the cache's {self.columns} columns")
        tokens, positions = tokens.contiguous(), positions.contiguous()
        if B:
            self.step.check_ids(int(tokens.min()), int(tokens.max()), tokens)
        return self._run(B, T, tokens.data_ptr(), positions.data_ptr(), rows, 0, column, 0)

    def _run(self, B: int, T: int, tok: Any, pos: Any, rows: list[int], slot: int, base: int, mark: int) -> Tensor:
        """The C step over columns ``base ..`` of the rows ``rows`` (the view a call sees starts at ``base``)."""
        if B and (min(rows) < 0 or max(rows) >= self.rows):
            raise IndexError(f"rows must be in [0, {self.rows}), got {rows}")
        shift = base * self._col_bytes
        L = self._layers
        logits = torch.empty(B, self.step.vocab, dtype=torch.float32)
        rc = self.step.lib.lmf_step(
            ctypes.byref(self.step._model), B, T, tok, pos, slot, self.valid.data_ptr() + base, self._vstride,
            (_I * B)(*rows), mark, (_P * L)(*[p + shift for p in self._kptrs]),
            (_P * L)(*[p + shift for p in self._vptrs]), self._strides[0], self._strides[1], logits.data_ptr(),
            torch.get_num_threads())
        if rc != 0:
            raise MemoryError("the C decoding step could not allocate its scratch memory")
        return logits
