"""Byte-level BPE (Sennrich et al., arXiv:1508.07909; byte-level as in GPT-2), trained and run by the
Hugging Face ``tokenizers`` library.

Text is split with the GPT-2 pre-tokenizer regex, each piece is turned into its UTF-8 bytes (each byte one
of 256 printable stand-in characters) and the learned merges are applied. Every byte is in the base
alphabet, so nothing is ever ``<unk>`` and ``decode(encode(s)) == s`` for every Unicode string.
"""

from __future__ import annotations

from typing import Iterable

from lmforge.errors import TokenizerError
from lmforge.tokenizers.base import FIRST_REGULAR_ID, SPECIAL_TOKENS
from lmforge.tokenizers.hf_model import HFModelTokenizer, _chunks, hf_tokenizers  # noqa: F401 (_chunks: tests)

__all__ = ["BPETokenizer", "MIN_BPE_VOCAB"]

#: 8 specials + 256 byte tokens: the smallest vocabulary a byte-level BPE can have.
MIN_BPE_VOCAB = FIRST_REGULAR_ID + 256


class BPETokenizer(HFModelTokenizer):
    """Byte-level BPE over a Hugging Face ``tokenizers.Tokenizer``; specials hold ids 0-7.

    Example:
        >>> tok = BPETokenizer.train(["low lower lowest " * 50], vocab_size=300)
        >>> tok.decode(tok.encode("lowest café ☕"))
        'lowest café ☕'
    """

    kind = "bpe"
    cuttable = True  # under the GPT-2 regex "x\nY" always splits around the line break

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 5000, min_frequency: int = 1, lowercase: bool = False) -> "BPETokenizer":
        """Learns merges on ``texts`` until the vocabulary holds ``vocab_size`` tokens (or no pair is left).

        Args:
            texts: training text.
            vocab_size: target size, the 8 specials and the 256 byte tokens included (at least 264).
            min_frequency: a pair seen fewer times is never merged.
            lowercase: unused by this kind (byte-level BPE keeps the text exactly).

        Returns:
            The trained tokenizer.
        """
        if vocab_size < MIN_BPE_VOCAB:
            raise TokenizerError(f"bpe vocab_size must be at least {MIN_BPE_VOCAB} (8 specials + 256 bytes); got {vocab_size}")
        hf = hf_tokenizers()
        tok = hf.Tokenizer(hf.models.BPE())
        tok.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = hf.decoders.ByteLevel()
        trainer = hf.trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        # Feed safe-cut pieces (not whole documents) so the library counts words on all cores.
        tok.train_from_iterator((piece for text in texts for piece in _chunks(text, 1 << 14)), trainer=trainer)
        return cls(tok)
