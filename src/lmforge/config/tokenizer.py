"""Tokenizer settings (torch-free)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from lmforge.config.base import StrictModel

__all__ = ["TokenizerConfig", "TokenizerKind"]

TokenizerKind = Literal["char", "bpe", "word", "hf"]  # hf: a checkpoint's own tokenizer (lmforge import)


class TokenizerConfig(StrictModel):
    """Which tokenizer to train on the training split (or which file to load)."""

    kind: TokenizerKind = "char"
    vocab_size: int = Field(5000, ge=16, description="bpe: merges up to this size; word: most frequent words kept")
    min_frequency: int = Field(1, ge=1, description="word/bpe: drop words or merges seen fewer times")
    lowercase: bool = Field(False, description="word only: lowercase before splitting")
    path: Optional[str] = Field(None, description="use this tokenizer.json instead of training one")
