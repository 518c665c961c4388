"""Translator: order kept across length-sorted batches, empty lines, n-best, sampling, beam == search."""

from __future__ import annotations

import pytest
import torch

from lmforge.config import Seq2SeqTransformerConfig
from lmforge.inference.beam_search import beam_search
from lmforge.inference.translate import Translator
from lmforge.models import build_model
from lmforge.tokenizers import train_tokenizer

TEXTS = ["the cat", "a dog runs fast", "", "birds", "the cat sat on the mat today", "dog"]


@pytest.fixture(scope="module")
def translator() -> Translator:
    tok = train_tokenizer("char", ["the cat sat on a mat", "a dog runs fast", "birds fly today"])
    torch.manual_seed(0)
    model = build_model(Seq2SeqTransformerConfig(src_vocab_size=tok.vocab_size, tgt_vocab_size=tok.vocab_size,
                                                 d_model=32, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
                                                 d_ff=64, dropout=0.0, max_len=24))
    return Translator(model, tok)


def test_batching_keeps_order_and_equals_one_at_a_time(translator) -> None:
    for beam in (1, 3):
        together = translator.translate(TEXTS, beam=beam, batch_size=4)
        alone = [translator.translate([t], beam=beam)[0] for t in TEXTS]
        assert together == alone
        assert together[2] == ""
    done = []
    translator.translate(TEXTS, beam=1, batch_size=2, progress=done.append)
    assert done == [2, 4, 5]  # the empty line is not decoded


def test_translation_is_the_decoded_beam_search_result(translator) -> None:
    tok = translator.src_tokenizer
    ids = tok.encode("a dog runs fast") + [tok.eos_id]
    hyp = beam_search(translator.model, torch.tensor([ids]), bos_id=tok.bos_id, eos_id=tok.eos_id, beam_size=3,
                      alpha=translator.alpha, banned_ids=[0, 2])[0][0]
    assert translator.translate(["a dog runs fast"], beam=3) == [tok.decode(hyp.tokens)]
    assert all(t not in (0, 2) for t in hyp.tokens)


def test_nbest_and_max_len(translator) -> None:
    nbest = translator.translate_nbest(["the cat", "dog"], beam=4, n=3)
    assert [len(x) for x in nbest] == [3, 3]
    assert all(a[1] >= b[1] for x in nbest for a, b in zip(x, x[1:]))
    assert nbest[0][0][0] == translator.translate(["the cat"], beam=4)[0]
    short = translator.translate(TEXTS, beam=2, max_len=3)  # the char tokenizer writes an unknown id as "<unk>"
    assert all(len(t.replace("<unk>", "?")) <= 3 for t in short) and any(len(t) == 3 for t in short)


def test_sampling_is_seeded(translator) -> None:
    a = translator.sample(TEXTS, temperature=1.0, seed=1)
    assert a == translator.sample(TEXTS, temperature=1.0, seed=1)
    assert a != translator.sample(TEXTS, temperature=1.0, seed=2)
    assert translator.sample(TEXTS, temperature=0) == translator.translate(TEXTS, beam=1)
