"""In-memory documents -> the shard store of :mod:`lmforge.data.shards` (the one token store).

:func:`prepare_lm_data` is the small-corpus door to the same store that :func:`~lmforge.data.prepare.prepare`
streams large corpora into: documents already split into training and validation text are encoded into
shards beside a ``manifest.json`` keyed by the tokenizer's fingerprint and a hash of the text. While neither
changes the folder is memory-mapped as it is; otherwise it is rebuilt (older single-file caches in the folder
are removed). Shards are published before the manifest, so an interrupted build is never taken for a
finished one.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from lmforge.data.prepare import PreparedData, _read_manifest, load_prepared, publish
from lmforge.data.sources import BLOCK_CHARS, cut_blocks
from lmforge.errors import DataError

__all__ = ["LMData", "prepare_lm_data", "encode_documents", "source_hash"]

log = logging.getLogger(__name__)

#: The prepared data of both splits (one class for every way of preparing).
LMData = PreparedData


def source_hash(docs_train: Sequence[str], docs_val: Sequence[str]) -> str:
    """SHA-256 over the documents of both splits (length-prefixed, so boundaries count)."""
    h = hashlib.sha256()
    for name, docs in (("train", docs_train), ("val", docs_val)):
        h.update(f"{name}:{len(docs)}\n".encode())
        for doc in docs:
            data = doc.encode("utf-8")
            h.update(f"{len(data)}:".encode())
            h.update(data)
    return h.hexdigest()[:32]


def encode_documents(docs: Sequence[str], tokenizer: Any) -> np.ndarray:
    """Token ids of ``docs`` joined with ``tokenizer.eos_id`` between documents (int64 array)."""
    parts: list[np.ndarray] = []
    for i, ids in enumerate(tokenizer.encode_batch(list(docs))):
        if i:
            parts.append(np.array([tokenizer.eos_id], dtype=np.int64))
        parts.append(np.asarray(ids, dtype=np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _units(docs_train: Sequence[str], docs_val: Sequence[str]) -> Iterator[tuple[str, int, int, str]]:
    doc = 0
    for split, docs in (("train", docs_train), ("val", docs_val)):
        for text in docs:
            if text:
                yield from ((block, doc, 0, split) for block in cut_blocks(text, BLOCK_CHARS))
                doc += 1


def prepare_lm_data(docs_train: Sequence[str], docs_val: Sequence[str], tokenizer: Any,
                    cache_dir: str | os.PathLike) -> PreparedData:
    """Tokenizes both splits once into shards; reuses them while text and tokenizer are unchanged.

    Args:
        docs_train: training documents (from :func:`~lmforge.data.split_documents`).
        docs_val: validation documents.
        tokenizer: any :class:`~lmforge.tokenizers.Tokenizer`.
        cache_dir: the prepared folder (created when missing).

    Returns:
        :class:`~lmforge.data.prepare.PreparedData` with read-only memory maps; ``.reused`` tells whether
        the folder was reused.

    Raises:
        DataError: a split is empty.

    Example:
        >>> from lmforge.tokenizers import train_tokenizer
        >>> tok = train_tokenizer("char", ["abc\\n" * 10])
        >>> data = prepare_lm_data(["abc\\n" * 9], ["abc\\n"], tok, tmp_dir)  # doctest: +SKIP
        >>> data.meta["val"]["tokens"]  # doctest: +SKIP
        4
    """
    for split, docs in (("training", docs_train), ("validation", docs_val)):
        if not any(docs):
            raise DataError(f"the {split} split is empty; give the corpus more text or change data.val_fraction")
    folder = Path(cache_dir)
    key = {"settings": {"documents": True, "tokenizer": {"file": tokenizer.fingerprint()}},
           "source": {"hash": source_hash(docs_train, docs_val)}}
    old = _read_manifest(folder)
    if old is not None and old.get("complete") and all(old.get(k) == v for k, v in key.items()):
        with contextlib.suppress(DataError):
            data = load_prepared(folder, old)
            data.tokenizer = tokenizer
            log.info("reusing token cache in %s", folder)
            return data
    log.info("tokenizing the corpus into %s", folder)
    folder.mkdir(parents=True, exist_ok=True)
    return publish(folder, key, _units(docs_train, docs_val), tokenizer, val_fraction=0.5, seed=0, workers=1,
                   resume_from=None)
