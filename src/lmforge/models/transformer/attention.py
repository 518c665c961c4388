"""``ATTENTION``: attention variants by name (``mha``, ``gqa``, ``mqa``, ``complex``), used for self-attention
by every Transformer and for cross-attention by the encoder-decoder one (:meth:`SelfAttention.project_kv` +
:meth:`SelfAttention.cross`, with the same projection weights and kernel).

Letters: B = batch, T = new tokens (queries), S = keys (cached + new, or source), H = query heads, Hkv = key/value heads,
hd = head width, D = d_model.

Masks arrive ready-made (:class:`AttnMask`), built once per forward by the model: causal, bidirectional or
sliding-window, plus left padding and ALiBi biases. RoPE is applied here, to Q and K only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from lmforge.registry import Registry

__all__ = ["ATTENTION", "AttnMask", "SelfAttention", "ComplexAttention", "apply_rope", "padding_mask", "causal_after"]

ATTENTION: Registry[Callable[[Any], nn.Module]] = Registry("attention variant")

# use_flash_attn: the fused kernels first, the math kernel as a fallback where the device or inputs lack them.
FUSED_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH]
MATH_BACKENDS = [SDPBackend.MATH]


@dataclass
class AttnMask:
    """What attention may see: ``mask`` is None, a bool tensor (True = may attend) or an additive float tensor,
    broadcastable to (B, H, T, S); ``is_causal`` asks for the plain lower-triangular mask (only when T == S)."""

    mask: Optional[Tensor] = None
    is_causal: bool = False


def padding_mask(ids: Tensor, pad_idx: int) -> Tensor:
    """``True`` where ``ids`` (B, S) is a real token. A row of only padding keeps its first position, so that
    attention over it stays finite (its output is never used for anything but that row)."""
    mask = ids.ne(pad_idx)
    empty = ~mask.any(dim=1)
    if bool(empty.any()):
        mask = mask.clone()
        mask[empty, 0] = True
    return mask


def causal_after(start: int, t: int, q_pos: Tensor, k_pos: Tensor) -> AttnMask:
    """The causal mask of ``t`` new unpadded queries after ``start`` cached ones: none for one token (it sees
    everything), SDPA's own for a fresh prompt, else explicit from positions q_pos (B, T), k_pos (B, S)."""
    if t == 1:
        return AttnMask()
    if start == 0:
        return AttnMask(is_causal=True)
    return AttnMask((k_pos[:, None, :] <= q_pos[:, :, None])[:, None])  # (B, 1, T, S)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotates channel pairs (j, j + hd/2) of ``x`` (B, H, T, hd) by the angles behind ``cos``/``sin``
    (B, 1, T, hd/2) (arXiv:2104.09864, in the half-split layout that Llama checkpoints use)."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, H, T, hd/2) each
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)


class SelfAttention(nn.Module):
    """Multi-head self-attention with ``num_kv_heads`` shared key/value heads: MHA when equal to ``num_heads``,
    GQA in between (arXiv:2305.13245), MQA at 1 (arXiv:1911.02150). Scores go through PyTorch's
    scaled-dot-product attention; ``use_flash_attn`` lets it pick the fused flash / memory-efficient kernels,
    otherwise the exact math kernel runs.

    Args:
        d_model: model width D.
        num_heads: query heads H.
        num_kv_heads: key/value heads Hkv (divides H).
        head_dim: per-head width hd.
        bias: biases on the projections.
        dropout: dropout on the attention weights (training only).
        use_flash_attn: allow the fused SDPA kernels.
        qkv_bias: biases on the Q/K/V projection only (default ``bias``); Qwen2 has them, its output has none.
    """

    def __init__(self, d_model: int, num_heads: int, num_kv_heads: int, head_dim: int, bias: bool = False,
                 dropout: float = 0.0, use_flash_attn: bool = False, qkv_bias: Optional[bool] = None) -> None:
        super().__init__()
        assert num_heads % num_kv_heads == 0, "num_heads must be a multiple of num_kv_heads"
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.dropout = dropout
        self.use_flash_attn = use_flash_attn
        self.backends = FUSED_BACKENDS if use_flash_attn else MATH_BACKENDS
        # Q, K and V come from one matmul; rows are [q (H*hd) | k (Hkv*hd) | v (Hkv*hd)].
        self.qkv = nn.Linear(d_model, (num_heads + 2 * num_kv_heads) * head_dim, bias=bias if qkv_bias is None else qkv_bias)
        self.o_proj = nn.Linear(num_heads * head_dim, d_model, bias=bias)
        self.o_proj.residual = True  # type: ignore[attr-defined]

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, T, _ = x.shape
        hd = self.head_dim
        q, k, v = self.qkv(x).split([self.num_heads * hd, self.num_kv_heads * hd, self.num_kv_heads * hd], dim=-1)
        q = q.view(B, T, self.num_heads, hd).transpose(1, 2)  # (B, H, T, hd)
        k = k.view(B, T, self.num_kv_heads, hd).transpose(1, 2)  # (B, Hkv, T, hd)
        v = v.view(B, T, self.num_kv_heads, hd).transpose(1, 2)  # (B, Hkv, T, hd)
        return q, k, v

    def forward(self, x: Tensor, rope: Optional[tuple[Tensor, Tensor]], mask: AttnMask,
                cache: Any = None, layer: int = 0) -> Tensor:
        """Self-attention: ``x`` (B, T, D) -> (B, T, D); with a ``cache``, attends over everything cached plus ``x``."""
        q, k, v = self._split(x)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, Hkv, S, hd)
        return self._attend(q, k, v, mask)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: AttnMask) -> Tensor:
        """q (B, H, T, hd) over k, v (B, Hkv, S, hd) -> the projected output (B, T, D)."""
        B, _, T, _ = q.shape
        with sdpa_kernel(self.backends):
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask.mask, is_causal=mask.is_causal,
                dropout_p=self.dropout if self.training else 0.0, enable_gqa=self.num_kv_heads != self.num_heads,
            )  # (B, H, T, hd)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))

    def project_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-attention keys and values (B, Hkv, S, hd) of ``memory`` (B, S, D), computed once per source
        with the K and V rows of the same projection."""
        B, S, _ = memory.shape
        nq, nk = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        bias = None if self.qkv.bias is None else self.qkv.bias[nq:]
        k, v = F.linear(memory, self.qkv.weight[nq:], bias).split([nk, nk], dim=-1)
        return (k.view(B, S, self.num_kv_heads, self.head_dim).transpose(1, 2),
                v.view(B, S, self.num_kv_heads, self.head_dim).transpose(1, 2))

    def cross(self, x: Tensor, k: Tensor, v: Tensor, mask: AttnMask) -> Tensor:
        """Cross-attention (arXiv:1706.03762) from ``x`` (B, T, D) to :meth:`project_kv`'s keys/values -> (B, T, D)."""
        B, T, _ = x.shape
        nq = self.num_heads * self.head_dim
        bias = None if self.qkv.bias is None else self.qkv.bias[:nq]
        q = F.linear(x, self.qkv.weight[:nq], bias).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        return self._attend(q, k, v, mask)

    def extra_repr(self) -> str:
        return (f"heads={self.num_heads}, kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, "
                f"flash={self.use_flash_attn}")


class ComplexAttention(SelfAttention):
    """Complex-valued attention: channels (2j, 2j+1) of each Q and K head form the complex number
    ``q_j = x_2j + i x_2j+1``; the score is ``Re(q . conj(k)) / sqrt(hd)`` and RoPE is the phase ``e^{i theta}``
    (the complex form of arXiv:2104.09864). Values stay real. Without positions this equals real attention;
    with RoPE it pairs adjacent channels instead of the half-split layout of :class:`SelfAttention`.
    The scores are computed in complex arithmetic, or by the fused SDPA kernels on the rotated real channels
    when ``use_flash_attn`` is set (the same values).
    """

    def __init__(self, d_model: int, num_heads: int, head_dim: int, bias: bool = False, dropout: float = 0.0,
                 use_flash_attn: bool = False, qkv_bias: Optional[bool] = None) -> None:
        super().__init__(d_model, num_heads, num_heads, head_dim, bias, dropout, use_flash_attn, qkv_bias)

    def _to_complex(self, x: Tensor) -> Tensor:
        return torch.view_as_complex(x.float().reshape(*x.shape[:-1], self.head_dim // 2, 2).contiguous())  # (..., hd/2)

    def forward(self, x: Tensor, rope: Optional[tuple[Tensor, Tensor]], mask: AttnMask,
                cache: Any = None, layer: int = 0) -> Tensor:
        B, T, _ = x.shape
        q, k, v = self._split(x)
        qc, kc = self._to_complex(q), self._to_complex(k)  # (B, H, T, hd/2) complex
        if rope is not None:
            phase = torch.complex(*rope)  # e^{i theta} = cos + i sin, (B, 1, T, hd/2)
            qc, kc = qc * phase, kc * phase
        if cache is not None:
            k_real = torch.view_as_real(kc).flatten(-2).to(v.dtype)  # (B, H, T, hd)
            k_all, v = cache.update(layer, k_real, v)
            kc = self._to_complex(k_all)  # (B, H, S, hd/2)
        if self.use_flash_attn:
            # Re(q . conj(k)) is the real dot product of the channel pairs, so the fused kernels apply unchanged.
            q_real = torch.view_as_real(qc).flatten(-2).to(v.dtype)  # (B, H, T, hd)
            k_real = torch.view_as_real(kc).flatten(-2).to(v.dtype)  # (B, H, S, hd)
            with sdpa_kernel(self.backends):
                y = F.scaled_dot_product_attention(q_real, k_real, v, attn_mask=mask.mask, is_causal=mask.is_causal,
                                                   dropout_p=self.dropout if self.training else 0.0)
        else:
            scores = (qc @ kc.conj().transpose(-2, -1)).real / math.sqrt(self.head_dim)  # (B, H, T, S)
            if mask.is_causal:
                causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
                scores = scores.masked_fill(~causal, float("-inf"))
            elif mask.mask is not None:
                m = mask.mask
                scores = scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else scores + m.float()
            probs = F.dropout(scores.softmax(dim=-1), self.dropout, self.training).to(v.dtype)
            y = probs @ v  # (B, H, T, hd)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))


def _real(cfg: Any) -> nn.Module:
    a = cfg.attention
    return SelfAttention(cfg.d_model, a.num_heads, a.kv_heads, cfg.head_size, a.bias, a.dropout, a.use_flash_attn,
                         a.qkv_bias)


for _name in ("mha", "gqa", "mqa"):
    ATTENTION.add(_name, _real)
ATTENTION.add("complex", lambda cfg: ComplexAttention(cfg.d_model, cfg.attention.num_heads, cfg.head_size,
                                                       cfg.attention.bias, cfg.attention.dropout,
                                                       cfg.attention.use_flash_attn, cfg.attention.qkv_bias))
