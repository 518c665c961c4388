"""The token store: each split is a list of shards, flat binary files of token ids (uint16 while the vocabulary
fits, else uint32, as nanoGPT's ``train.bin``), each with an index of its segments, read back as one
memory-mapped array.

A shard is written to a temporary file and renamed into place when complete, its index beside it, and only
then recorded in the folder's ``manifest.json`` (written atomically). A shard the manifest does not list is
never read, so an interrupted or failed write is never mistaken for a complete one.

The index of a shard (``<split>_<n>.idx.npy``, int64, one row per segment) has the columns of
:data:`INDEX_COLUMNS`: where the segment's tokens start in the split, how many tokens it has (an ``<eos>``
before it included), the characters and UTF-8 bytes of its text (for bits per character and per byte), the
document it belongs to and the unit's ordinal in the corpus.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from lmforge.errors import DataError
from lmforge.utils.files import atomic_path

__all__ = ["ShardWriter", "ShardedTokens", "dtype_for", "INDEX_COLUMNS", "disk_full_error"]

INDEX_COLUMNS = ("token_start", "tokens", "chars", "bytes", "doc", "unit")


def dtype_for(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def disk_full_error(err: OSError, folder: Path) -> DataError:
    """A one-line :class:`DataError` for a failed write (disk full or another OS error)."""
    if err.errno == errno.ENOSPC:
        return DataError(f"the disk holding {folder} is full; free some space (or pass --out DIR on another disk) and run "
                         "the same command again: it resumes after the last complete shard")
    return DataError(f"cannot write to {folder} ({err.strerror or err}); check the folder's permissions and free space")


class ShardWriter:
    """Appends one split's tokens to a temporary shard and publishes it with :meth:`flush`.

    Args:
        folder: the prepared folder.
        split: ``"train"`` or ``"val"``.
        dtype: the token dtype.
        shard_no: the number of the next shard.
        tokens_before: tokens already in the split's published shards.
    """

    def __init__(self, folder: Path, split: str, dtype: np.dtype, shard_no: int = 0, tokens_before: int = 0) -> None:
        self.folder, self.split, self.dtype = folder, split, dtype
        self.shard_no, self.total = shard_no, tokens_before
        self._file: Any = None
        self._tmp: Optional[Path] = None
        self._rows: list[tuple[int, ...]] = []
        self._tokens = 0

    @property
    def pending(self) -> int:
        """Tokens written to the current, not yet published shard."""
        return self._tokens

    def write(self, ids: np.ndarray, chars: int, nbytes: int, doc: int, unit: int) -> None:
        """Appends one segment's ids (an ``<eos>`` included when it starts a new document)."""
        if self._file is None:
            self._tmp = self.folder / f".{self.split}_{self.shard_no:05d}.bin.partial"
            self._file = open(self._tmp, "wb")
        self._rows.append((self.total + self._tokens, len(ids), chars, nbytes, doc, unit))
        self._file.write(np.ascontiguousarray(ids, dtype=self.dtype).tobytes())
        self._tokens += len(ids)

    def flush(self) -> Optional[dict]:
        """Publishes the current shard (data, then index); returns its manifest entry, or None when empty."""
        if self._file is None:
            return None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        name = f"{self.split}_{self.shard_no:05d}"
        with atomic_path(self.folder / f"{name}.idx.npy") as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, np.asarray(self._rows, dtype=np.int64).reshape(-1, len(INDEX_COLUMNS)))
        os.replace(self._tmp, self.folder / f"{name}.bin")
        entry = {"file": f"{name}.bin", "index": f"{name}.idx.npy", "tokens": self._tokens}
        self.total += self._tokens
        self.shard_no += 1
        self._rows, self._tokens, self._tmp = [], 0, None
        return entry

    def abort(self) -> None:
        """Closes and deletes the unpublished shard."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.unlink()
        self._rows, self._tokens, self._tmp = [], 0, None


class ShardedTokens:
    """A split's shards read as one read-only 1-D array of token ids (memory-mapped, never loaded whole).

    Supports ``len``, integer and slice indexing and indexing with an integer array (any shape), which is
    what window sampling and evaluation need.

    Args:
        folder: the prepared folder.
        shards: the split's manifest entries (``file``, ``index``, ``tokens``).
        dtype: the token dtype.
    """

    def __init__(self, folder: str | os.PathLike, shards: Sequence[dict], dtype: np.dtype | str) -> None:
        self.folder = Path(folder)
        self.dtype = np.dtype(dtype)
        self.shards = list(shards)
        self._maps = []
        for entry in self.shards:
            path = self.folder / entry["file"]
            n = int(entry["tokens"])
            if not path.is_file() or path.stat().st_size != n * self.dtype.itemsize:
                raise DataError(f"shard {path} is missing or damaged; run `lmforge prepare` again to rebuild it")
            self._maps.append(np.memmap(path, dtype=self.dtype, mode="r", shape=(n,)))
        self.ends = np.cumsum([len(m) for m in self._maps], dtype=np.int64)
        self.starts = self.ends - np.asarray([len(m) for m in self._maps], dtype=np.int64)

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    @property
    def ndim(self) -> int:
        return 1

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[0:len(self)]
        return out if dtype is None else out.astype(dtype)

    def tolist(self) -> list[int]:
        return np.asarray(self).tolist()

    def __getitem__(self, key: Any) -> Any:
        if len(self._maps) == 1:
            return self._maps[0][key]
        if isinstance(key, (int, np.integer)):
            i = int(key) + (len(self) if key < 0 else 0)
            s = int(np.searchsorted(self.ends, i, side="right"))
            if not 0 <= i < len(self):
                raise IndexError(f"index {key} is out of range for {len(self)} tokens")
            return self._maps[s][i - self.starts[s]]
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                return self[np.arange(start, stop, step)]
            return self._slice(start, stop)
        index = np.asarray(key, dtype=np.int64)
        flat = index.reshape(-1)
        out = np.empty(flat.shape, dtype=self.dtype)
        which = np.searchsorted(self.ends, flat, side="right")
        for s in np.unique(which):
            mask = which == s
            out[mask] = self._maps[s][flat[mask] - self.starts[s]]
        return out.reshape(index.shape)

    def _slice(self, start: int, stop: int) -> np.ndarray:
        if stop <= start:
            return np.zeros(0, dtype=self.dtype)
        first = int(np.searchsorted(self.ends, start, side="right"))
        last = int(np.searchsorted(self.ends, stop - 1, side="right"))
        if first == last:
            return np.asarray(self._maps[first][start - self.starts[first]:stop - self.starts[first]])
        parts = [self._maps[s][max(start - self.starts[s], 0):min(stop, self.ends[s]) - self.starts[s]]
                 for s in range(first, last + 1)]
        return np.concatenate(parts)

    def segments(self) -> np.ndarray:
        """The index rows of every shard (columns :data:`INDEX_COLUMNS`), one int64 array."""
        tables = [np.load(self.folder / e["index"]) for e in self.shards]
        return np.concatenate(tables) if tables else np.zeros((0, len(INDEX_COLUMNS)), dtype=np.int64)

    def iter_chunks(self, size: int = 1 << 24):
        """Yields consecutive pieces of at most ``size`` tokens (for passes over the whole split)."""
        for m in self._maps:
            for lo in range(0, len(m), size):
                yield np.asarray(m[lo:lo + size])
