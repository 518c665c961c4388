"""Decoding state of the Transformers: one key/value cache (self-attention keys/values, plus the
cross-attention keys/values of an encoder-decoder model), and a re-computing state for bidirectional models
(which cannot reuse keys and values, since every token sees every other).

Shapes: L = layers, B = batch, Hkv = key/value heads, S = cache slots, hd = head width, Ssrc = source length.
"""

from __future__ import annotations

from typing import Optional

import copy

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["KVCache", "FullContextState"]


class KVCache:
    """Keys and values of every layer for the tokens fed so far, in preallocated (L, B, Hkv, S, hd) buffers.

    Each slot also records whether it holds a real token (left padding does not) and the token's position,
    counted per row from its first real token, so a left-padded row behaves exactly like the same row alone.
    An encoder-decoder model also keeps each layer's cross-attention keys/values here (``cross``, with the
    source mask ``cross_valid``); :meth:`select` picks rows of everything, as beam search needs.

    Args:
        num_layers: number of attention layers.
        batch_size: rows decoded together.
        num_kv_heads: key/value heads per layer.
        head_dim: per-head width.
        max_len: the most slots per row (the model's context length), or None for no limit.
        device: where the buffers live.
        dtype: dtype of keys and values.
        capacity: slots allocated up front (default ``max_len``); the buffers double when more are needed.
    """

    def __init__(self, num_layers: int, batch_size: int, num_kv_heads: int, head_dim: int, max_len: Optional[int],
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 capacity: Optional[int] = None) -> None:
        slots = capacity or max_len
        if slots is None:
            raise ValueError("KVCache needs max_len or capacity")
        shape = (num_layers, batch_size, num_kv_heads, slots, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.positions = torch.zeros(batch_size, slots, dtype=torch.long, device=device)  # (B, S)
        self.valid = torch.zeros(batch_size, slots, dtype=torch.bool, device=device)  # (B, S)
        self.seen = torch.zeros(batch_size, dtype=torch.long, device=device)  # real tokens per row
        self.max_len = max_len
        self.length = 0  # slots used (the same for every row)
        self.padded = False  # whether any slot so far is padding
        self.cross: list[tuple[Tensor, Tensor]] = []  # per layer (B, Hkv, Ssrc, hd) keys and values
        self.cross_valid: Optional[Tensor] = None  # (B, Ssrc) real source tokens

    @property
    def batch_size(self) -> int:
        return self.k.size(1)

    def begin(self, t: int, attention_mask: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Reserves ``t`` slots for the next tokens and records their positions and validity.

        Returns:
            ``(q_pos (B, t), k_pos (B, length + t), k_valid (B, length + t), q_valid (B, t))``.
        """
        if self.max_len is not None and self.length + t > self.max_len:
            raise ValueError(f"KV cache full: {self.length} + {t} tokens exceed the context of {self.max_len}; "
                             "crop the prompt or start a new state")
        self._reserve(self.length + t)
        s = self.length
        if attention_mask is None:
            real = torch.ones(self.batch_size, t, dtype=torch.bool, device=self.k.device)
        else:
            real = attention_mask.to(device=self.k.device).bool()
            self.padded = self.padded or not bool(real.all())
        q_pos = (self.seen[:, None] + real.long().cumsum(1) - 1).clamp(min=0)  # (B, t)
        self.positions[:, s:s + t] = q_pos
        self.valid[:, s:s + t] = real
        self.seen += real.sum(1)
        return q_pos, self.positions[:, :s + t], self.valid[:, :s + t], real

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Writes this step's keys and values (B, Hkv, t, hd) of ``layer``; returns all of them so far."""
        s, t = self.length, k.size(2)
        self.k[layer, :, :, s:s + t] = k
        self.v[layer, :, :, s:s + t] = v
        return self.k[layer, :, :, :s + t], self.v[layer, :, :, :s + t]

    def commit(self, t: int) -> None:
        """Marks the ``t`` reserved slots as used (after every layer has written them)."""
        self.length += t

    def _reserve(self, need: int) -> None:
        """Doubles the buffers (up to ``max_len``) until they hold ``need`` slots."""
        have = self.k.size(3)
        if need <= have:
            return
        new = max(need, 2 * have) if self.max_len is None else min(max(need, 2 * have), self.max_len)
        grow = new - have
        self.k = F.pad(self.k, (0, 0, 0, grow))
        self.v = F.pad(self.v, (0, 0, 0, grow))
        self.positions = F.pad(self.positions, (0, grow))
        self.valid = F.pad(self.valid, (0, grow))

    def select(self, index: Tensor) -> "KVCache":
        """A cache of rows ``index`` (B',) of this one (to expand into beams, reorder them or drop rows)."""
        out = copy.copy(self)
        out.k, out.v = self.k.index_select(1, index), self.v.index_select(1, index)
        out.positions, out.valid = self.positions.index_select(0, index), self.valid.index_select(0, index)
        out.seen = self.seen.index_select(0, index)
        out.cross = [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.cross]
        out.cross_valid = None if self.cross_valid is None else self.cross_valid.index_select(0, index)
        return out


class FullContextState:
    """State of a bidirectional model: the token ids and mask fed so far; each step re-reads all of them."""

    def __init__(self, batch_size: int, device: torch.device | str = "cpu") -> None:
        self.ids = torch.zeros(batch_size, 0, dtype=torch.long, device=device)  # (B, T)
        self.mask = torch.zeros(batch_size, 0, dtype=torch.long, device=device)  # (B, T)

    @property
    def length(self) -> int:
        return self.ids.size(1)
