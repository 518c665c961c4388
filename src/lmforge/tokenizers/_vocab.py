"""A fixed token table (specials first, then regular tokens) shared by the char and word tokenizers."""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

from lmforge.errors import TokenizerError
from lmforge.tokenizers.base import FIRST_REGULAR_ID, SPECIAL_TOKENS, UNK_ID

__all__ = ["VocabTable", "most_frequent"]


class VocabTable:
    """``itos``/``stoi`` over the eight special tokens followed by ``regular`` tokens, in that order."""

    def __init__(self, regular: Sequence[str]) -> None:
        regular = list(regular)
        clash = [t for t in regular if t in SPECIAL_TOKENS]
        if clash:
            raise TokenizerError(f"regular tokens {clash[:3]} collide with special tokens; retrain the tokenizer")
        self.itos: list[str] = list(SPECIAL_TOKENS) + regular
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(self.itos)}
        # For encoding plain text: a special-token string in the text is not a special id.
        self.regular_stoi: dict[str, int] = {t: i for t, i in self.stoi.items() if i >= FIRST_REGULAR_ID}
        if len(self.stoi) != len(self.itos):
            raise TokenizerError("the vocabulary holds duplicate tokens; the tokenizer file is corrupted, retrain it")

    @property
    def regular(self) -> list[str]:
        return self.itos[FIRST_REGULAR_ID:]

    def __len__(self) -> int:
        return len(self.itos)

    def lookup(self, token: str) -> int | None:
        return self.stoi.get(token)

    def tokens(self, ids: Sequence[int], skip_special: bool) -> list[str]:
        """The token strings of ``ids``; ``skip_special`` drops specials except ``<unk>`` (it stands for text)."""
        size = len(self.itos)
        ids = [int(i) for i in ids]
        bad = next((i for i in ids if not 0 <= i < size), None)
        if bad is not None:
            raise TokenizerError(f"token id {bad} is outside the vocabulary (size {size}); is this the model's tokenizer?")
        itos = self.itos
        if skip_special:
            return [itos[i] for i in ids if _shown(i)]
        return [itos[i] for i in ids]

    def texts(self, skip_special: bool) -> list[str]:
        """The text of each id: its token string, or ``""`` for a special that ``skip_special`` drops."""
        if not skip_special:
            return list(self.itos)
        return [t if _shown(i) else "" for i, t in enumerate(self.itos)]


def _shown(i: int) -> bool:
    """Whether id ``i`` is decoded when specials are skipped: regular tokens, and ``<unk>`` (it stands for text)."""
    return i >= FIRST_REGULAR_ID or i == UNK_ID


def most_frequent(counts: Counter, max_tokens: int, min_frequency: int) -> list[str]:
    """The up to ``max_tokens`` entries seen at least ``min_frequency`` times, most frequent first
    (ties broken by the token itself, so the result is deterministic)."""
    kept = [(t, c) for t, c in counts.items() if c >= min_frequency and t not in SPECIAL_TOKENS]
    kept.sort(key=lambda tc: (-tc[1], tc[0]))
    return [t for t, _ in kept[: max(0, max_tokens)]]


def payload_list(data: dict[str, Any], key: str, source: str) -> list[str]:
    """``data[key]`` checked to be a list of strings (for loading a tokenizer.json)."""
    value = data.get(key)
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise TokenizerError(f"{source}: field {key!r} is missing or not a list of strings; the file is corrupted, retrain the tokenizer")
    return value
