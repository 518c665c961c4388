"""What tokenizer a corpus preparation uses: trained from a bounded sample streamed through an iterator, loaded
from a file, or given ready-made. :func:`lmforge.data.prepare` calls it without depending on this package.

Example:
    >>> spec = TokenizerSpec("char")
    >>> spec.build(iter(["hello", " world"])).decode(spec.build(iter(["hi"])).encode("hi"))
    'hi'
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from lmforge.tokenizers.base import Tokenizer
from lmforge.tokenizers.serialization import load_tokenizer, train_tokenizer

__all__ = ["TokenizerSpec"]


@dataclass
class TokenizerSpec:
    """The tokenizer of a preparation.

    Attributes:
        kind: ``char``, ``word`` or ``bpe`` (trained when neither ``path`` nor ``tokenizer`` is given).
        vocab_size: the vocabulary size (an upper bound for char/word).
        min_frequency: drop characters, words or merges seen fewer times.
        lowercase: word only.
        path: a ``tokenizer.json`` (or a run folder holding one) to use instead of training.
        sample_mb: the most MiB of text the tokenizer is trained on (the caller streams a sample spread over the
            corpus; see :func:`lmforge.data.prepare`).
        tokenizer: a ready tokenizer to use as it is.
    """

    kind: str = "bpe"
    vocab_size: int = 8192
    min_frequency: int = 1
    lowercase: bool = False
    path: Optional[str] = None
    sample_mb: float = 64.0
    tokenizer: Optional[Any] = field(default=None, repr=False)

    @property
    def needs_sample(self) -> bool:
        """True when :meth:`build` trains a tokenizer (and so reads the sample it is given)."""
        return self.tokenizer is None and not self.path

    def key(self) -> dict:
        """What identifies the tokenizer in a preparation's fingerprint."""
        if self.tokenizer is not None:
            return {"file": self.tokenizer.fingerprint()}
        if self.path:
            return {"file": load_tokenizer(self.path).fingerprint()}
        return {k: v for k, v in asdict(self).items() if k not in ("path", "tokenizer")}

    def build(self, sample: Iterable[str]) -> Tokenizer:
        """The tokenizer: the ready one, the file's, or one trained on ``sample`` (consumed lazily, once)."""
        if self.tokenizer is not None:
            return self.tokenizer
        if self.path:
            return load_tokenizer(self.path)
        return train_tokenizer(self.kind, sample, vocab_size=self.vocab_size, min_frequency=self.min_frequency,
                               lowercase=self.lowercase)

    @staticmethod
    def load(path: str | os.PathLike) -> Tokenizer:
        """Reads a tokenizer saved with ``save`` (the one a prepared folder holds)."""
        return load_tokenizer(Path(path))
