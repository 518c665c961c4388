"""Attention pieces of the encoder-decoder Transformer: multi-head attention, RoPE and sinusoidal positions.

Letters in shape comments: B batch, H heads, T query length, S key length, D model width, E head width (D // H).
Boolean masks follow ``torch.nn.functional.scaled_dot_product_attention``: ``True`` means "may attend".
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["RotaryEmbedding", "MultiHeadAttention", "sinusoidal_table", "padding_mask", "causal_mask"]


def padding_mask(ids: Tensor, pad_idx: int) -> Tensor:
    """``True`` where ``ids`` (B, S) is a real token. A row of only padding keeps its first position, so that
    attention over it stays finite (its output is never used for anything but that row)."""
    mask = ids.ne(pad_idx)
    empty = ~mask.any(dim=1)
    if bool(empty.any()):
        mask = mask.clone()
        mask[empty, 0] = True
    return mask


def causal_mask(t: int, offset: int, device: torch.device) -> Tensor:
    """(T, offset + T) boolean mask: query ``i`` (at absolute position ``offset + i``) sees keys ``<= offset + i``."""
    q = torch.arange(offset, offset + t, device=device)[:, None]
    k = torch.arange(offset + t, device=device)[None, :]
    return k <= q


def sinusoidal_table(length: int, dim: int) -> Tensor:
    """The fixed sine/cosine position table of arXiv:1706.03762, shape (length, dim)."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return table


class RotaryEmbedding(nn.Module):
    """Rotary position embedding, RoPE (arXiv:2104.09864), applied to queries and keys *inside* attention.

    Channel ``j`` of the first half and channel ``j`` of the second half of each head form a pair that is rotated
    by ``position * base**(-2j/E)``; the dot product of a rotated query and key then depends only on their offset.
    """

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head width, got {head_dim}")
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """Rotates ``x`` (B, H, T, E) whose first position is ``offset``."""
        t = x.size(-2)
        pos = torch.arange(offset, offset + t, device=x.device, dtype=torch.float32)
        angles = torch.outer(pos, self.inv_freq)  # (T, E/2)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)  # (B, H, T, E/2) each
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention (arXiv:1706.03762) for self- and cross-attention.

    Args:
        d_model: model width D.
        num_heads: heads H (D must be divisible by H).
        dropout: dropout on the attention weights (training only).
        rope: a :class:`RotaryEmbedding` to rotate Q and K with (self-attention), or ``None`` (cross-attention).
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0, rope: Optional[RotaryEmbedding] = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.dropout = dropout
        self.rope = rope
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, E)

    def project_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values (B, H, S, E) of ``memory`` (B, S, D), computed once per source for cross-attention."""
        return self._heads(self.k_proj(memory)), self._heads(self.v_proj(memory))

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], is_causal: bool = False) -> Tensor:
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=is_causal)  # (B, H, T, E)
        b, _, t, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, t, -1))  # (B, T, D)

    def self_attention(
        self,
        x: Tensor,
        key_mask: Optional[Tensor] = None,
        causal: bool = False,
        cache: Optional[tuple[Tensor, Tensor]] = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Self-attention over ``x`` (B, T, D).

        Args:
            x: the input, B sequences of T new positions.
            key_mask: (B, T) ``True`` for real tokens (encoder padding); ``None`` for no padding.
            causal: each position sees only itself and earlier ones (the decoder).
            cache: keys and values (B, H, P, E) of the P positions seen before; the new positions come after them.

        Returns:
            The output (B, T, D) and the keys and values of all P + T positions (the updated cache).
        """
        t = x.size(1)
        offset = 0 if cache is None else cache[0].size(2)
        q, k, v = self._heads(self.q_proj(x)), self._heads(self.k_proj(x)), self._heads(self.v_proj(x))
        if self.rope is not None:
            q, k = self.rope(q, offset), self.rope(k, offset)
        if cache is not None:
            k = torch.cat((cache[0], k), dim=2)  # (B, H, P+T, E)
            v = torch.cat((cache[1], v), dim=2)
        mask: Optional[Tensor] = None
        if key_mask is not None:
            mask = key_mask[:, None, None, :]  # (B, 1, 1, S)
        if causal and t > 1:
            cm = causal_mask(t, offset, x.device)  # (T, P+T)
            mask = cm if mask is None else mask & cm
        return self._attend(q, k, v, mask), (k, v)

    def cross_attention(self, x: Tensor, kv: tuple[Tensor, Tensor], key_mask: Optional[Tensor]) -> Tensor:
        """Attention from ``x`` (B, T, D) to precomputed source keys/values; ``key_mask`` (B, S) marks real tokens."""
        q = self._heads(self.q_proj(x))
        mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, S)
        return self._attend(q, kv[0], kv[1], mask)
