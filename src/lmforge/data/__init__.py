"""Corpus reading, the deterministic train/validation split, the token cache and LM batches.

Example:
    >>> from lmforge.data import read_documents, split_documents
    >>> train, val = split_documents(read_documents(), val_fraction=0.1)
    >>> 0.09 < sum(map(len, val)) / (sum(map(len, train)) + sum(map(len, val))) < 0.11
    True
"""

from lmforge.data.corpus import TEXT_SUFFIXES, default_corpus_path, read_documents, read_text_file, split_documents
from lmforge.data.encode import LMData, encode_documents, prepare_lm_data, source_hash
from lmforge.data.lm_dataset import IGNORE_INDEX, iter_eval_batches, sample_batch

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
    "sample_batch",
    "iter_eval_batches",
    "IGNORE_INDEX",
]
