"""Every tokenizer kind: round trips, save/load, fixed special ids, <unk> fallback and vocabulary caps."""

from __future__ import annotations

import json
import typing

import pytest

from lmforge.config.tokenizer import TokenizerKind
from lmforge.errors import TokenizerError
from lmforge.tokenizers import (
    SPECIAL_TOKENS,
    TOKENIZERS,
    CharTokenizer,
    Tokenizer,
    WordTokenizer,
    load_tokenizer,
    train_tokenizer,
)

KINDS = ["char", "word", "bpe"]
EXPECTED_SPECIALS = {"<pad>": 0, "<unk>": 1, "<bos>": 2, "<eos>": 3,
                     "<|system|>": 4, "<|user|>": 5, "<|assistant|>": 6, "<|end|>": 7}


def _train(kind: str, text: str, **kw):
    kw.setdefault("vocab_size", 400 if kind == "bpe" else 100)
    return train_tokenizer(kind, [text], **kw)


def test_registry_matches_config_literal():
    assert sorted(typing.get_args(TokenizerKind)) == TOKENIZERS.names() == sorted(KINDS + ["hf"])  # hf: imported


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_on_training_text(kind, tiny_text):
    tok = _train(kind, tiny_text)
    assert isinstance(tok, Tokenizer)
    assert tok.kind == kind
    ids = tok.encode(tiny_text)
    assert all(tok.unk_id != i for i in ids)
    assert tok.decode(ids) == tiny_text
    assert max(ids) < tok.vocab_size and min(ids) >= 8


@pytest.mark.parametrize("kind", KINDS)
def test_fixed_special_ids(kind, tiny_text):
    tok = _train(kind, tiny_text)
    assert tok.special_tokens == EXPECTED_SPECIALS == SPECIAL_TOKENS
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    for token, i in EXPECTED_SPECIALS.items():
        assert tok.token_to_id(token) == i


@pytest.mark.parametrize("kind", KINDS)
def test_special_strings_in_text_are_plain_text(kind, tiny_text):
    tok = _train(kind, tiny_text + " <eos> <|user|>")
    ids = tok.encode("Speak <eos> <|user|>")
    assert not set(ids) & set(range(8)) - {tok.unk_id}
    assert tok.eos_id not in ids and tok.token_to_id("<|user|>") not in ids


@pytest.mark.parametrize("kind", KINDS)
def test_bos_eos_and_skip_special(kind, tiny_text):
    tok = _train(kind, tiny_text)
    plain = tok.encode("Speak, speak.")
    framed = tok.encode("Speak, speak.", add_bos=True, add_eos=True)
    assert framed == [2, *plain, 3]
    assert tok.decode(framed) == "Speak, speak."
    assert tok.decode([4, *plain, 7], skip_special=False).startswith("<|system|>")
    assert tok.decode([4, *plain, 7], skip_special=False).endswith("<|end|>")
    assert tok.encode_batch(["All:", "Speak"]) == [tok.encode("All:"), tok.encode("Speak")]


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(kind, tiny_text, tmp_path):
    tok = _train(kind, tiny_text)
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["kind"] == kind and data["format"] == "lmforge-tokenizer"
    again = load_tokenizer(path)
    assert type(again) is type(tok)
    assert again.vocab_size == tok.vocab_size
    assert again.fingerprint() == tok.fingerprint()
    sample = "Before we proceed, hear me: Zebra!"
    assert again.encode(sample) == tok.encode(sample)
    assert load_tokenizer(tmp_path).fingerprint() == tok.fingerprint()  # a folder holding tokenizer.json
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # atomic write left no temp file


@pytest.mark.parametrize("kind", KINDS)
def test_fingerprint_follows_content(kind, tiny_text):
    a = _train(kind, tiny_text)
    b = _train(kind, tiny_text)
    c = _train(kind, tiny_text + " Zounds! Marry, quoth Quince. xyzzy qqq")
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != c.fingerprint()


@pytest.mark.parametrize("kind", ["char", "word"])
def test_decode_rejects_ids_outside_vocab(kind, tiny_text):
    tok = _train(kind, tiny_text)
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])


def test_char_unknown_characters_map_to_unk():
    tok = CharTokenizer.train(["abba\n"])
    # Regular ids in code-point order after the 8 specials: "\n"=8, "a"=9, "b"=10.
    assert tok.vocab_size == 11
    assert tok.encode("ab\nz") == [9, 10, 8, 1]
    assert tok.decode(tok.encode("abz")) == "ab<unk>"


def test_char_vocab_size_keeps_most_frequent():
    tok = CharTokenizer.train(["aaaabbbcc d"], vocab_size=8 + 2)
    assert tok.vocab_size == 10
    assert tok.encode("abcd") == [8, 9, 1, 1]


def test_word_frequency_capped_vocabulary():
    text = "the cat saw the dog\nthe dog ran\na cat"
    # counts: the=3, cat=2, dog=2, a=1, ran=1, saw=1; 8 specials + "\n" + 3 words -> the, cat, dog.
    tok = WordTokenizer.train([text], vocab_size=12)
    assert tok.vocab_size == 12
    assert [tok.token_to_id(w) for w in ["\n", "the", "cat", "dog", "saw"]] == [8, 9, 10, 11, None]
    assert tok.encode("the cat saw\na dog") == [9, 10, 1, 8, 1, 11]
    assert tok.decode(tok.encode("the cat saw\na dog")) == "the cat <unk>\n<unk> dog"


def test_word_min_frequency_and_lowercase():
    tok = WordTokenizer.train(["The the THE cat"], vocab_size=100, min_frequency=2, lowercase=True)
    assert tok.token_to_id("the") == 9 and tok.token_to_id("cat") is None
    assert tok.encode("THE Cat") == [9, 1]
    with pytest.raises(TokenizerError, match="no word is frequent enough"):
        WordTokenizer.train(["a b c"], min_frequency=5)


def test_word_whitespace_is_normalised():
    tok = WordTokenizer.train(["to be or not to be"], vocab_size=100)
    assert tok.decode(tok.encode("  to \t be  or\nnot  ")) == "to be or\nnot"


def test_empty_training_text_is_refused():
    for kind in KINDS:
        with pytest.raises(TokenizerError, match="empty text"):
            train_tokenizer(kind, ["", ""])
