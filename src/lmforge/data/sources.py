"""Streaming corpus readers: text of any size, folders, JSONL (plain or gzipped), Parquet, Hugging Face
``save_to_disk`` folders, PDF and DOCX, read one piece at a time so memory stays bounded.

:class:`SourceReader` yields *units*: pieces of at most a few blocks of text, each tagged with the ordinal of
the document it belongs to. A document longer than a block (a huge text file, a long record) is cut at
*safe* positions only: just after a line break between two non-space characters, or failing that before a
single space between two non-space characters. Every tokenizer kind gives the same ids for the pieces as for
the whole text there (the byte-level BPE pre-tokenizer never joins across such a cut; see ``tokenizers/bpe``).

Example:
    >>> reader = SourceReader("corpus/")  # doctest: +SKIP
    >>> for text, doc, pos in reader.units():  # doctest: +SKIP
    ...     ...
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import json
import os
import re
import zlib
from pathlib import Path
from typing import Any, Iterator, Optional

from lmforge.errors import DataError

__all__ = ["SourceReader", "list_source_files", "fingerprint_files", "cut_blocks", "BLOCK_CHARS", "SUFFIXES"]

#: Target length of a unit in characters (documents longer than this are cut into line blocks).
BLOCK_CHARS = 1 << 15
_READ_BYTES = 1 << 20
_BOM = b"\xef\xbb\xbf"
_LINE_CUT = re.compile(r"(?<=\S\n)(?=\S)")
_SPACE_CUT = re.compile(r"(?<=\S)(?= \S)")
_TEXT = (".txt", ".md")
#: Every file suffix a corpus folder is read for.
SUFFIXES = (*_TEXT, ".jsonl", ".jsonl.gz", ".parquet", ".arrow", ".pdf", ".docx")
_HINT = "pass a text file, a folder, .jsonl/.jsonl.gz, .parquet, or a Hugging Face save_to_disk folder"


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".jsonl.gz" if name.endswith(".jsonl.gz") else path.suffix.lower()


def _hf_dataset_files(folder: Path) -> Optional[list[Path]]:
    """The Arrow files of a ``datasets.save_to_disk`` folder (its ``train`` split for a DatasetDict), or None."""
    if (folder / "dataset_dict.json").is_file():
        try:
            splits = json.loads((folder / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
        except (OSError, ValueError, KeyError, TypeError):
            raise DataError(f"{folder}/dataset_dict.json is unreadable; save the dataset again with save_to_disk") from None
        chosen = ["train"] if "train" in splits else list(splits)
        return [f for s in chosen for f in (_hf_dataset_files(folder / s) or [])]
    state = folder / "state.json"
    if not state.is_file():
        return None
    try:
        names = [d["filename"] for d in json.loads(state.read_text(encoding="utf-8"))["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"{state} is unreadable; save the dataset again with save_to_disk") from None
    return [folder / n for n in names]


def list_source_files(path: str | os.PathLike) -> list[Path]:
    """The files a corpus path stands for, in reading order.

    Raises:
        DataError: the path is missing or empty, a file of an unknown kind, or a folder without readable files.
    """
    if not str(os.fspath(path)).strip():
        raise DataError(f"the corpus path is empty; {_HINT}")
    path = Path(path)
    if not path.exists():
        raise DataError(f"corpus path {path} does not exist; {_HINT}")
    if path.is_file():
        return [path]
    hf = _hf_dataset_files(path)
    if hf is not None:
        return hf
    files = sorted(p for p in path.rglob("*") if p.is_file() and _suffix(p) in SUFFIXES and not p.name.startswith("."))
    if not files:
        raise DataError(f"folder {path} holds no {'/'.join(SUFFIXES)} files; add text files or pass a file instead")
    return files


def fingerprint_files(files: list[Path]) -> str:
    """A hash of each file's name, size, modification time and first and last 64 KiB (cheap on any size)."""
    h = hashlib.blake2b(digest_size=16)
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 16))
            if st.st_size > 1 << 17:
                fh.seek(-(1 << 16), os.SEEK_END)
                h.update(fh.read())
    return h.hexdigest()


def cut_blocks(text: str, block: int) -> Iterator[str]:
    """``text`` in pieces of about ``block`` to ``2 * block`` characters, cut at safe positions only."""
    while len(text) > 2 * block:
        at = _cut(text, block)
        if at >= len(text):
            break
        yield text[:at]
        text = text[at:]
    if text:
        yield text


def _cut(buf: str, block: int) -> int:
    """A safe cut position at or after ``block`` (within 4 blocks); a hard cut when the text has no space."""
    limit = 4 * block
    m = _LINE_CUT.search(buf, block, limit) or _SPACE_CUT.search(buf, block, limit)
    return m.start() if m else limit


class SourceReader:
    """Streams the units of a corpus.

    Args:
        path: a text file (``.txt``/``.md`` or any other suffix), a folder (read recursively for every
            suffix of :data:`SUFFIXES`, in sorted order), a ``.jsonl``/``.jsonl.gz`` file, a ``.parquet`` file,
            or a folder written by ``datasets.Dataset.save_to_disk`` (its Arrow files, read with pyarrow).
        text_field: the field (column) holding the text in JSONL, Parquet and Arrow files.
        skip_bad: count and skip bad records and unreadable files instead of raising.
        block_chars: the target unit length.

    Attributes:
        files: the files read.
        total_bytes: their size on disk (for progress).
        skipped: reason -> count of what was skipped (with ``skip_bad``).
    """

    def __init__(self, path: str | os.PathLike, text_field: str = "text", skip_bad: bool = False,
                 block_chars: int = BLOCK_CHARS) -> None:
        self.files = list_source_files(path)
        self.path = Path(path)
        self.text_field = text_field
        self.skip_bad = skip_bad
        self.block_chars = block_chars
        self.total_bytes = sum(f.stat().st_size for f in self.files)
        self.skipped: dict[str, int] = {}
        self.first_skip: Optional[str] = None
        self._done = 0  # bytes of the files already finished
        self._pos = 0  # bytes into the current file

    def _bad(self, message: str, reason: str) -> None:
        if not self.skip_bad:
            raise DataError(message)
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self.first_skip = self.first_skip or message

    @property
    def position(self) -> int:
        """Bytes of the source files read so far (for MB/s and the ETA)."""
        return self._done + self._pos

    def units(self) -> Iterator[tuple[str, int, int]]:
        """Yields ``(text, document ordinal, source bytes read)`` in corpus order; blank documents are left out.

        Raises:
            DataError: a bad file or record (unless ``skip_bad``), or a corpus without any text.
        """
        self._done, self._pos, self.skipped, self.first_skip = 0, 0, {}, None
        doc = -1
        for f in self.files:
            continuing = False
            for text in self._documents(f):
                if not continuing:
                    if not isinstance(text, _Continued) and not text.strip():
                        continue
                    doc += 1
                yield from ((t, doc, self.position) for t in self._blocks(text))
                continuing = isinstance(text, _Continued)
            self._done += f.stat().st_size
            self._pos = 0
        if doc < 0:
            raise DataError(f"{self.path} holds no text (all documents are empty); add some text or check --text-field")

    def _blocks(self, text: str) -> Iterator[str]:
        return cut_blocks(text, self.block_chars)

    def _documents(self, f: Path) -> Iterator[str]:
        kind = _suffix(f)
        if kind in (".jsonl", ".jsonl.gz"):
            yield from self._jsonl(f, gz=kind == ".jsonl.gz")
        elif kind == ".parquet":
            yield from self._parquet(f)
        elif kind == ".arrow":
            yield from self._arrow(f)
        elif kind in (".pdf", ".docx"):
            text = self._office(f, kind)
            if text is not None:
                yield text
        else:
            yield from self._text_file(f)

    # -- plain text ---------------------------------------------------------------------------------------
    def _text_file(self, f: Path) -> Iterator[str]:
        """One document streamed: yields pieces whose concatenation is the file's text (callers join them)."""
        pieces = self._text_pieces(f)
        try:
            first = next(pieces)
        except StopIteration:
            return
        except DataError as err:
            self._bad(str(err), "unreadable text file")
            return
        buf = first
        block = self.block_chars
        try:
            for piece in pieces:
                buf += piece
                while len(buf) > 4 * block:
                    at = _cut(buf, block)
                    yield _Continued(buf[:at])
                    buf = buf[at:]
        except DataError as err:
            self._bad(str(err), "unreadable text file")
        yield buf

    def _text_pieces(self, f: Path) -> Iterator[str]:
        dec = codecs.getincrementaldecoder("utf-8")("strict")
        carry_cr = False
        offset = 0
        with open(f, "rb") as fh:
            while True:
                raw = fh.read(_READ_BYTES)
                final = not raw
                skip = 3 if offset == 0 and raw.startswith(_BOM) else 0
                nul = raw.find(b"\x00")
                if nul >= 0:
                    raise DataError(f"{f} looks like a binary file (NUL byte at offset {offset + nul}); pass UTF-8 text files only")
                held = len(dec.getstate()[0])
                try:
                    text = dec.decode(raw[skip:], final)
                except UnicodeDecodeError as err:
                    at = offset + skip - held + err.start
                    raise DataError(f"{f} is not valid UTF-8 (bad byte at byte offset {at}); re-save the file as UTF-8") from None
                offset += len(raw)
                self._pos = offset
                if carry_cr:
                    text = "\r" + text
                carry_cr = text.endswith("\r") and not final
                if carry_cr:
                    text = text[:-1]
                yield text.replace("\r\n", "\n").replace("\r", "\n")
                if final:
                    return

    # -- records ------------------------------------------------------------------------------------------
    def _field(self, record: Any, where: str) -> Optional[str]:
        if not isinstance(record, dict):
            self._bad(f"{where} is not a JSON object; each line must look like {{\"{self.text_field}\": \"...\"}}", "not an object")
            return None
        value = record.get(self.text_field)
        if not isinstance(value, str):
            what = "has no" if value is None else "has a non-string"
            self._bad(f"{where} {what} {self.text_field!r} field; fix the line, pass --text-field NAME, or --skip-bad to skip it",
                      f"no {self.text_field!r} field")
            return None
        return value

    def _jsonl(self, f: Path, gz: bool) -> Iterator[str]:
        raw = open(f, "rb")
        stream = gzip.open(raw, "rb") if gz else raw
        lineno = 0
        try:
            while True:
                try:
                    line = stream.readline()
                except (OSError, EOFError, zlib.error) as err:
                    self._bad(f"{f} is a corrupt gzip file (after line {lineno}: {err}); re-compress it or pass --skip-bad "
                              "to keep the lines before the damage", "corrupt gzip")
                    return
                if not line:
                    return
                lineno += 1
                self._pos = raw.tell()
                text = self._json_line(f, lineno, line)
                if text:
                    yield text
        finally:
            stream.close()
            raw.close()

    def _json_line(self, f: Path, lineno: int, line: bytes) -> Optional[str]:
        where = f"{f} line {lineno}"
        try:
            decoded = line.decode("utf-8")
        except UnicodeDecodeError as err:
            self._bad(f"{where} is not valid UTF-8 (byte {err.start}); re-save the file as UTF-8", "invalid UTF-8")
            return None
        if not decoded.strip():
            return None
        try:
            record = json.loads(decoded)
        except json.JSONDecodeError as err:
            self._bad(f"{where} is not valid JSON ({err.msg}); fix the line or pass --skip-bad", "invalid JSON")
            return None
        text = self._field(record, where)
        return text.replace("\r\n", "\n").replace("\r", "\n") if text else None

    def _columns(self, f: Path, batches: Iterator[Any], names: list[str]) -> Iterator[str]:
        if self.text_field not in names:
            self._bad(f"{f} has no column {self.text_field!r} (columns: {', '.join(names) or 'none'}); pass --text-field NAME",
                      "missing column")
            return
        for batch in batches:
            column = batch.column(self.text_field) if hasattr(batch, "column") else batch[self.text_field]
            for value in column.to_pylist():
                if isinstance(value, str) and value:
                    yield value.replace("\r\n", "\n").replace("\r", "\n")

    def _parquet(self, f: Path) -> Iterator[str]:
        pq = _optional("pyarrow.parquet", "pyarrow", ".parquet")
        try:
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
        except Exception as err:  # pyarrow raises ArrowInvalid/OSError for damaged files
            self._bad(f"{f} is not a readable Parquet file ({str(err).splitlines()[0][:120]})", "unreadable parquet")
            return
        columns = [self.text_field] if self.text_field in names else None
        rows, size, done = max(1, pf.metadata.num_rows), f.stat().st_size, 0
        for batch_text in self._columns(f, pf.iter_batches(batch_size=1024, columns=columns), names):
            done += 1
            self._pos = size * done // rows
            yield batch_text

    def _arrow(self, f: Path) -> Iterator[str]:
        pa = _optional("pyarrow", "pyarrow", "Hugging Face datasets folder")
        try:
            source = pa.memory_map(str(f))
            try:
                reader = pa.ipc.open_stream(source)
            except pa.ArrowInvalid:
                reader = pa.ipc.open_file(source)
            names = reader.schema.names
            batches = iter(reader) if hasattr(reader, "__iter__") else (reader.get_batch(i) for i in range(reader.num_record_batches))
        except Exception as err:
            self._bad(f"{f} is not a readable Arrow file ({str(err).splitlines()[0][:120]})", "unreadable arrow")
            return
        yield from self._columns(f, batches, names)

    def _office(self, f: Path, kind: str) -> Optional[str]:
        try:
            if kind == ".pdf":
                pypdf = _optional("pypdf", "pypdf", ".pdf")
                reader = pypdf.PdfReader(str(f))
                text = "\n".join(page.extract_text() or "" for page in reader.pages)
            else:
                docx = _optional("docx", "python-docx", ".docx")
                text = "\n".join(p.text for p in docx.Document(str(f)).paragraphs)
        except DataError:
            raise
        except Exception as err:  # the readers raise many types for damaged files
            self._bad(f"cannot read {f} ({type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else 'damaged file'}); "
                      "remove it or pass --skip-bad", f"unreadable {kind[1:]}")
            return None
        return text.replace("\r\n", "\n").replace("\r", "\n")


class _Continued(str):
    """A piece of a document that the next piece continues (the reader joins them into one document)."""


def _optional(module: str, package: str, what: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(f"reading {what} files needs the {package} package; pip install 'lmforge[data]'") from None
