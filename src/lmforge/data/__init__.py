"""Corpus reading (in memory, or streamed from any size with :func:`prepare`), the deterministic train/validation
split, the token shard store and LM batches.

Example:
    >>> from lmforge.data import read_documents, split_documents
    >>> train, val = split_documents(read_documents(), val_fraction=0.1)
    >>> 0.09 < sum(map(len, val)) / (sum(map(len, train)) + sum(map(len, val))) < 0.11
    True
"""

from lmforge.data import lm_dataset
from lmforge.data.corpus import default_corpus_path, read_documents, read_text_file, split_documents, TEXT_SUFFIXES
from lmforge.data.encode import encode_documents, LMData, prepare_lm_data, source_hash
from lmforge.data.prepare import is_prepared, load_prepared, prepare, PreparedData
from lmforge.data.shards import ShardedTokens
from lmforge.data.sources import SourceReader

# The batch helpers need torch; they are imported on first use so that reading and tokenizing a corpus
# (``lmforge tokenizer train``) does not pay for importing torch.
_LAZY = {"sample_batch", "iter_eval_batches", "eval_window_starts", "gather_windows", "WindowSampler", "IGNORE_INDEX"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(lm_dataset, name)
    raise AttributeError(f"module 'lmforge.data' has no attribute {name!r}")


__all__ = [
    "default_corpus_path",
    "read_documents",
    "read_text_file",
    "split_documents",
    "TEXT_SUFFIXES",
    "LMData",
    "prepare_lm_data",
    "encode_documents",
    "source_hash",
    "prepare",
    "load_prepared",
    "is_prepared",
    "PreparedData",
    "ShardedTokens",
    "SourceReader",
    "eval_window_starts",
    "gather_windows",
    "WindowSampler",
    "sample_batch",
    "iter_eval_batches",
    "IGNORE_INDEX",
]
