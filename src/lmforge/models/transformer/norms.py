"""``NORMS``: normalisation layers by name (``rmsnorm``, ``layernorm``).

Each entry is a class taking ``(dim, eps)``; :class:`~lmforge.config.transformer.NormConfig` names one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from typing import Optional

from lmforge.registry import Registry

__all__ = ["NORMS", "RMSNorm", "LayerNorm"]

NORMS: Registry[type[nn.Module]] = Registry("norm")


@NORMS.register("rmsnorm")
class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain and no bias or centring (arXiv:1910.07467).

    Args:
        dim: width of the last axis.
        eps: added to the mean square before the square root (None: the dtype's machine epsilon).
    """

    def __init__(self, dim: int, eps: Optional[float] = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}"


@NORMS.register("layernorm")
class LayerNorm(nn.Module):
    """Layer norm with a learned gain and bias (arXiv:1607.06450).

    Args:
        dim: width of the last axis.
        eps: added to the variance before the square root.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}"
