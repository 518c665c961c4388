"""Reading a corpus (a text file, a folder of .txt/.md files, or a .jsonl with a ``text`` field) and
splitting it deterministically into training and validation text."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from lmforge.errors import DataError

__all__ = ["default_corpus_path", "read_documents", "read_text_file", "split_documents", "TEXT_SUFFIXES"]

#: File suffixes read from a corpus folder (case-insensitive).
TEXT_SUFFIXES = (".txt", ".md")
_BOM = b"\xef\xbb\xbf"


def default_corpus_path() -> Path:
    """The bundled corpus: Tiny Shakespeare, from karpathy/char-rnn (public domain)."""
    return Path(__file__).resolve().parents[1] / "assets" / "tinyshakespeare.txt"


def _decode(raw: bytes, path: Path) -> str:
    """UTF-8 text of ``raw`` with line ends normalised to ``\\n``; DataError for binary or invalid bytes."""
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise DataError(f"{path} looks like a binary file (NUL byte at offset {nul}); pass UTF-8 text files only")
    body = raw[len(_BOM):] if raw.startswith(_BOM) else raw
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        offset = err.start + (len(raw) - len(body))
        raise DataError(f"{path} is not valid UTF-8 (bad byte 0x{raw[offset]:02x} at byte offset {offset}); re-save the file as UTF-8") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_text_file(path: str | os.PathLike) -> str:
    """The UTF-8 text of one file (line ends normalised to ``\\n``, a leading BOM dropped).

    Raises:
        DataError: the file is missing, a folder, binary or not valid UTF-8 (naming the byte offset).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"corpus file {path} does not exist; check the path")
    if not path.is_file():
        raise DataError(f"{path} is not a regular file; pass a text file, a folder of .txt/.md files or a .jsonl file")
    return _decode(path.read_bytes(), path)


def _read_jsonl(path: Path) -> list[str]:
    docs = []
    for lineno, line in enumerate(read_text_file(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path} line {lineno} is not valid JSON ({err.msg}); each line must be an object with a 'text' field") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DataError(f"{path} line {lineno} has no 'text' string field; each line must look like {{\"text\": \"...\"}}")
        if record["text"].strip():
            docs.append(record["text"])
    if not docs:
        raise DataError(f"{path} holds no non-empty 'text' field; add records like {{\"text\": \"...\"}}")
    return docs


def read_documents(path: str | os.PathLike | None = None) -> list[str]:
    """The documents of a corpus.

    Args:
        path: a text file (one document); a folder, read recursively for ``.txt``/``.md`` files in sorted
            order (one document each, empty files skipped); a ``.jsonl`` file whose lines are objects with a
            ``"text"`` field (one document each); or None for the bundled Tiny Shakespeare.

    Returns:
        The non-empty documents, in order.

    Raises:
        DataError: a missing or empty path, a folder without text files, a binary file or invalid UTF-8
            (the message names the file and the byte offset).

    Example:
        >>> docs = read_documents()  # the bundled Tiny Shakespeare
        >>> docs[0][:14]
        'First Citizen:'
    """
    if path is not None and not str(os.fspath(path)).strip():  # Path("") would silently mean "."
        raise DataError("the corpus path is empty; pass a text file, a folder of .txt/.md files or a .jsonl file")
    path = default_corpus_path() if path is None else Path(path)
    if not path.exists():
        raise DataError(f"corpus path {path} does not exist; pass a text file, a folder of .txt/.md files or a .jsonl file")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise DataError(f"folder {path} holds no .txt or .md files; add text files or pass a file instead")
        docs = [t for t in (read_text_file(f) for f in files) if t.strip()]
        if not docs:
            raise DataError(f"folder {path}: all {len(files)} .txt/.md files are empty; add some text")
        return docs
    if path.suffix.lower() == ".jsonl":
        return _read_jsonl(path)
    text = read_text_file(path)
    if not text.strip():
        raise DataError(f"corpus file {path} is empty; add some text or pass another file")
    return [text]


def _cut_near(text: str, pos: int) -> int:
    """A cut position near ``pos``: just after the nearest line break (a plain cut when there is none)."""
    after = text.find("\n", pos)
    before = text.rfind("\n", 0, pos)
    options = [i + 1 for i in (before, after) if 0 <= i < len(text) - 1]
    return min(options, key=lambda c: abs(c - pos)) if options else pos


def split_documents(docs: Sequence[str], val_fraction: float = 0.1) -> tuple[list[str], list[str]]:
    """Splits a corpus deterministically: the last ``val_fraction`` of the characters is validation.

    Documents before the cut go to training, those after it to validation; the document that holds the
    cut is split at the line break nearest to it (at the exact position when it has no line break).

    Args:
        docs: the documents, in corpus order.
        val_fraction: the share of characters for validation, in (0, 1).

    Returns:
        ``(train_docs, val_docs)``, both non-empty.

    Raises:
        DataError: the corpus is too short to give both splits some text.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    docs = [d for d in docs if d]
    total = sum(len(d) for d in docs)
    cut = int(round(total * (1.0 - val_fraction)))
    train: list[str] = []
    val: list[str] = []
    seen = 0
    for doc in docs:
        if seen + len(doc) <= cut:
            train.append(doc)
        elif seen >= cut:
            val.append(doc)
        else:
            at = _cut_near(doc, cut - seen)
            head, tail = doc[:at], doc[at:]
            if head:
                train.append(head)
            if tail:
                val.append(tail)
        seen += len(doc)
    if not train or not val:
        raise DataError(f"the corpus ({total} characters) is too short to split into training and validation text "
                        f"with val_fraction={val_fraction}; add text or change data.val_fraction")
    return train, val
