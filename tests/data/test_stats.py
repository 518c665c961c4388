"""`lmforge data stats`: the figures against counts made by hand from the raw text, and the plot."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from lmforge.cli.main import main
from lmforge.data import prepare
from lmforge.data.stats import corpus_stats
from lmforge.tokenizers import CharTokenizer, load_tokenizer, TokenizerSpec

DOCS = ["abba\ncab\n", "ééé a\n", "b" * 40 + "\n", "xyz\n"]


def _corpus(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS), encoding="utf-8")
    tok = CharTokenizer.train(["abc\né "])  # x, y and z are unknown to it
    tok.save(tmp_path / "tok.json")
    return path, tok


def test_figures_match_the_raw_text(tmp_path):
    path, tok = _corpus(tmp_path)
    data = prepare(path, tmp_path / "p", tokenizer=TokenizerSpec(tokenizer=tok), val_fraction=0.3)
    stats = corpus_stats(data, top=3)
    text = "".join(DOCS)
    tokens = len(text) + len(DOCS) - 2  # one token a character, <eos> between the documents of each split
    assert (stats["documents"], stats["chars"], stats["bytes"]) == (4, len(text), len(text.encode()))
    assert stats["tokens"] == tokens and stats["chars_per_token"] == pytest.approx(len(text) / tokens)
    assert stats["unk_rate"] == pytest.approx(3 / tokens)  # x, y, z
    counts = Counter(text)
    assert [(t["token"], t["count"]) for t in stats["top_tokens"]] == [("b", counts["b"]), ("\n", counts["\n"]), ("a", counts["a"])]
    lengths = sorted(len(d) for d in DOCS)  # + the <eos> that precedes a document in its split
    assert sum(b["count"] for b in stats["doc_tokens"]) == 4 and stats["doc_tokens_max"] in (lengths[-1], lengths[-1] + 1)
    assert [b["count"] for b in stats["doc_chars"] if b["lo"] <= 41 < b["hi"]] == [1]  # the 41-character document


def test_cli_on_raw_data_and_on_the_prepared_folder_with_a_plot(tmp_path, capsys):
    path, _ = _corpus(tmp_path)
    args = ["data", "stats", str(path), "--tokenizer-file", str(tmp_path / "tok.json"), "--out", str(tmp_path / "p"),
            "--val-fraction", "0.3", "--quiet"]
    assert main([*args, "--json"]) == 0
    raw = json.loads(capsys.readouterr().out)
    assert main(["data", "stats", str(tmp_path / "p"), "--plot", str(tmp_path / "s.png")]) == 0
    out = capsys.readouterr().out
    assert "unknown-token rate" in out and "document length (tokens)" in out and "top tokens" in out
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert raw["tokens"] == len("".join(DOCS)) + len(DOCS) - 2
    assert load_tokenizer(tmp_path / "p").fingerprint() == load_tokenizer(tmp_path / "tok.json").fingerprint()
