"""Decoding state of the Transformer: a preallocated key/value cache, and a re-computing state for
bidirectional models (which cannot reuse keys and values, since every token sees every other).

Shapes: L = layers, B = batch, Hkv = key/value heads, S = cache slots (``block_size``), hd = head width.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["KVCache", "FullContextState"]


class KVCache:
    """Keys and values of every layer for the tokens fed so far, in preallocated (L, B, Hkv, S, hd) buffers.

    Each slot also records whether it holds a real token (left padding does not) and the token's position,
    counted per row from its first real token, so a left-padded row behaves exactly like the same row alone.

    Args:
        num_layers: number of attention layers.
        batch_size: rows decoded together.
        num_kv_heads: key/value heads per layer.
        head_dim: per-head width.
        max_len: slots per row (the model's context length).
        device: where the buffers live.
        dtype: dtype of keys and values.
    """

    def __init__(self, num_layers: int, batch_size: int, num_kv_heads: int, head_dim: int, max_len: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        shape = (num_layers, batch_size, num_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.positions = torch.zeros(batch_size, max_len, dtype=torch.long, device=device)  # (B, S)
        self.valid = torch.zeros(batch_size, max_len, dtype=torch.bool, device=device)  # (B, S)
        self.seen = torch.zeros(batch_size, dtype=torch.long, device=device)  # real tokens per row
        self.max_len = max_len
        self.length = 0  # slots used (the same for every row)
        self.padded = False  # whether any slot so far is padding

    @property
    def batch_size(self) -> int:
        return self.k.size(1)

    def begin(self, t: int, attention_mask: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Reserves ``t`` slots for the next tokens and records their positions and validity.

        Returns:
            ``(q_pos (B, t), k_pos (B, length + t), k_valid (B, length + t), q_valid (B, t))``.
        """
        if self.length + t > self.max_len:
            raise ValueError(f"KV cache full: {self.length} + {t} tokens exceed the context of {self.max_len}; "
                             "crop the prompt or start a new state")
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


class FullContextState:
    """State of a bidirectional model: the token ids and mask fed so far; each step re-reads all of them."""

    def __init__(self, batch_size: int, device: torch.device | str = "cpu") -> None:
        self.ids = torch.zeros(batch_size, 0, dtype=torch.long, device=device)  # (B, T)
        self.mask = torch.zeros(batch_size, 0, dtype=torch.long, device=device)  # (B, T)

    @property
    def length(self) -> int:
        return self.ids.size(1)
