"""``MLPS``: feed-forward blocks by name (``swiglu``, ``geglu``, ``mlp``) and ``ACTIVATIONS`` for ``mlp``.

Builders take the :class:`~lmforge.config.transformer.TransformerConfig`; the modules take flat arguments.
The output projection is named ``w_out`` and marked ``residual`` for the scaled initialisation.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.registry import Registry

__all__ = ["MLPS", "ACTIVATIONS", "GatedFFN", "MLP"]

ACTIVATIONS: Registry[Callable[[Tensor], Tensor]] = Registry("activation")
ACTIVATIONS.add("silu", F.silu)
ACTIVATIONS.add("gelu", F.gelu)
ACTIVATIONS.add("gelu_tanh", partial(F.gelu, approximate="tanh"))  # GPT-2's "gelu_new" (arXiv:1606.08415, eq. 2)
ACTIVATIONS.add("relu", F.relu)

MLPS: Registry[Callable[[Any], nn.Module]] = Registry("ffn variant")


class GatedFFN(nn.Module):
    """Gated linear unit FFN: ``w_out(act(x W_gate) * (x W_up))`` (arXiv:2002.05202).

    The gate and up projections share one matrix ``w_in`` (gate rows first) so one matmul computes both.

    Args:
        d_model: input and output width.
        hidden: width of the gated hidden layer.
        activation: name in ``ACTIVATIONS`` applied to the gate (silu for SwiGLU, gelu for GeGLU).
        bias: whether the projections have biases.
        dropout: dropout on the hidden activations.
    """

    def __init__(self, d_model: int, hidden: int, activation: str, bias: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.activation = activation
        self.act = ACTIVATIONS.get(activation)
        self.w_in = nn.Linear(d_model, 2 * hidden, bias=bias)
        self.w_out = nn.Linear(hidden, d_model, bias=bias)
        self.w_out.residual = True  # type: ignore[attr-defined]
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w_in(x).chunk(2, dim=-1)  # (B, T, H) each
        return self.w_out(self.drop(self.act(gate) * up))

    def extra_repr(self) -> str:
        return f"activation={self.activation}"


class MLP(nn.Module):
    """Two linear layers with an activation between them (arXiv:1706.03762).

    Args:
        d_model: input and output width.
        hidden: hidden width.
        activation: name in ``ACTIVATIONS``.
        bias: whether the projections have biases.
        dropout: dropout on the hidden activations.
    """

    def __init__(self, d_model: int, hidden: int, activation: str, bias: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.activation = activation
        self.act = ACTIVATIONS.get(activation)
        self.w_in = nn.Linear(d_model, hidden, bias=bias)
        self.w_out = nn.Linear(hidden, d_model, bias=bias)
        self.w_out.residual = True  # type: ignore[attr-defined]
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_out(self.drop(self.act(self.w_in(x))))

    def extra_repr(self) -> str:
        return f"activation={self.activation}"


def _gated(activation: str) -> Callable[[Any], nn.Module]:
    def build(cfg: Any) -> nn.Module:
        return GatedFFN(cfg.d_model, cfg.ffn_hidden, activation, cfg.ffn.bias, cfg.ffn.dropout)

    return build


MLPS.add("swiglu", _gated("silu"))
MLPS.add("geglu", _gated("gelu"))
MLPS.add("mlp", lambda cfg: MLP(cfg.d_model, cfg.ffn_hidden, cfg.ffn.activation, cfg.ffn.bias, cfg.ffn.dropout))
