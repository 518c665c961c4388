"""prepare_lm_data: exact token arrays and counts; the cache is reused while nothing changes and rebuilt
when the corpus or the tokenizer changes (or the cache is damaged)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from lmforge.data import prepare_lm_data
from lmforge.errors import DataError
from lmforge.tokenizers import CharTokenizer, train_tokenizer


@pytest.fixture
def tok() -> CharTokenizer:
    return CharTokenizer.train(["abcdé\n"])  # "\n"=8 a=9 b=10 c=11 d=12 é=13


def test_arrays_and_meta(tok, tmp_path):
    data = prepare_lm_data(["ab", "cé"], ["d\n"], tok, tmp_path)
    assert not data.reused
    assert data.train.dtype == np.uint16 and data.val.dtype == np.uint16
    assert data.train.tolist() == [9, 10, 3, 11, 13]  # documents joined with <eos>=3
    assert data.val.tolist() == [12, 8]
    assert data.meta["train"] == {"tokens": 5, "chars": 4, "bytes": 5, "documents": 2}  # é is 2 bytes
    assert data.meta["val"] == {"tokens": 2, "chars": 2, "bytes": 2, "documents": 1}
    assert data.meta["tokenizer"] == tok.fingerprint() and data.meta["vocab_size"] == 14
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "train_00000.bin", "train_00000.idx.npy",
                                                           "val_00000.bin", "val_00000.idx.npy"]
    assert json.loads((tmp_path / "manifest.json").read_text()) == data.meta
    with pytest.raises((TypeError, ValueError)):
        data.train[0] = 1  # read-only


def _stamp(path):
    return {p.name: p.stat().st_mtime_ns for p in path.iterdir()}


def test_cache_is_reused_when_nothing_changed(tok, tmp_path):
    first = prepare_lm_data(["abc\n" * 50], ["dd\n"], tok, tmp_path)
    stamps = _stamp(tmp_path)
    again = prepare_lm_data(["abc\n" * 50], ["dd\n"], tok, tmp_path)
    assert again.reused and _stamp(tmp_path) == stamps
    assert np.array_equal(again.train, first.train) and again.meta == first.meta


def test_cache_is_rebuilt_when_the_corpus_changes(tok, tmp_path):
    prepare_lm_data(["abc\n" * 50], ["dd\n"], tok, tmp_path)
    changed = prepare_lm_data(["abc\n" * 49 + "abd\n"], ["dd\n"], tok, tmp_path)
    assert not changed.reused and changed.train[-2] == 12
    moved = prepare_lm_data(["abc\n" * 49 + "abd\n"], ["d", "d\n"], tok, tmp_path)  # same text, new boundary
    assert not moved.reused and moved.val.tolist() == [12, 3, 12, 8]
    assert prepare_lm_data(["abc\n" * 49 + "abd\n"], ["d", "d\n"], tok, tmp_path).reused


def test_cache_is_rebuilt_when_the_tokenizer_changes(tok, tmp_path):
    prepare_lm_data(["abc\n"], ["d\n"], tok, tmp_path)
    retrained = CharTokenizer.train(["édcba\n"])  # same characters -> same ids -> same fingerprint
    assert retrained.fingerprint() == tok.fingerprint()
    assert prepare_lm_data(["abc\n"], ["d\n"], retrained, tmp_path).reused
    word = train_tokenizer("word", ["abc d"])
    data = prepare_lm_data(["abc\n"], ["d\n"], word, tmp_path)
    assert not data.reused and data.meta["tokenizer_kind"] == "word"
    assert data.train.tolist() == [word.token_to_id("abc"), 8]


@pytest.mark.parametrize("damage", ["truncate_bin", "bad_meta", "no_meta"])
def test_damaged_cache_is_rebuilt(tok, tmp_path, damage):
    good = prepare_lm_data(["abc\n" * 10], ["dd\n"], tok, tmp_path)
    expected = good.train.tolist()
    if damage == "truncate_bin":
        with open(tmp_path / "train_00000.bin", "r+b") as f:
            f.truncate(10)
    elif damage == "bad_meta":
        (tmp_path / "manifest.json").write_text("{ not json")
    else:
        os.unlink(tmp_path / "manifest.json")
    data = prepare_lm_data(["abc\n" * 10], ["dd\n"], tok, tmp_path)
    assert not data.reused and data.train.tolist() == expected


class _BigVocab:
    """A tokenizer stand-in with more than 65536 ids (uint16 cannot hold them)."""

    kind, eos_id, vocab_size = "big", 3, 70_000

    def encode_batch(self, texts):
        return [[69_999, len(t)] for t in texts]

    def fingerprint(self):
        return "big"


def test_large_vocabulary_uses_uint32(tmp_path):
    data = prepare_lm_data(["abc"], ["de"], _BigVocab(), tmp_path)
    assert data.train.dtype == np.uint32 and data.train.tolist() == [69_999, 3]


def test_empty_split_is_refused(tok, tmp_path):
    with pytest.raises(DataError, match="validation split is empty"):
        prepare_lm_data(["abc"], [], tok, tmp_path)
    with pytest.raises(DataError, match="training split is empty"):
        prepare_lm_data([""], ["abc"], tok, tmp_path)
