"""Attention over encoder outputs for the LSTM decoder: Luong ``dot``/``general`` (arXiv:1508.04025) and
Bahdanau ``additive`` (arXiv:1409.0473; Luong's "concat" score).

The query is the decoder's top-layer output at each step, so attention runs over all target positions at once
during training. Letters: B batch, T target length, S source length, H hidden width, A additive attention width.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

__all__ = ["RNNAttention", "RNN_ATTENTION_KINDS"]

RNN_ATTENTION_KINDS = ("dot", "general", "additive")


class RNNAttention(nn.Module):
    """Scores each source position for each decoder output, and returns the weighted sum of encoder outputs.

    Args:
        kind: ``"dot"`` (score = q·h_s), ``"general"`` (q·W h_s) or ``"additive"`` (v·tanh(W_q q + W_k h_s)).
        hidden_dim: width H of both queries and encoder outputs.
    """

    def __init__(self, kind: str, hidden_dim: int) -> None:
        super().__init__()
        if kind not in RNN_ATTENTION_KINDS:
            raise ValueError(f"unknown attention {kind!r}; choose one of {RNN_ATTENTION_KINDS}")
        self.kind = kind
        if kind == "general":
            self.key_proj = nn.Linear(hidden_dim, hidden_dim, bias=False)
        elif kind == "additive":
            self.key_proj = nn.Linear(hidden_dim, hidden_dim, bias=False)
            self.query_proj = nn.Linear(hidden_dim, hidden_dim, bias=True)
            self.v = nn.Linear(hidden_dim, 1, bias=False)

    def keys(self, enc_out: Tensor) -> Tensor:
        """The source-side part of the score, computed once per source: (B, S, H)."""
        return enc_out if self.kind == "dot" else self.key_proj(enc_out)

    def forward(self, query: Tensor, keys: Tensor, values: Tensor, mask: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """``query`` (B, T, H), ``keys`` from :meth:`keys`, ``values`` (B, S, H), ``mask`` (B, S) ``True`` for real
        tokens -> context (B, T, H) and weights (B, T, S)."""
        if self.kind == "additive":
            hidden = torch.tanh(self.query_proj(query)[:, :, None, :] + keys[:, None, :, :])  # (B, T, S, H)
            scores = self.v(hidden).squeeze(-1)  # (B, T, S)
        else:
            scores = torch.bmm(query, keys.transpose(1, 2))  # (B, T, S)
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        return torch.bmm(weights, values), weights  # (B, T, H), (B, T, S)
