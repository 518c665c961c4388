"""Corpus -> token ids, cached as NumPy memmaps (``train.bin``, ``val.bin``) beside a ``meta.json``.

The cache is keyed by the tokenizer's fingerprint and a hash of the text of both splits: when either changes,
the files are rebuilt; otherwise they are memory-mapped as they are. Files are written atomically and
``meta.json`` last, so an interrupted build is never mistaken for a finished one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lmforge.errors import DataError
from lmforge.utils.files import atomic_path, atomic_write_json

__all__ = ["LMData", "prepare_lm_data", "encode_documents", "source_hash", "CACHE_VERSION"]

log = logging.getLogger(__name__)

#: Bumped when the layout of the cache changes (older caches are rebuilt).
CACHE_VERSION = 1
SPLITS = ("train", "val")


@dataclass
class LMData:
    """Token ids of both splits (read-only 1-D memmaps) and the cache's metadata.

    Attributes:
        train: training token ids (documents joined with ``eos_id``), uint16 or uint32.
        val: validation token ids.
        meta: ``{"train": {"tokens", "chars", "bytes", "documents"}, "val": {...}, "tokenizer": fingerprint,
            "source": hash of the text, "dtype", "vocab_size", ...}``.
        reused: True when an existing cache was loaded, False when it was (re)built.
        cache_dir: where the files are.
    """

    train: np.ndarray
    val: np.ndarray
    meta: dict[str, Any]
    reused: bool = False
    cache_dir: Path | None = field(default=None)


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


def _dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def encode_documents(docs: Sequence[str], tokenizer: Any) -> np.ndarray:
    """Token ids of ``docs`` joined with ``tokenizer.eos_id`` between documents (int64 array)."""
    parts: list[np.ndarray] = []
    for i, ids in enumerate(tokenizer.encode_batch(list(docs))):
        if i:
            parts.append(np.array([tokenizer.eos_id], dtype=np.int64))
        parts.append(np.asarray(ids, dtype=np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _split_meta(docs: Sequence[str], tokens: int) -> dict[str, int]:
    return {"tokens": int(tokens), "chars": sum(len(d) for d in docs),
            "bytes": sum(len(d.encode("utf-8")) for d in docs), "documents": len(docs)}


def _load_cached(cache_dir: Path, expected: dict[str, Any]) -> LMData | None:
    meta_path = cache_dir / "meta.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or any(meta.get(k) != v for k, v in expected.items()):
        return None
    dtype = np.dtype(meta.get("dtype", "uint16"))
    arrays = {}
    for split in SPLITS:
        path = cache_dir / f"{split}.bin"
        n = meta.get(split, {}).get("tokens")
        if not isinstance(n, int) or n < 1 or not path.is_file() or path.stat().st_size != n * dtype.itemsize:
            return None
        arrays[split] = np.memmap(path, dtype=dtype, mode="r", shape=(n,))
    return LMData(arrays["train"], arrays["val"], meta, reused=True, cache_dir=cache_dir)


def prepare_lm_data(docs_train: Sequence[str], docs_val: Sequence[str], tokenizer: Any,
                    cache_dir: str | os.PathLike) -> LMData:
    """Tokenizes both splits once and caches them; reuses the cache while text and tokenizer are unchanged.

    Args:
        docs_train: training documents (from :func:`~lmforge.data.split_documents`).
        docs_val: validation documents.
        tokenizer: any :class:`~lmforge.tokenizers.Tokenizer`.
        cache_dir: folder for ``train.bin``, ``val.bin`` and ``meta.json`` (created when missing).

    Returns:
        :class:`LMData` with read-only memmaps; ``.reused`` tells whether the cache was hit.

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
    cache_dir = Path(cache_dir)
    dtype = _dtype_for(tokenizer.vocab_size)
    expected = {"version": CACHE_VERSION, "tokenizer": tokenizer.fingerprint(),
                "source": source_hash(docs_train, docs_val), "dtype": dtype.name}
    cached = _load_cached(cache_dir, expected)
    if cached is not None:
        log.info("reusing token cache in %s", cache_dir)
        return cached

    log.info("tokenizing the corpus into %s", cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        (cache_dir / "meta.json").unlink()  # the old cache is invalid from here on
    meta: dict[str, Any] = {**expected, "tokenizer_kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size}
    for split, docs in zip(SPLITS, (docs_train, docs_val)):
        ids = encode_documents(docs, tokenizer)
        with atomic_path(cache_dir / f"{split}.bin") as tmp:
            ids.astype(dtype).tofile(tmp)
        meta[split] = _split_meta(docs, len(ids))
    atomic_write_json(cache_dir / "meta.json", meta)
    loaded = _load_cached(cache_dir, expected)
    assert loaded is not None, "a freshly written token cache must load"
    loaded.reused = False
    return loaded
