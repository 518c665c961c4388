"""Configuration of the encoder-decoder (translation) models (torch-free)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lmforge.config.base import StrictModel

__all__ = ["Seq2SeqTransformerConfig", "Seq2SeqLSTMConfig"]


class Seq2SeqTransformerConfig(StrictModel):
    """Encoder-decoder Transformer (arXiv:1706.03762) with RoPE in self-attention by default."""

    family: Literal["seq2seq_transformer"] = "seq2seq_transformer"
    src_vocab_size: int = Field(10000, ge=2)
    tgt_vocab_size: int = Field(10000, ge=2)
    d_model: int = Field(512, ge=1)
    num_heads: int = Field(8, ge=1)
    num_encoder_layers: int = Field(6, ge=1)
    num_decoder_layers: int = Field(6, ge=1)
    d_ff: int = Field(2048, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    positional: Literal["rope", "sinusoidal"] = "rope"
    rope_base: float = Field(10000.0, gt=0)
    norm_type: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_placement: Literal["pre", "post"] = "pre"
    max_len: int = Field(256, ge=1, description="longest source or target sequence in tokens")
    share_embeddings: bool = Field(False, description="one embedding for source and target (needs a shared vocabulary)")
    tie_output: bool = Field(True, description="tie the target embedding and the output layer")
    pad_idx: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> "Seq2SeqTransformerConfig":
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})")
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ValueError("share_embeddings needs src_vocab_size == tgt_vocab_size (a joint tokenizer)")
        if self.positional == "rope" and (self.d_model // self.num_heads) % 2:
            raise ValueError(
                f"RoPE rotates channel pairs, so the head width d_model/num_heads ({self.d_model // self.num_heads}) must be even"
            )
        return self


class Seq2SeqLSTMConfig(StrictModel):
    """Encoder-decoder LSTM (arXiv:1409.3215) with optional attention: Luong ``dot``/``general``
    (arXiv:1508.04025) or Bahdanau ``additive`` (arXiv:1409.0473)."""

    family: Literal["seq2seq_lstm"] = "seq2seq_lstm"
    src_vocab_size: int = Field(10000, ge=2)
    tgt_vocab_size: int = Field(10000, ge=2)
    emb_dim: int = Field(256, ge=1)
    hidden_dim: int = Field(512, ge=1)
    num_layers: int = Field(2, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    attention: Literal["none", "dot", "general", "additive"] = "none"
    bidirectional_encoder: bool = False
    max_len: int = Field(256, ge=1)
    tie_output: bool = Field(False, description="tie the target embedding and the output layer (needs emb_dim == hidden_dim)")
    pad_idx: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _check(self) -> "Seq2SeqLSTMConfig":
        if self.bidirectional_encoder and self.hidden_dim % 2:
            raise ValueError(
                f"a bidirectional encoder splits hidden_dim ({self.hidden_dim}) between two directions, so it must be even"
            )
        if self.tie_output and self.emb_dim != self.hidden_dim:
            raise ValueError(f"tie_output needs emb_dim == hidden_dim (got {self.emb_dim} and {self.hidden_dim})")
        return self
