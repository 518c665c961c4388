"""Data settings (torch-free)."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from lmforge.config.base import StrictModel

__all__ = ["DataConfig"]


class DataConfig(StrictModel):
    """Where the text comes from and how it is split and windowed."""

    path: Optional[str] = Field(None, description="a text file, a folder of .txt/.md files, or a .jsonl with a 'text' field; default: the bundled Tiny Shakespeare")
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="the last fraction of the corpus is the validation split")
    block_size: Optional[int] = Field(None, ge=1, description="training window in tokens; default: the model's block_size")
    cache_dir: Optional[str] = Field(None, description="where token caches go; default: a .lmforge_cache folder in the run folder")
    # translation
    src: Optional[str] = Field(None, description="translate: source-side file (one sentence a line), or a TSV of pairs")
    tgt: Optional[str] = Field(None, description="translate: target-side file, aligned line by line with src")
    val_src: Optional[str] = None
    val_tgt: Optional[str] = None
    max_len: int = Field(128, ge=1, description="translate: pairs longer than this (in tokens) are dropped from training")
    joint_vocab: bool = Field(True, description="translate: one BPE tokenizer for both languages")
    max_tokens: int = Field(2048, ge=1, description="translate: token budget of a batch (rows x longest side, padding included); pairs of similar length are batched together (2,048: BENCHMARKS.md, Translation)")
