"""Word-level tokenizer: whitespace-separated words with a frequency-capped vocabulary and ``<unk>``.

This is the classic word-level language-modelling set-up (Penn Treebank, WikiText): only the most frequent
words get ids, everything else is ``<unk>``. Line breaks are kept as a ``"\\n"`` token, so decoding gives back
the text with words joined by one space and the original line structure.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Iterable, Sequence

from lmforge.errors import TokenizerError
from lmforge.tokenizers._vocab import VocabTable, most_frequent, payload_list
from lmforge.tokenizers.base import (
    BOS_ID,
    EOS_ID,
    frame_ids,
    FIRST_REGULAR_ID,
    FORMAT_NAME,
    FORMAT_VERSION,
    PAD_ID,
    SPECIAL_TOKENS,
    SavedAsJSON,
    UNK_ID,
)

__all__ = ["WordTokenizer"]

NEWLINE = "\n"
_PIECES = re.compile(r"\n|[^\s]+")


class WordTokenizer(SavedAsJSON):
    """Splits on whitespace (keeping line breaks as tokens) and maps words outside the vocabulary to ``<unk>``.

    ``decode(encode(s))`` gives ``s`` back when ``s`` uses single spaces between words, no spaces at line ends
    and only in-vocabulary words (lowercased when ``lowercase`` is set).

    Example:
        >>> tok = WordTokenizer.train(["to be or not to be"], vocab_size=13)
        >>> tok.decode(tok.encode("to be  or\\nnot"))
        'to be or\\nnot'
    """

    kind = "word"
    pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID

    def __init__(self, words: Sequence[str], lowercase: bool = False) -> None:
        """Args:
        words: regular tokens in id order (ids start at 8); ``"\\n"`` is added first when missing.
        lowercase: lowercase text before splitting it.
        """
        words = list(words)
        if NEWLINE not in words:
            words.insert(0, NEWLINE)
        bad = [w for w in words if w != NEWLINE and (not w or any(c.isspace() for c in w))]
        if bad:
            raise TokenizerError(f"word tokenizer entries must be non-empty and hold no whitespace, got {bad[:3]}; retrain the tokenizer")
        self._vocab = VocabTable(words)
        self.lowercase = bool(lowercase)
        self.special_tokens = dict(SPECIAL_TOKENS)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 5000, min_frequency: int = 1, lowercase: bool = False) -> "WordTokenizer":
        """Keeps the ``vocab_size - 9`` most frequent words (specials and ``"\\n"`` take the other ids).

        Args:
            texts: training text.
            vocab_size: vocabulary size, specials and the newline token included.
            min_frequency: words seen fewer times become ``<unk>``.
            lowercase: lowercase before counting (and before encoding later).

        Returns:
            The tokenizer; words ordered by falling frequency, ties alphabetically.
        """
        if vocab_size < FIRST_REGULAR_ID + 2:
            raise TokenizerError(f"word vocab_size must be at least {FIRST_REGULAR_ID + 2} (8 specials, newline, one word); got {vocab_size}")
        counts: Counter = Counter()
        for text in texts:
            counts.update(w for w in _PIECES.findall(text.lower() if lowercase else text) if w != NEWLINE)
        words = most_frequent(counts, vocab_size - FIRST_REGULAR_ID - 1, min_frequency)
        if not words:
            raise TokenizerError("cannot train a word tokenizer: no word is frequent enough; lower min_frequency or give more text")
        return cls([NEWLINE, *words], lowercase=lowercase)

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    def _pieces(self, text: str) -> list[str]:
        return _PIECES.findall(text.lower() if self.lowercase else text)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Ids of the words and line breaks of ``text``."""
        stoi = self._vocab.regular_stoi
        ids = [stoi.get(w, UNK_ID) for w in self._pieces(text)]
        return frame_ids(ids, add_bos, add_eos)

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        """``encode`` of each text."""
        return [self.encode(t) for t in texts]

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Words joined by one space, line breaks kept; ``<unk>`` is written as ``<unk>``."""
        out: list[str] = []
        prev_newline = True
        for tok in self._vocab.tokens(ids, skip_special):
            if tok == NEWLINE:
                out.append(tok)
                prev_newline = True
            else:
                if not prev_newline:
                    out.append(" ")
                out.append(tok)
                prev_newline = False
        return "".join(out)

    def token_to_id(self, token: str) -> int | None:
        """The id of ``token`` or None."""
        return self._vocab.lookup(token)

    def id_to_token(self, token_id: int) -> str:
        """The vocabulary entry of ``token_id``."""
        return self._vocab.tokens([token_id], skip_special=False)[0]

    def to_dict(self) -> dict[str, Any]:
        """The JSON payload written by :meth:`save`."""
        return {"format": FORMAT_NAME, "version": FORMAT_VERSION, "kind": self.kind,
                "special_tokens": dict(SPECIAL_TOKENS), "lowercase": self.lowercase, "vocab": self._vocab.regular}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "tokenizer") -> "WordTokenizer":
        """Rebuilds the tokenizer from :meth:`to_dict`'s payload (``source`` names the file in errors)."""
        lowercase = data.get("lowercase", False)
        if not isinstance(lowercase, bool):
            raise TokenizerError(f"{source}: field 'lowercase' must be true or false; the file is corrupted, retrain the tokenizer")
        return cls(payload_list(data, "vocab", source), lowercase=lowercase)



    def __repr__(self) -> str:
        return f"WordTokenizer(vocab_size={self.vocab_size}, lowercase={self.lowercase})"
