"""The chatbot entry points' config (:class:`TransformerConfig` with named sizes) and text tokenizers
(:class:`BPETokenizer`, :class:`Vocabulary`); :mod:`lmforge.compat.chatbot` re-exports them."""

from __future__ import annotations

from typing import Any, Iterable, Optional, Union

from lmforge.config.lstm import LSTMConfig
from lmforge.config.presets import get_preset
from lmforge.config.transformer import TransformerConfig as _TransformerConfig
from lmforge.errors import ConfigError
from lmforge.tokenizers import load_tokenizer, train_tokenizer

__all__ = ["TransformerConfig", "BPETokenizer", "Vocabulary", "SIZES"]

SIZES = ("tiny", "small", "medium", "large")


# ---------------------------------------------------------------------------------------------- configs


class TransformerConfig(_TransformerConfig):
    """lmforge's :class:`~lmforge.config.TransformerConfig` with named sizes.

    Parameter counts at a 5,000-token vocabulary (tied embeddings; RMSNorm, RoPE, SwiGLU, grouped-query
    attention): ``tiny`` 496,704 (d_model 64, 4 layers), ``small`` 2,026,624 (d_model 128, 8 layers), ``medium``
    8,207,616 (d_model 256, 10 layers), ``large`` 30,136,832 (d_model 512, 10 layers). Keyword ``overrides`` replace top-level
    fields (``num_layers=2``); nested ones go through ``.with_overrides({"attention.num_heads": 2})``.
    """

    @classmethod
    def _sized(cls, size: str, vocab_size: int, overrides: dict[str, Any]) -> "TransformerConfig":
        data = get_preset(f"transformer-{size}")["model"]
        data.update(overrides, vocab_size=vocab_size)
        return cls.parse(data, source=f"TransformerConfig.{size}()")

    @classmethod
    def tiny(cls, vocab_size: int = 5000, **overrides: Any) -> "TransformerConfig":
        """About 0.5M parameters at 5,000 tokens (for tests and demos)."""
        return cls._sized("tiny", vocab_size, overrides)

    @classmethod
    def small(cls, vocab_size: int = 5000, **overrides: Any) -> "TransformerConfig":
        """About 2M parameters at 5,000 tokens."""
        return cls._sized("small", vocab_size, overrides)

    @classmethod
    def medium(cls, vocab_size: int = 5000, **overrides: Any) -> "TransformerConfig":
        """About 8M parameters at 5,000 tokens."""
        return cls._sized("medium", vocab_size, overrides)

    @classmethod
    def large(cls, vocab_size: int = 5000, **overrides: Any) -> "TransformerConfig":
        """About 30M parameters at 5,000 tokens."""
        return cls._sized("large", vocab_size, overrides)


# ---------------------------------------------------------------------------------------------- tokenizers


class _TextTokenizer:
    """Trains an lmforge tokenizer of ``kind`` from text and then behaves as it (attributes are delegated)."""

    kind = "bpe"

    def __init__(self, vocab_size: int = 5000, min_frequency: int = 1, lowercase: bool = False) -> None:
        self.requested_vocab_size = vocab_size
        self.min_frequency = min_frequency
        self.lowercase = lowercase
        self._tok: Any = None

    def build_from_text(self, text: Union[str, Iterable[str]]) -> "_TextTokenizer":
        """Trains on ``text`` (a string, or an iterable of documents); returns ``self``."""

        docs = [text] if isinstance(text, str) else list(text)
        self._tok = train_tokenizer(self.kind, docs, vocab_size=self.requested_vocab_size,
                                    min_frequency=self.min_frequency, lowercase=self.lowercase)
        return self

    @property
    def tokenizer(self) -> Any:
        """The trained lmforge tokenizer."""
        if self._tok is None:
            raise ConfigError(f"this {type(self).__name__} is empty; call build_from_text(text) first")
        return self._tok

    def __getattr__(self, name: str) -> Any:  # encode, decode, vocab_size, save, special ids...
        if name.startswith("__") or name == "_tok":
            raise AttributeError(name)
        return getattr(self.tokenizer, name)

    def __len__(self) -> int:
        return int(self.tokenizer.vocab_size)

    def __repr__(self) -> str:
        size = f"vocab_size={self._tok.vocab_size}" if self._tok is not None else "empty: call build_from_text"
        return f"{type(self).__name__}({size})"


class BPETokenizer(_TextTokenizer):
    """A byte-level BPE tokenizer (lmforge's :class:`~lmforge.tokenizers.BPETokenizer`, arXiv:1508.07909).

    ``BPETokenizer(vocab_size=5000).build_from_text(text)`` trains it; afterwards ``encode``, ``decode``,
    ``vocab_size``, ``save``... are the trained tokenizer's. The learned vocabulary may be smaller than asked
    for on a small text. The special ids are lmforge's (``<pad>`` 0, ``<unk>`` 1, ``<bos>`` 2, ``<eos>`` 3, chat
    role tokens 4-7).
    """

    kind = "bpe"


class Vocabulary(_TextTokenizer):
    """A character vocabulary (lmforge's :class:`~lmforge.tokenizers.CharTokenizer`) for :class:`CustomAIModel`:
    ``Vocabulary().build_from_text(text)`` gives one id per distinct character (plus the 8 special ids)."""

    kind = "char"

    def __init__(self, vocab_size: int = 100_000, min_frequency: int = 1, lowercase: bool = False) -> None:
        super().__init__(vocab_size, min_frequency, lowercase)


def _unwrap_tokenizer(tokenizer: Any) -> Any:
    return tokenizer.tokenizer if isinstance(tokenizer, _TextTokenizer) else tokenizer
