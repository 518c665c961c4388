"""``POSITIONS``: position encodings by name (``rope``, ``alibi``, ``sinusoidal``, ``learned``, ``none``).

Every encoding answers three questions, so the model treats them alike:

- ``embed(x, positions)``: what to add to the token embeddings (``sinusoidal``, ``learned``);
- ``rotary(positions)``: the ``(cos, sin)`` angles that attention applies to Q and K (``rope`` only; the
  embeddings are never rotated);
- ``bias(q_pos, k_pos)``: an additive attention bias per head (``alibi`` only).

``positions`` are (B, T) integer positions counted per row from its first real token. Builders take the
:class:`~lmforge.config.transformer.TransformerConfig`; the modules take flat arguments.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from lmforge.registry import Registry

__all__ = ["POSITIONS", "rope_inv_freq", "rope_settings", "RotaryEmbedding", "ALiBi", "SinusoidalPositions", "LearnedPositions", "NoPositions"]

POSITIONS: Registry[Callable[[Any], nn.Module]] = Registry("positional encoding")

Rotary = tuple[Tensor, Tensor]  # cos, sin: (B, 1, T, head_dim // 2) each


class NoPositions(nn.Module):
    """No position information at all (a causal mask still leaks some, arXiv:2203.16634)."""

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        return x

    def rotary(self, positions: Tensor) -> Optional[Rotary]:
        return None

    def bias(self, q_pos: Tensor, k_pos: Tensor) -> Optional[Tensor]:
        return None


def rope_inv_freq(head_dim: int, base: float, scaling: float = 1.0, scaling_type: str = "linear",
                  low_freq_factor: float = 1.0, high_freq_factor: float = 4.0, original_context: int = 8192,
                  dtype: torch.dtype = torch.float32) -> Tensor:
    """The rotary frequencies ``base ** (-2j / head_dim)`` (hd/2,), scaled for a longer context.

    ``linear`` divides every frequency by ``scaling`` (arXiv:2306.15595). ``llama3`` (the Llama 3.1 recipe,
    arXiv:2407.21783) divides only the frequencies whose wavelength exceeds ``original_context /
    low_freq_factor``, keeps those below ``original_context / high_freq_factor`` and blends linearly between.
    """
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).to(dtype) / head_dim))
    if scaling_type == "linear":
        return inv / scaling
    wavelen = 2 * math.pi / inv
    smooth = (original_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * inv / scaling + smooth * inv
    out = torch.where(wavelen > original_context / low_freq_factor, inv / scaling, inv)  # long waves: scaled
    medium = (wavelen <= original_context / low_freq_factor) & (wavelen >= original_context / high_freq_factor)
    return torch.where(medium, blended, out)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (arXiv:2104.09864): channel pair j of Q and K at position p is rotated by
    ``p / scaling * base ** (-2j / head_dim)``, so q . k depends only on the offset between positions.

    ``scaling`` > 1 is linear position interpolation (arXiv:2306.15595), or Llama 3.1's frequency-dependent
    scaling (see :func:`rope_inv_freq`). Frequencies follow the Llama layout, so exported weights need no
    permutation.

    Args:
        head_dim: per-head width (even).
        base: the frequency base (``rope_base``).
        scaling: the scaling factor (``rope_scaling``).
        **llama3: ``scaling_type`` and the llama3 settings of :func:`rope_inv_freq`.
    """

    def __init__(self, head_dim: int, base: float = 10000.0, scaling: float = 1.0, **llama3: Any) -> None:
        super().__init__()
        self.head_dim, self.base, self.scaling = head_dim, base, scaling
        self.register_buffer("inv_freq", rope_inv_freq(head_dim, base, scaling, **llama3), persistent=False)

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        return x

    def rotary(self, positions: Tensor) -> Optional[Rotary]:
        angles = positions[..., None].float() * self.inv_freq  # (B, T, hd/2)
        angles = angles.unsqueeze(1)  # (B, 1, T, hd/2)
        return angles.cos(), angles.sin()

    def bias(self, q_pos: Tensor, k_pos: Tensor) -> Optional[Tensor]:
        return None

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}, scaling={self.scaling}"


def alibi_slopes(num_heads: int) -> Tensor:
    """Per-head ALiBi slopes: a geometric sequence from 2^(-8/n); for a head count that is not a power of two,
    the slopes of the next power of two are interleaved in (arXiv:2108.12409, section 3)."""

    def pow2(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(num_heads).is_integer():
        return torch.tensor(pow2(num_heads))
    closest = 2 ** math.floor(math.log2(num_heads))
    return torch.tensor(pow2(closest) + pow2(2 * closest)[0::2][: num_heads - closest])


class ALiBi(nn.Module):
    """Attention with linear biases (arXiv:2108.12409): head h adds ``-slope_h * |i - j|`` to the score of
    query position i on key position j; nothing is added to the embeddings.

    Args:
        num_heads: number of query heads.
    """

    def __init__(self, num_heads: int) -> None:
        super().__init__()
        self.register_buffer("slopes", alibi_slopes(num_heads), persistent=False)

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        return x

    def rotary(self, positions: Tensor) -> Optional[Rotary]:
        return None

    def bias(self, q_pos: Tensor, k_pos: Tensor) -> Optional[Tensor]:
        dist = (q_pos[:, :, None] - k_pos[:, None, :]).abs().float()  # (B, Tq, Tk)
        return -self.slopes[None, :, None, None] * dist[:, None]  # (B, H, Tq, Tk)

    def extra_repr(self) -> str:
        return f"heads={self.slopes.numel()}"


class SinusoidalPositions(nn.Module):
    """Fixed sine/cosine position vectors added to the embeddings (arXiv:1706.03762, section 3.5): channel 2i
    is ``sin(p / 10000^(2i/d))`` and channel 2i+1 the matching cosine.

    Args:
        d_model: embedding width (even).
    """

    def __init__(self, d_model: int) -> None:
        super().__init__()
        div = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
        self.register_buffer("div", div, persistent=False)

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        angles = positions[..., None].float() * self.div  # (B, T, d/2)
        pe = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # (B, T, d)
        return x + pe.to(x.dtype)

    def rotary(self, positions: Tensor) -> Optional[Rotary]:
        return None

    def bias(self, q_pos: Tensor, k_pos: Tensor) -> Optional[Tensor]:
        return None


class LearnedPositions(nn.Module):
    """A learned vector per position, added to the embeddings (GPT-2 style).

    Args:
        max_len: number of positions (``block_size``).
        d_model: embedding width.
    """

    def __init__(self, max_len: int, d_model: int) -> None:
        super().__init__()
        self.weight = nn.Embedding(max_len, d_model)

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        return x + self.weight(positions)

    def rotary(self, positions: Tensor) -> Optional[Rotary]:
        return None

    def bias(self, q_pos: Tensor, k_pos: Tensor) -> Optional[Tensor]:
        return None


def rope_settings(cfg: Any) -> dict[str, Any]:
    """The :func:`rope_inv_freq` arguments of a TransformerConfig (all but ``head_dim``)."""
    p = cfg.positional
    return dict(base=p.rope_base, scaling=p.rope_scaling, scaling_type=p.rope_scaling_type,
                low_freq_factor=p.rope_low_freq_factor, high_freq_factor=p.rope_high_freq_factor,
                original_context=p.rope_original_context)


POSITIONS.add("none", lambda cfg: NoPositions())
POSITIONS.add("rope", lambda cfg: RotaryEmbedding(cfg.head_size, **rope_settings(cfg)))
POSITIONS.add("alibi", lambda cfg: ALiBi(cfg.attention.num_heads))
POSITIONS.add("sinusoidal", lambda cfg: SinusoidalPositions(cfg.d_model))
POSITIONS.add("learned", lambda cfg: LearnedPositions(cfg.block_size, cfg.d_model))
