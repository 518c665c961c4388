"""The incremental detokenizer and the stop-string checks, against hand-worked cases and a byte tokenizer."""

from __future__ import annotations

import random

from toy_causal_lm import ByteTokenizer

from lmforge.inference import generation
from lmforge.inference.detokenize import IncrementalDetokenizer, StopStrings, find_stop, held_back


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


def test_held_back_against_a_brute_force_search():
    """The quick rejection (no stop's first character near the end) never changes the answer."""
    import itertools

    stops = ["\nUser:", "ab", "\n\nX", "Q"]
    for n in range(5):
        for chars in itertools.product("\nUab:", repeat=n):
            text = "pre" + "".join(chars)
            brute = max([k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])], default=0)
            assert held_back(text, stops) == brute, text


def test_push_one_with_a_char_tokenizers_table_equals_push():
    """A char tokenizer's per-id texts, joined, are its decode; push_one gives the pieces push gives."""
    import random

    from lmforge.tokenizers import train_tokenizer

    tok = train_tokenizer("char", ["hello world\nUser: é!"])
    rng = random.Random(0)
    ids = [rng.randrange(tok.vocab_size) for _ in range(300)]  # specials (<eos>, <unk>...) included
    for skip in (True, False):
        texts = tok.token_texts(skip)
        assert "".join(texts[i] for i in ids) == tok.decode(ids, skip_special=skip)
        fast, slow = IncrementalDetokenizer(tok, skip), IncrementalDetokenizer(tok, skip)
        fast_pieces = [fast.push_one(i) for i in ids] + [fast.flush()]
        slow_pieces = [slow.push([i]) for i in ids] + [slow.flush()]
        assert "".join(fast_pieces) == "".join(slow_pieces) == tok.decode(ids, skip_special=skip)
        assert fast.ids == slow.ids == ids


def test_push_one_without_a_table_is_push():
    tok = ByteTokenizer()
    det = IncrementalDetokenizer(tok)
    assert det.table is None
    e_acute = tok.encode("é")
    assert det.push_one(e_acute[0]) == "" and det.push_one(e_acute[1]) == "é"


def test_stop_strings_answer_as_find_stop_and_held_back():
    """StopStrings' shortcuts give the full searches' answers on random texts and stop sets (empty stop strings,
    repeated characters, stops that are prefixes of one another)."""
    rng = random.Random(5)
    alphabet = "ab\nc:"
    for _ in range(3000):
        stops = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0 if rng.random() < 0.05 else 1, 4)))
                 for _ in range(rng.randint(1, 3))]
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        start = rng.randint(0, len(text))
        matcher = StopStrings(stops)
        assert matcher.find(text, start) == find_stop(text, stops, start), (text, stops, start)
        assert matcher.held(text) == held_back(text, stops), (text, stops)
