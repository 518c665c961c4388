"""Byte-level BPE: Unicode round trips (hypothesis), ids checked against the `tokenizers` library's own
ByteLevelBPETokenizer and against a from-scratch Python BPE encoder, and exact chunked encoding."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.data import default_corpus_path
from lmforge.errors import TokenizerError
from lmforge.tokenizers import BPETokenizer, load_tokenizer, train_tokenizer
from lmforge.tokenizers.bpe import MIN_BPE_VOCAB, _chunks

regex = pytest.importorskip("regex")

SAMPLES = [
    "First Citizen:\nBefore we proceed any further, hear me speak.",
    "  leading spaces,\ttabs\n\n\nand   runs of   whitespace  ",
    "Ünïcödé: café, naïve, 東京, Москва, 🙂🚀 and ZWJ 👩‍👩‍👧",
    "numbers 12345 and it's they're we'll I'd",
    "",
    "\n",
]


TRAIN_TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n"
) * 20 + "café naïve 東京 🙂 it's they're 12345\n" * 5


@pytest.fixture(scope="module")
def tok() -> BPETokenizer:
    return train_tokenizer("bpe", [TRAIN_TEXT], vocab_size=330)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_round_trip_arbitrary_unicode(tok, s):
    assert tok.decode(tok.encode(s)) == s


@settings(max_examples=50, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), min_size=0, max_size=200))
def test_round_trip_with_bos_eos(tok, s):
    ids = tok.encode(s, add_bos=True, add_eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode(ids) == s


def test_lone_surrogate_is_a_clear_error(tok):
    with pytest.raises(TokenizerError, match="lone surrogate U\\+D800 at index 2"):
        tok.encode("ab\ud800c")
    with pytest.raises(TokenizerError, match="lone surrogate"):
        tok.encode_batch(["fine", "x\udfff"])


def test_vocab_size_is_reached_and_bounded(tok):
    assert tok.vocab_size == 330
    assert all(0 <= i < 330 for s in SAMPLES for i in tok.encode(s))
    with pytest.raises(TokenizerError, match=f"at least {MIN_BPE_VOCAB}"):
        train_tokenizer("bpe", ["abc"], vocab_size=100)


def test_ids_match_the_librarys_reference_trainer(tok):
    """The `tokenizers` library's own ByteLevelBPETokenizer, trained on the same text with the same settings,
    must learn the same vocabulary and give the same ids (our trainer feeds the text in cut pieces)."""
    from tokenizers import ByteLevelBPETokenizer

    text = TRAIN_TEXT
    ref = ByteLevelBPETokenizer(add_prefix_space=False)
    ref.train_from_iterator([text], vocab_size=330, min_frequency=1, show_progress=False,
                            special_tokens=list(tok.special_tokens))
    assert ref.get_vocab() == tok.hf_tokenizer.get_vocab()
    for s in SAMPLES + [text]:
        assert tok.encode(s) == ref.encode(s).ids


def test_training_in_pieces_learns_what_the_reference_learns_on_whole_text():
    from tokenizers import ByteLevelBPETokenizer

    text = default_corpus_path().read_text(encoding="utf-8")[:300_000]  # cut into ~20 pieces for training
    ours = train_tokenizer("bpe", [text], vocab_size=600, min_frequency=2)
    ref = ByteLevelBPETokenizer(add_prefix_space=False)
    ref.train_from_iterator([text], vocab_size=600, min_frequency=2, show_progress=False,
                            special_tokens=list(ours.special_tokens))
    assert ref.get_vocab() == ours.hf_tokenizer.get_vocab()
    assert ours.encode(text[:20_000]) == ref.encode(text[:20_000]).ids


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-ins for the 256 bytes (printable Latin-1 bytes map to themselves)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def _reference_encode(text: str, vocab: dict[str, int], merges: list[tuple[str, str]]) -> list[int]:
    """Plain BPE (arXiv:1508.07909): per pre-token, repeatedly merge the adjacent pair of lowest rank."""
    rank = {pair: r for r, pair in enumerate(merges)}
    table = _bytes_to_unicode()
    ids: list[int] = []
    for piece in regex.findall(GPT2_SPLIT, text):
        symbols = [table[b] for b in piece.encode("utf-8")]
        while len(symbols) > 1:
            pairs = [(rank.get((a, b), len(rank)), i) for i, (a, b) in enumerate(zip(symbols, symbols[1:]))]
            best, _ = min(pairs)
            if best == len(rank):
                break
            a, b = merges[best]
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == a and symbols[i + 1] == b:
                    merged.append(a + b)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        ids.extend(vocab[s] for s in symbols)
    return ids


def test_ids_match_a_from_scratch_bpe_encoder(tok, tmp_path):
    tok.save(tmp_path / "tokenizer.json")
    model = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))["hf_tokenizer"]["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    assert len(merges) == 330 - 8 - 256
    for s in SAMPLES + ["Resolved, resolved! Speak, citizen: we famish.\nYou die rather?"]:
        assert tok.encode(s) == _reference_encode(s, model["vocab"], merges), s


def test_long_text_is_encoded_exactly_in_pieces(tok, tiny_text):
    text = ("x\n\n  y\nzz \n" + tiny_text + "\n\n\n") * 80  # > 64 KiB, awkward line ends
    assert len(text) > 1 << 16
    pieces = list(_chunks(text, 1000))
    assert "".join(pieces) == text and len(pieces) > 10
    assert tok.encode(text) == tok.hf_tokenizer.encode(text, add_special_tokens=False).ids


def test_bpe_on_tiny_shakespeare_round_trips_and_compresses(shared_data):
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:200_000]
    tok = train_tokenizer("bpe", [text], vocab_size=1000)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(text) / len(ids) > 2.5  # 1000 merges compress English well beyond bytes


def test_corrupted_bpe_payload_is_a_tokenizer_error(tok, tmp_path):
    tok.save(tmp_path / "tokenizer.json")
    data = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    data["hf_tokenizer"]["model"] = {"type": "BPE", "vocab": "nonsense"}
    (tmp_path / "bad.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(TokenizerError, match="bad.json.*corrupted"):
        load_tokenizer(tmp_path / "bad.json")
    del data["hf_tokenizer"]
    (tmp_path / "bad.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(TokenizerError, match="hf_tokenizer"):
        load_tokenizer(tmp_path / "bad.json")
