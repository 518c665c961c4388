"""Unigram language-model subwords (Kudo, arXiv:1804.10959), as SentencePiece trains them (arXiv:1808.06226),
through the Hugging Face ``tokenizers`` library's ``Unigram`` model and ``UnigramTrainer``.

Text is split at spaces, each space becoming the marker ``▁`` at the start of the next piece (SentencePiece's
convention, so decoding restores the spaces); the trainer starts from a large seed vocabulary of substrings and
prunes it by how little each piece adds to the corpus likelihood until ``vocab_size`` pieces remain. Encoding
picks the most likely segmentation (Viterbi). Characters never seen in training become ``<unk>`` (dropped when
decoding) and a run of leading spaces loses one space (the marker of the first word); everything else round-trips:
``decode(encode(s)) == s``.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from lmforge.errors import TokenizerError
from lmforge.tokenizers.base import FIRST_REGULAR_ID, SPECIAL_TOKENS, UNK_ID
from lmforge.tokenizers.hf_model import HFModelTokenizer, hf_tokenizers

__all__ = ["UnigramTokenizer", "MIN_UNIGRAM_VOCAB"]

#: the 8 specials and a few pieces: the smallest vocabulary accepted.
MIN_UNIGRAM_VOCAB = FIRST_REGULAR_ID + 8
SPACE_MARK = "\u2581"  # "▁", SentencePiece's visible space
UNUSABLE_SCORE = -1e6  # log-probability of the special tokens inside the unigram model
SCORE_DECIMALS = 9  # trained log-probabilities are rounded to this many decimals
CHAR_STEP = 1e-4  # the trainer's score step between the uncovered characters it appends


class UnigramTokenizer(HFModelTokenizer):
    """Unigram subwords over a Hugging Face ``tokenizers.Tokenizer``; specials hold ids 0-7.

    Example:
        >>> tok = UnigramTokenizer.train(["the cat sat on the mat"] * 20, vocab_size=40)
        >>> tok.decode(tok.encode("the mat sat"))
        'the mat sat'
    """

    kind = "unigram"
    cuttable = False  # "x\nY" is one pre-token here, so long text is encoded whole

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 5000, min_frequency: int = 1,
              lowercase: bool = False) -> "UnigramTokenizer":
        """Trains the unigram model on ``texts`` down to ``vocab_size`` pieces (the 8 specials included).

        Args:
            texts: training text.
            vocab_size: target size (at least :data:`MIN_UNIGRAM_VOCAB`); a small corpus may give fewer pieces.
            min_frequency: unused by this kind (the trainer prunes by likelihood, not by count).
            lowercase: unused by this kind (the text is kept exactly).

        Returns:
            The trained tokenizer.
        """
        if vocab_size < MIN_UNIGRAM_VOCAB:
            raise TokenizerError(f"unigram vocab_size must be at least {MIN_UNIGRAM_VOCAB}; got {vocab_size}")
        hf = hf_tokenizers()
        tok = hf.Tokenizer(hf.models.Unigram())
        tok.pre_tokenizer = hf.pre_tokenizers.Metaspace(replacement=SPACE_MARK, prepend_scheme="always")
        tok.decoder = hf.decoders.Metaspace(replacement=SPACE_MARK, prepend_scheme="always")
        trainer = hf.trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                             unk_token=_unk_token(), show_progress=False)
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(_settle(tok))


def _settle(tok: Any) -> Any:
    # The trainer puts the special tokens into the unigram vocabulary with log-probability 0, the most likely
    # score there is, so "<eos>" written in text would be segmented as the special piece itself. Control symbols
    # are never pieces of text (as in SentencePiece), so they get a score no segmentation will choose.
    # The trainer's parallel EM sums in a varying order, so scores differ in the last bits from run to run, and
    # it appends the characters no kept piece covers in hash order, scored min + 1e-4 * k. Rounding the scores,
    # giving those characters one score (the lowest) and ordering all pieces by score, then text, makes the same
    # training text give the same ids (and file, and fingerprint) every time.
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    regular = [[piece, round(score, SCORE_DECIMALS)] for piece, score in vocab[FIRST_REGULAR_ID:]]
    low = min((score for _, score in regular), default=0.0)
    for entry in regular:
        steps = (entry[1] - low) / CHAR_STEP
        if len(entry[0]) == 1 and steps <= len(regular) and abs(steps - round(steps)) < 1e-3:
            entry[1] = low
    regular.sort(key=lambda e: (-e[1], e[0]))
    data["model"]["vocab"] = [[piece, UNUSABLE_SCORE] for piece, _ in vocab[:FIRST_REGULAR_ID]] + regular
    return hf_tokenizers().Tokenizer.from_str(json.dumps(data))


def _unk_token() -> str:
    return next(token for token, i in SPECIAL_TOKENS.items() if i == UNK_ID)
