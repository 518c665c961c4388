"""The incremental detokenizer and the stop-string checks, against hand-worked cases and a byte tokenizer."""

from __future__ import annotations

from toy_causal_lm import ByteTokenizer

from lmforge.inference import generation
from lmforge.inference.detokenize import IncrementalDetokenizer, find_stop, held_back


def test_generation_re_exports_the_detokenizer():
    assert generation.IncrementalDetokenizer is IncrementalDetokenizer
    assert "IncrementalDetokenizer" in generation.__all__


def test_a_multibyte_character_is_held_back_until_complete():
    tok = ByteTokenizer()
    det = IncrementalDetokenizer(tok)
    e_acute = tok.encode("é")  # two bytes: 0xC3 0xA9
    assert len(e_acute) == 2
    assert det.push(tok.encode("a")) == "a"
    assert det.push(e_acute[:1]) == ""  # half a character is not text yet
    assert det.push(e_acute[1:]) == "é"
    assert det.push(tok.encode("🎉")[:3]) == ""  # 3 of the 4 bytes
    assert det.flush() == "\ufffd"  # what is left at the end is given out as the decoder renders it
    assert det.flush() == ""


def test_special_tokens_are_skipped_unless_asked():
    tok = ByteTokenizer()
    assert IncrementalDetokenizer(tok).push([tok.eos_id] + tok.encode("ok")) == "ok"
    assert IncrementalDetokenizer(tok, skip_special=False).push([tok.eos_id] + tok.encode("ok")) == "<eos>ok"


def test_find_stop():
    assert find_stop("hello world", ["wor"], 0) == 6
    assert find_stop("abcXYZ", ["XYZ"], 5) == 3  # ends after `start` although it begins before it
    assert find_stop("XYZabc", ["XYZ"], 4) == -1  # ended before `start`: already checked
    assert find_stop("a\nUser: b\nSystem:", ["\nSystem:", "\nUser:"], 0) == 1  # the earliest of several
    assert find_stop("nothing here", ["STOP"], 0) == -1


def test_held_back():
    assert held_back("abc\nUs", ["\nUser:"]) == 3
    assert held_back("ab\n", ["\nUser:", "\nAssistant:"]) == 1
    assert held_back("abc", ["\nUser:"]) == 0
    assert held_back("x\nUser:", ["\nUser:"]) == 0  # a whole stop string is find_stop's business
    assert held_back("ST", ["STOP", "T"]) == 2
