"""Character-level tokenizer: one id per Unicode character seen in training, ``<unk>`` for the rest."""

from __future__ import annotations

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

__all__ = ["CharTokenizer"]


class CharTokenizer(SavedAsJSON):
    """Maps each character to an id; characters not seen in training become ``<unk>``.

    Example:
        >>> tok = CharTokenizer.train(["abba"])
        >>> tok.encode("abc")  # 'c' was never seen
        [8, 9, 1]
        >>> tok.decode(tok.encode("ab", add_eos=True))
        'ab'
    """

    kind = "char"
    pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID

    def __init__(self, chars: Sequence[str]) -> None:
        """Args:
        chars: the regular tokens in id order (ids start at 8), each exactly one character.
        """
        bad = [c for c in chars if len(c) != 1]
        if bad:
            raise TokenizerError(f"char tokenizer entries must be single characters, got {bad[:3]}; retrain the tokenizer")
        self._vocab = VocabTable(chars)
        self.special_tokens = dict(SPECIAL_TOKENS)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 5000, min_frequency: int = 1, lowercase: bool = False) -> "CharTokenizer":
        """Builds the vocabulary from the characters of ``texts``.

        Args:
            texts: training text.
            vocab_size: upper bound on the vocabulary (specials included); when the text has more distinct
                characters, the most frequent ones are kept.
            min_frequency: characters seen fewer times map to ``<unk>``.
            lowercase: unused by this kind (accepted so every kind trains with the same call).

        Returns:
            The tokenizer; regular characters are in code-point order.
        """
        counts: Counter = Counter()
        for text in texts:
            counts.update(text)
        chars = most_frequent(counts, vocab_size - FIRST_REGULAR_ID, min_frequency)
        if not chars:
            raise TokenizerError("cannot train a char tokenizer on empty text; give it a non-empty corpus")
        return cls(sorted(chars))

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Ids of the characters of ``text``, framed by ``<bos>``/``<eos>`` when asked."""
        stoi = self._vocab.regular_stoi
        ids = [stoi.get(c, UNK_ID) for c in text]
        return frame_ids(ids, add_bos, add_eos)

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        """``encode`` of each text."""
        return [self.encode(t) for t in texts]

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """The text of ``ids``; ``<unk>`` is written as ``<unk>``; other specials are dropped when ``skip_special``."""
        return "".join(self._vocab.tokens(ids, skip_special))

    def token_texts(self, skip_special: bool = True) -> list[str]:
        """The text each id decodes to; ``decode(ids)`` is the concatenation of its ids' texts (a character
        needs no context), which lets a stream turn each new id into text with one lookup."""
        return self._vocab.texts(skip_special)

    def token_to_id(self, token: str) -> int | None:
        """The id of ``token`` or None."""
        return self._vocab.lookup(token)

    def id_to_token(self, token_id: int) -> str:
        """The vocabulary entry of ``token_id``."""
        return self._vocab.tokens([token_id], skip_special=False)[0]

    def to_dict(self) -> dict[str, Any]:
        """The JSON payload written by :meth:`save`."""
        return {"format": FORMAT_NAME, "version": FORMAT_VERSION, "kind": self.kind,
                "special_tokens": dict(SPECIAL_TOKENS), "vocab": self._vocab.regular}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "tokenizer") -> "CharTokenizer":
        """Rebuilds the tokenizer from :meth:`to_dict`'s payload (``source`` names the file in errors)."""
        return cls(payload_list(data, "vocab", source))



    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"
