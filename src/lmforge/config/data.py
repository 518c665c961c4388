"""Data settings (torch-free)."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from lmforge.config.base import StrictModel

__all__ = ["DataConfig"]


class DataConfig(StrictModel):
    """Where the text comes from and how it is split and windowed."""

    path: Optional[str] = Field(None, description="a text file, a folder (.txt/.md/.jsonl/.parquet/.pdf/.docx), .jsonl(.gz), .parquet, a Hugging Face save_to_disk folder, or a folder from `lmforge prepare`; default: the bundled Tiny Shakespeare")
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="share of the characters for validation, whole documents (line blocks of a long one) spread evenly over the corpus")
    block_size: Optional[int] = Field(None, ge=1, description="training window in tokens; default: the model's block_size")
    cache_dir: Optional[str] = Field(None, description="where prepared data goes; default: the lmforge cache ($LMFORGE_CACHE_DIR or ~/.cache/lmforge/prepared), shared with `lmforge prepare`")
    text_field: str = Field("text", description="the text field of .jsonl/.parquet/datasets records")
    tokenizer_sample_mb: float = Field(64.0, gt=0.0, description="the tokenizer is trained on at most this many MiB, spread over the training split")
    skip_bad: bool = Field(False, description="count and skip bad records and unreadable files instead of stopping")
    # translation
    src: Optional[str] = Field(None, description="translate: source-side file (one sentence a line), or a TSV of pairs")
    tgt: Optional[str] = Field(None, description="translate: target-side file, aligned line by line with src")
    val_src: Optional[str] = None
    val_tgt: Optional[str] = None
    max_len: int = Field(128, ge=1, description="translate: pairs longer than this (in tokens) are dropped from training")
    joint_vocab: bool = Field(True, description="translate: one BPE tokenizer for both languages")
    max_tokens: int = Field(4096, ge=1, description="translate: token budget of a batch (rows x longest side, padding included); pairs of similar length are batched together")
