"""The model config union, discriminated on ``family``."""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from lmforge.config.lstm import LSTMConfig
from lmforge.config.seq2seq import Seq2SeqLSTMConfig, Seq2SeqTransformerConfig
from lmforge.config.transformer import TransformerConfig

__all__ = ["ModelConfig", "LM_FAMILIES", "SEQ2SEQ_FAMILIES"]

ModelConfig = Annotated[
    Union[TransformerConfig, LSTMConfig, Seq2SeqTransformerConfig, Seq2SeqLSTMConfig],
    Field(discriminator="family"),
]

LM_FAMILIES = ("transformer", "lstm")
SEQ2SEQ_FAMILIES = ("seq2seq_transformer", "seq2seq_lstm")
