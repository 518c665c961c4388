"""Parallel text for translation: two aligned files (one sentence a line) or one TSV of pairs.

Example:
    >>> pairs = read_parallel("train.en", "train.de")  # doctest: +SKIP
    >>> pairs[0]  # doctest: +SKIP
    ('Two young, White males are outside near many bushes.', 'Zwei junge weiße Männer sind im Freien ...')
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from lmforge.data.corpus import read_text_file
from lmforge.errors import DataError

__all__ = ["read_parallel", "read_lines", "drop_empty_pairs"]


def read_lines(path: str | os.PathLike, what: str = "file") -> list[str]:
    """The lines of a UTF-8 text file (line ends normalised; a final newline does not add an empty line).

    Raises:
        DataError: the file is missing, a folder, binary or not valid UTF-8.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} {path} does not exist; check the path")
    text = read_text_file(path)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def read_parallel(src: str | os.PathLike, tgt: Optional[str | os.PathLike] = None) -> list[tuple[str, str]]:
    """Reads sentence pairs.

    Args:
        src: the source-side file, aligned line by line with ``tgt``; or, when ``tgt`` is ``None``, a TSV file
            whose lines are ``source<TAB>target``.
        tgt: the target-side file.

    Returns:
        ``(source, target)`` pairs in file order (surrounding whitespace stripped; empty pairs are kept, so line
        numbers stay meaningful; training drops them with :func:`~lmforge.data.pair_batching.filter_pairs`).

    Raises:
        DataError: a missing, empty, binary or non-UTF-8 file; files whose line counts differ (both counts are
            named); a TSV line without exactly one tab.
    """
    if tgt is None:
        lines = read_lines(src, "parallel TSV file")
        if not lines:
            raise DataError(f"parallel TSV file {src} is empty; write one 'source<TAB>target' pair a line")
        pairs = []
        for lineno, line in enumerate(lines, start=1):
            parts = line.split("\t")
            if len(parts) != 2:
                if not line.strip():
                    raise DataError(f"{src}, line {lineno}: empty line in a TSV of pairs; remove it or write 'source<TAB>target'")
                raise DataError(
                    f"{src}, line {lineno}: expected 'source<TAB>target' (exactly one tab), found {len(parts) - 1} tabs; "
                    "fix the line, or pass two aligned files with --src and --tgt"
                )
            pairs.append((parts[0].strip(), parts[1].strip()))
        return pairs
    src_lines = read_lines(src, "source file")
    tgt_lines = read_lines(tgt, "target file")
    if not src_lines:
        raise DataError(f"source file {src} is empty; it needs one sentence a line")
    if len(src_lines) != len(tgt_lines):
        raise DataError(
            f"source file {src} has {len(src_lines)} lines but target file {tgt} has {len(tgt_lines)}; "
            "the files must be aligned line by line (one sentence pair per line number)"
        )
    return [(s.strip(), t.strip()) for s, t in zip(src_lines, tgt_lines)]


def drop_empty_pairs(pairs: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], int]:
    """The pairs whose two sides both hold text, and how many were dropped (a pair with an empty side can be
    neither learned from nor scored).

    Example:
        >>> drop_empty_pairs([("a", "b"), ("", ""), ("c", "")])
        ([('a', 'b')], 2)
    """
    kept = [(s, t) for s, t in pairs if s and t]
    return kept, len(pairs) - len(kept)
