"""Corpus -> tokenizer + token shards, streamed with bounded memory, resumable and cached.

:func:`prepare` reads a corpus of any size (see :class:`~lmforge.data.sources.SourceReader`), trains the
tokenizer on a bounded sample of the training split streamed through an iterator, and encodes the corpus into
the shard store of :mod:`lmforge.data.shards`. The folder's ``manifest.json`` fingerprints the data (file
names, sizes, times and edges) and the settings: a complete folder with the same fingerprint is reused as it
is, an incomplete one resumes after its last complete shard, anything else is rebuilt.

The tokenizer is described by a :class:`lmforge.tokenizers.TokenizerSpec` (or any object with its ``key()``,
``needs_sample``, ``build(sample)`` and ``load(path)``): this layer only streams it a sample and stores the result.

Example:
    >>> from lmforge.tokenizers import TokenizerSpec
    >>> data = prepare("corpus.txt", tokenizer=TokenizerSpec("bpe", vocab_size=4096))  # doctest: +SKIP
    >>> len(data.train), data.meta["val"]["bytes"]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from lmforge.data.pipeline import SPLITS, StreamSplit, tokenize_units
from lmforge.data.shards import ShardedTokens, disk_full_error, dtype_for
from lmforge.data.sources import BLOCK_CHARS, SourceReader, fingerprint_files
from lmforge.errors import DataError
from lmforge.utils.files import atomic_write_json

__all__ = ["PreparedData", "prepare", "load_prepared", "is_prepared", "default_cache_root",
           "publish", "FORMAT", "MANIFEST", "TOKENIZER_FILE"]

log = logging.getLogger(__name__)

FORMAT = "lmforge-prepared"
VERSION = 2
MANIFEST = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
#: Publish shards every this many tokens per split (64 MiB of uint16): the granularity of resuming.
SHARD_TOKENS = 1 << 25
Progress = Callable[[str, int, int], None]


@dataclass
class PreparedData:
    """A prepared folder: both splits as memory-mapped token arrays, the tokenizer and the manifest.

    Attributes:
        train: the training ids (:class:`~lmforge.data.shards.ShardedTokens`, uint16 or uint32).
        val: the validation ids.
        meta: the manifest: ``meta["train"]``/``meta["val"]`` hold ``tokens``, ``chars``, ``bytes`` and
            ``documents``; also ``tokenizer`` (fingerprint), ``dtype``, ``vocab_size``, ``source``, ``skipped``.
        tokenizer: the tokenizer the shards were made with.
        reused: a complete folder was loaded as it was.
        resumed: an interrupted preparation was continued.
        cache_dir: the folder.
    """

    train: ShardedTokens
    val: ShardedTokens
    meta: dict
    tokenizer: Any = None
    reused: bool = False
    resumed: bool = False
    cache_dir: Optional[Path] = field(default=None)


def default_cache_root() -> Path:
    """``$LMFORGE_CACHE_DIR``, else ``$XDG_CACHE_HOME/lmforge/prepared``, else ``~/.cache/lmforge/prepared``."""
    if os.environ.get("LMFORGE_CACHE_DIR"):
        return Path(os.environ["LMFORGE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lmforge" / "prepared"


def _read_manifest(folder: Path) -> Optional[dict]:
    try:
        meta = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT and meta.get("version") == VERSION else None


def is_prepared(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder written by :func:`prepare` (complete or not)."""
    return Path(path).is_dir() and (Path(path) / MANIFEST).is_file()


def load_prepared(folder: str | os.PathLike, meta: Optional[dict] = None,
                  load_tokenizer: Optional[Callable[[Path], Any]] = None) -> PreparedData:
    """Opens a complete prepared folder (memory maps, nothing is read whole).

    Args:
        folder: the prepared folder.
        meta: its manifest, when already read.
        load_tokenizer: reads the folder's ``tokenizer.json`` into ``.tokenizer`` (e.g.
            :func:`lmforge.tokenizers.load_tokenizer`); without it ``.tokenizer`` is None.

    Raises:
        DataError: the folder is not a complete prepared folder, or a shard is missing or damaged.
    """
    folder = Path(folder)
    meta = meta or _read_manifest(folder)
    if meta is None:
        raise DataError(f"{folder} is not a prepared data folder (no valid {MANIFEST}); run `lmforge prepare DATA --out {folder}`")
    if not meta.get("complete"):
        raise DataError(f"{folder} holds an unfinished preparation; run the same `lmforge prepare` again to finish it")
    has = load_tokenizer is not None and (folder / TOKENIZER_FILE).is_file()
    tokenizer = load_tokenizer(folder / TOKENIZER_FILE) if has else None
    train, val = (ShardedTokens(folder, meta["shards"][s], meta["dtype"]) for s in SPLITS)
    return PreparedData(train, val, meta, tokenizer, reused=True, cache_dir=folder)


def _clear(folder: Path) -> None:
    """Removes what an earlier preparation (or the older single-file token cache) left in ``folder``."""
    pattern = re.compile(r"^\.?(train|val)(_\d+)?\.(bin|idx\.npy)(\.partial)?$|^meta\.json$|^" + re.escape(MANIFEST) + "$")
    for p in folder.iterdir() if folder.is_dir() else []:
        if p.is_file() and pattern.match(p.name):
            p.unlink()


def _remove_unlisted(folder: Path, meta: dict) -> None:
    listed = {e[k] for s in SPLITS for e in meta["shards"][s] for k in ("file", "index")}
    for p in folder.iterdir():
        if re.match(r"^\.?(train|val)_\d+\.(bin|idx\.npy)(\.partial)?$", p.name) and p.name not in listed:
            p.unlink()


def _sample(reader: SourceReader, val_fraction: float, seed: int, sample_mb: float,
            progress: Optional[Progress]) -> Iterator[str]:
    """Training-split units spread over the corpus, about ``sample_mb`` MiB in all (the tokenizer's sample)."""
    budget = int(sample_mb * (1 << 20))
    ratio = min(1.0, budget / max(1.0, reader.total_bytes * (1.0 - val_fraction)))
    split, pick = StreamSplit(val_fraction, seed), StreamSplit(ratio, seed + 1)
    taken = 0
    for text, _doc, pos in reader.units():
        if split.take(len(text)) or not pick.take(len(text)):
            continue
        taken += len(text)
        yield text
        if progress is not None:
            progress("sample", pos, reader.total_bytes)
        if taken >= budget:
            return


def _folder_for(data: Any, key: dict, cache_root: Optional[Path]) -> Path:
    digest = hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=8).hexdigest()
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(data)).name or "corpus")[:40]
    return (cache_root or default_cache_root()) / f"{stem}-{digest}"


def publish(folder: Path, key: dict, units: Any, tokenizer: Any, *, val_fraction: float, seed: int, workers: int,
            resume_from: Optional[dict], progress: Optional[Callable[[int], None]] = None,
            shard_tokens: int = SHARD_TOKENS, extra: Optional[dict] = None) -> PreparedData:
    """Encodes ``units`` into ``folder`` (continuing ``resume_from`` when given) and marks it complete."""
    dtype = dtype_for(tokenizer.vocab_size)
    if resume_from is None:
        _clear(folder)
        meta = {"format": FORMAT, "version": VERSION, "complete": False, **key, "tokenizer": tokenizer.fingerprint(),
                "tokenizer_kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size, "dtype": dtype.name,
                "shards": {s: [] for s in SPLITS}, "resume": {"units": 0}}
    else:
        meta = resume_from
        _remove_unlisted(folder, meta)
    save = lambda m: atomic_write_json(folder / MANIFEST, m)  # noqa: E731
    try:
        save(meta)
        tokenize_units(folder, meta, units, tokenizer, dtype=dtype, val_fraction=val_fraction, seed=seed,
                       workers=workers, shard_tokens=shard_tokens, save=save, progress=progress)
        for s in SPLITS:
            meta[s] = {k: meta["resume"][s][k] for k in ("tokens", "chars", "bytes", "documents")}
        meta.update(extra or {})
        empty = [s for s in SPLITS if not meta[s]["tokens"] and (val_fraction > 0 if s == "val" else val_fraction < 1)]
        if empty:
            raise DataError(f"the corpus is too short to give the {' and '.join(empty)} split any text with "
                            f"val_fraction={val_fraction}; add text or change the validation fraction")
        meta["complete"] = True
        save(meta)
    except OSError as err:
        raise disk_full_error(err, folder) from None
    data = load_prepared(folder, meta)
    data.tokenizer, data.reused, data.resumed = tokenizer, False, resume_from is not None
    return data


def prepare(data: str | os.PathLike, out: Optional[str | os.PathLike] = None, *, tokenizer: Any,
            val_fraction: float = 0.1, seed: int = 0, text_field: str = "text",
            workers: Optional[int] = None, skip_bad: bool = False, cache_root: Optional[str | os.PathLike] = None,
            progress: Optional[Progress] = None, shard_tokens: int = SHARD_TOKENS,
            block_chars: Optional[int] = None, reuse_only: bool = False) -> Optional[PreparedData]:
    """Prepares (or reuses, or resumes) the token shards of a corpus.

    Args:
        data: the corpus (any input of :class:`~lmforge.data.sources.SourceReader`).
        out: the prepared folder; default: a folder named after the data and settings under ``cache_root``.
        tokenizer: a :class:`lmforge.tokenizers.TokenizerSpec`: the tokenizer to train on a streamed sample, a
            file to load or a ready tokenizer.
        val_fraction: the share of characters for validation, in [0, 1] (0: everything trains, 1: all is val).
        seed: the split seed (same data and seed -> same split).
        text_field: the text field of JSONL/Parquet/Arrow records.
        workers: processes for the char/word tokenizers (default: every core); BPE uses the library's threads.
        skip_bad: count and skip bad records and files instead of stopping.
        cache_root: where default folders go (default :func:`default_cache_root`).
        progress: called as ``progress(phase, done_bytes, total_bytes)``, phase ``"sample"`` or ``"tokenize"``.
        shard_tokens: tokens per shard (the granularity of resuming).
        block_chars: units are cut from long documents at about this many characters; default: 1/256 of the
            corpus between 64 characters and 32 KiB, so even a small single file splits into enough line blocks.
        reuse_only: only open a finished preparation of the same data and settings; None when there is none.

    Returns:
        The :class:`PreparedData`; ``reused``/``resumed`` tell what happened.

    Raises:
        DataError: unreadable or bad input (naming the file and line), a full disk, a corpus too short to split.
    """
    if not 0.0 <= val_fraction <= 1.0:
        raise DataError(f"the validation fraction must be between 0 and 1, got {val_fraction}")
    spec = tokenizer
    reader = SourceReader(data, text_field=text_field, skip_bad=skip_bad)
    reader.block_chars = block_chars or min(BLOCK_CHARS, max(64, reader.total_bytes // 256))
    settings = {"tokenizer": spec.key(), "val_fraction": val_fraction, "seed": seed, "text_field": text_field,
                "skip_bad": skip_bad, "block_chars": block_chars}
    folder = Path(out) if out else _folder_for(Path(data).resolve(), settings, Path(cache_root) if cache_root else None)
    key = {"settings": settings, "source": {"path": str(Path(data).resolve()), "fingerprint": fingerprint_files(reader.files),
                                            "files": len(reader.files), "bytes": reader.total_bytes}}
    old = _read_manifest(folder)
    same = old is not None and all(old.get(k) == v for k, v in key.items())
    if same and old.get("complete"):
        with contextlib.suppress(DataError):
            log.info("reusing prepared data in %s", folder)
            return load_prepared(folder, old, spec.load)
    if reuse_only:
        return None
    resume = same and (folder / TOKENIZER_FILE).is_file() and not old.get("complete")
    if resume:
        tok = spec.load(folder / TOKENIZER_FILE)
        resume = tok.fingerprint() == old.get("tokenizer")
    if not resume:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise disk_full_error(err, folder) from None
        _clear(folder)
        if spec.needs_sample:
            log.info("training a %s tokenizer on up to %g MiB of %s", spec.kind, spec.sample_mb, data)
        tok = spec.build(_sample(reader, val_fraction, seed, spec.sample_mb, progress))
        try:
            tok.save(folder / TOKENIZER_FILE)
        except OSError as err:
            raise disk_full_error(err, folder) from None
    log.info("%s tokenizing %s into %s", "resuming" if resume else "start", data, folder)
    report = None if progress is None else (lambda pos: progress("tokenize", pos, reader.total_bytes))
    out_data = publish(folder, key, reader.units(), tok, val_fraction=val_fraction, seed=seed,
                       workers=workers or os.cpu_count() or 1, resume_from=old if resume else None, progress=report,
                       shard_tokens=shard_tokens, extra={"skipped": dict(reader.skipped), "first_skip": reader.first_skip})
    return out_data
