"""Text out of generated token ids, piece by piece: an incremental detokenizer and the stop-string checks.

:class:`IncrementalDetokenizer` decodes only the newest tokens at each step (a few, not the whole text) and never
splits a UTF-8 character; :func:`find_stop` finds a stop string in the text so far and :func:`held_back` says how
much of its end a stream must hold back because it could still grow into one. :mod:`lmforge.inference.generation`
drives them.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

__all__ = ["IncrementalDetokenizer", "StopStrings", "find_stop", "held_back"]


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text pieces without re-decoding the whole text.

    Each ``push`` decodes only the tokens since the last emitted piece (plus the piece before, for context),
    and holds back text while it ends in an incomplete UTF-8 character (U+FFFD from a byte-level BPE), so a
    piece never splits a character.
    """

    def __init__(self, tokenizer: Any, skip_special: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special = skip_special
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0
        texts = getattr(tokenizer, "token_texts", None)  # a tokenizer whose text is its tokens' texts joined
        self.table: Optional[list[str]] = texts(skip_special) if callable(texts) else None

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special=self.skip_special) if ids else ""

    def push(self, ids: Sequence[int]) -> str:
        """Adds tokens; returns the new complete text (possibly empty)."""
        self.ids.extend(int(i) for i in ids)
        prefix_text = self._decode(self.ids[self.prefix:self.read])
        new_text = self._decode(self.ids[self.prefix:])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return new_text[len(prefix_text):]
        return ""

    def push_one(self, token: int) -> str:
        """``push([token])``: one lookup where the tokenizer has a table of token texts and nothing is held back."""
        table = self.table
        if table is not None and self.read == len(self.ids) and 0 <= token < len(table):
            piece = table[token]
            if not piece.endswith("\ufffd"):
                self.ids.append(token)
                self.prefix = self.read = len(self.ids)
                return piece
        return self.push([token])

    def flush(self) -> str:
        """Whatever is still held back (at the end of generation)."""
        prefix_text = self._decode(self.ids[self.prefix:self.read])
        new_text = self._decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return new_text[len(prefix_text):]


def find_stop(text: str, stops: Sequence[str], start: int) -> int:
    """Index of the earliest stop string that ends at or after ``start``, or -1."""
    best = -1
    for s in stops:
        i = text.find(s, max(0, start - len(s) + 1))
        if i >= 0 and (best < 0 or i < best):
            best = i
    return best


def held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that could still grow into a stop string."""
    n = 0
    for s in stops:
        # such a suffix starts with s[0]: most texts end without one in their last len(s) - 1 characters
        if not s or text.find(s[0], max(0, len(text) - len(s) + 1)) < 0:
            continue
        for k in range(min(len(s) - 1, len(text)), n, -1):
            if text.endswith(s[:k]):
                n = k
                break
    return n


class StopStrings:
    """:func:`find_stop` and :func:`held_back` for one request's stop strings, each answering most calls with one
    test: a stop string can end in the text after ``start`` only if that text holds some stop string's last
    character, and a suffix that could grow into one starts with some stop string's first character within the
    last ``longest - 1`` characters. The batching engine asks both at every token of every sequence.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = list(stops)
        self.lasts = frozenset(s[-1] for s in self.stops if s)
        self.firsts = "".join(sorted({s[0] for s in self.stops if s}))
        self.longest = max((len(s) for s in self.stops), default=0)
        self.exact = all(self.stops)  # an empty stop string matches anywhere: always the full search

    def find(self, text: str, start: int) -> int:
        """``find_stop(text, stops, start)``."""
        if self.exact and not any(c in self.lasts for c in text[start:]):
            return -1
        return find_stop(text, self.stops, start)

    def held(self, text: str) -> int:
        """``held_back(text, stops)``."""
        lo = max(0, len(text) - self.longest + 1)
        if all(text.find(c, lo) < 0 for c in self.firsts):
            return 0
        return held_back(text, self.stops)
