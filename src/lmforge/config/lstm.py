"""Configuration of the LSTM language model (torch-free)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lmforge.config.base import StrictModel

__all__ = ["LSTMConfig"]


class LSTMConfig(StrictModel):
    """Embedding -> ``num_layers`` stacked unidirectional LSTM layers -> linear head.

    Dropout is applied to the embeddings, between layers and before the head (arXiv:1409.2329). A language
    model must not read the future, so there is no bidirectional option here.
    """

    family: Literal["lstm"] = "lstm"
    vocab_size: int = Field(5000, ge=2)
    embedding_dim: int = Field(256, ge=1)
    hidden_dim: int = Field(256, ge=1)
    num_layers: int = Field(2, ge=1)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    tie_embeddings: bool = Field(False, description="share the embedding and head weights (needs embedding_dim == hidden_dim)")
    init_range: float = Field(0.1, gt=0, description="embedding and head weights start uniform in [-init_range, init_range]")
    block_size: int = Field(256, ge=1, description="training window (truncated BPTT length); the model itself has no context limit")

    @model_validator(mode="after")
    def _check(self) -> "LSTMConfig":
        if self.tie_embeddings and self.embedding_dim != self.hidden_dim:
            raise ValueError(
                f"tie_embeddings needs embedding_dim == hidden_dim (got {self.embedding_dim} and {self.hidden_dim})"
            )
        return self
