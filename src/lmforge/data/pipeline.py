"""The tokenizing half of ``prepare``: units are read and split in a background thread, encoded in parallel
and appended to the shards of their split; every ``shard_tokens`` tokens the shards are published and the
manifest records how many units are done, so an interrupted run resumes from there.

Parallelism: the byte-level BPE tokenizer encodes a batch of units on all cores itself (its Rust core releases
the GIL, so reading overlaps with encoding); the pure-Python ``char`` and ``word`` tokenizers encode batches
in a pool of ``workers`` processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import queue
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np

from lmforge.data.shards import ShardWriter, disk_full_error
from lmforge.errors import DataError

__all__ = ["StreamSplit", "tokenize_units", "SPLITS"]

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
_BATCH_CHARS = 1 << 21
_BATCH_UNITS = 512


class StreamSplit:
    """A deterministic streaming selector that takes about ``fraction`` of the characters, spread evenly.

    Error diffusion: a unit is taken when the characters owed to the selection (``fraction`` of all seen,
    plus a seeded phase of up to one first unit) reach half the unit's length. The same lengths and seed
    always give the same choices; ``fraction`` 0 takes nothing and 1 takes everything.

    Args:
        fraction: the share of characters to take, in [0, 1].
        seed: moves where the taken units fall.
    """

    def __init__(self, fraction: float, seed: int = 0) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise DataError(f"the split fraction must be between 0 and 1, got {fraction}")
        self.u = int.from_bytes(hashlib.blake2b(f"split:{seed}".encode(), digest_size=8).digest(), "big") / 2.0 ** 64
        self.fraction = fraction
        self.phase: Optional[float] = None
        self.seen = 0
        self.taken = 0

    def take(self, n: int) -> bool:
        """Whether the next unit, of ``n`` characters, is taken."""
        if self.phase is None:
            self.phase = self.u * self.fraction * n
        self.seen += n
        if self.fraction * self.seen + self.phase - self.taken >= n / 2:
            self.taken += n
            return True
        return False


def _produce(units: Iterable[tuple[str, int, int]], val_fraction: float, seed: int, skip_units: int,
             out: "queue.Queue", stop: threading.Event) -> None:
    """Reader thread: groups ``(text, doc, pos, unit, split)`` into batches; puts an exception or None at the end."""
    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    try:
        split = StreamSplit(val_fraction, seed)
        batch: list[tuple] = []
        chars = 0
        for unit, item in enumerate(units):
            text, doc, pos = item[:3]
            name = item[3] if len(item) > 3 else ("val" if split.take(len(text)) else "train")
            if unit < skip_units:
                continue
            batch.append((text, doc, pos, unit, name))
            chars += len(text)
            if chars >= _BATCH_CHARS or len(batch) >= _BATCH_UNITS:
                if not put(batch):
                    return
                batch, chars = [], 0
        if batch and not put(batch):
            return
        put(None)
    except BaseException as err:  # handed to the consumer, which re-raises it
        put(err)


_WORKER_TOK: Any = None


def _worker_init(tokenizer: Any) -> None:
    global _WORKER_TOK
    _WORKER_TOK = tokenizer  # inherited through fork, never pickled


def _worker_encode(texts: list[str]) -> list[np.ndarray]:
    return [np.asarray(ids, dtype=np.uint32) for ids in _WORKER_TOK.encode_batch(texts)]


def _pool(tokenizer: Any, workers: int) -> Any:
    """A process pool for the pure-Python tokenizers, or a null context (bpe, or one worker).

    It is forked before the reader thread starts, so no lock of this process is held in a child; the children
    only run Python tokenization (never torch or the Rust thread pool)."""
    if tokenizer.kind == "bpe" or workers <= 1:
        return contextlib.nullcontext(None)
    import multiprocessing as mp

    return mp.get_context("fork").Pool(workers, initializer=_worker_init, initargs=(tokenizer,))


def _encoded(batches: Iterator[list[tuple]], tokenizer: Any, pool: Any) -> Iterator[tuple[list[tuple], list]]:
    """``(batch, ids of each unit)`` in order, encoded in-process (bpe) or in the process pool (char, word)."""
    if pool is None:
        for batch in batches:
            yield batch, tokenizer.encode_batch([u[0] for u in batch])
        return
    pending: list[list[tuple]] = []

    def texts() -> Iterator[list[str]]:
        for batch in batches:
            pending.append(batch)
            yield [u[0] for u in batch]

    for ids in pool.imap(_worker_encode, texts()):
        yield pending.pop(0), ids


def _drain(q: "queue.Queue") -> Iterator[list[tuple]]:
    while True:
        item = q.get()
        if item is None:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


class _SplitState:
    """Counts of one split and the last unit written to it (to tell where an ``<eos>`` goes)."""

    def __init__(self, state: dict) -> None:
        self.tokens = int(state.get("tokens", 0))
        self.chars = int(state.get("chars", 0))
        self.bytes = int(state.get("bytes", 0))
        self.documents = int(state.get("documents", 0))
        last = state.get("last")
        self.last: Optional[tuple[int, int]] = tuple(last) if last else None  # type: ignore[assignment]

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "chars": self.chars, "bytes": self.bytes, "documents": self.documents,
                "last": list(self.last) if self.last else None}


def tokenize_units(folder: Path, manifest: dict, units: Iterable[tuple[str, int, int]], tokenizer: Any, *,
                   dtype: np.dtype, val_fraction: float, seed: int, workers: int, shard_tokens: int,
                   save: Callable[[dict], None], progress: Optional[Callable[[int], None]] = None) -> dict:
    """Encodes the units after ``manifest["resume"]["units"]`` into the shards and completes the manifest.

    Within a split, consecutive units of one document are joined as they are; anything else is separated by
    ``<eos>``, so a split's ids equal ``eos``-joined one-shot encodings of its runs of text.

    Args:
        folder: the prepared folder.
        manifest: the manifest so far (``shards``, ``resume``, per-split counts); updated in place.
        units: ``(text, doc, source position)`` from :meth:`~lmforge.data.sources.SourceReader.units`, or
            ``(text, doc, position, split)`` for units whose split is already chosen.
        tokenizer: the tokenizer.
        dtype: the token dtype.
        val_fraction: the validation share (by characters).
        seed: the split seed.
        workers: processes for the char/word tokenizers.
        shard_tokens: publish shards once a split has this many unpublished tokens.
        save: writes the manifest atomically.
        progress: called with the source bytes read after each batch.

    Returns:
        The completed manifest.
    """
    resume = manifest.setdefault("resume", {"units": 0})
    shards = manifest.setdefault("shards", {s: [] for s in SPLITS})
    states = {s: _SplitState(resume.get(s, {})) for s in SPLITS}
    writers = {s: ShardWriter(folder, s, dtype, len(shards[s]), states[s].tokens) for s in SPLITS}
    eos = np.asarray([tokenizer.eos_id], dtype=dtype)

    def checkpoint(done: int) -> None:
        for s in SPLITS:
            entry = writers[s].flush()
            if entry is not None:
                shards[s].append(entry)
            resume[s] = states[s].to_dict()
        resume["units"] = done
        save(manifest)

    done = resume["units"]
    q: "queue.Queue" = queue.Queue(maxsize=4)
    stop = threading.Event()
    thread = threading.Thread(target=_produce, args=(units, val_fraction, seed, resume["units"], q, stop), daemon=True)
    pool_cm = _pool(tokenizer, workers)
    pool = pool_cm.__enter__()
    thread.start()
    try:
        for batch, ids_list in _encoded(_drain(q), tokenizer, pool):
            for (text, doc, _pos, unit, name), ids in zip(batch, ids_list):
                st = states[name]
                arr = np.asarray(ids, dtype=dtype)
                if st.last is not None and st.last != (doc, unit - 1):
                    arr = np.concatenate([eos, arr])
                if st.last is None or st.last[0] != doc:
                    st.documents += 1
                nbytes = len(text.encode("utf-8"))
                writers[name].write(arr, len(text), nbytes, doc, unit)
                st.tokens += len(arr)
                st.chars += len(text)
                st.bytes += nbytes
                st.last = (doc, unit)
            done = batch[-1][3] + 1
            if progress is not None:
                progress(batch[-1][2])
            if max(w.pending for w in writers.values()) >= shard_tokens:
                checkpoint(done)
        checkpoint(done)
    except OSError as err:
        raise disk_full_error(err, folder) from None
    finally:
        stop.set()
        for w in writers.values():
            w.abort()
        pool_cm.__exit__(None, None, None)
        thread.join(timeout=5)
    return manifest
