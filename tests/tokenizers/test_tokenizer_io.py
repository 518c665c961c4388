"""load_tokenizer: one clear TokenizerError for every kind of bad file; saving never loses the old file."""

from __future__ import annotations

import json

import pytest

from lmforge.errors import TokenizerError
from lmforge.tokenizers import load_tokenizer, train_tokenizer
from lmforge.utils import files as io_utils


@pytest.fixture
def saved(tmp_path, tiny_text):
    tok = train_tokenizer("char", [tiny_text])
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    return tok, path


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_missing_file(tmp_path):
    with pytest.raises(TokenizerError, match="not found") as err:
        load_tokenizer(tmp_path / "nope.json")
    assert "lmforge tokenizer train" in _one_line(err)


def test_empty_file(tmp_path):
    (tmp_path / "t.json").write_text("  \n")
    with pytest.raises(TokenizerError, match="is empty"):
        load_tokenizer(tmp_path / "t.json")


def test_truncated_file_is_corrupted(saved):
    _, path = saved
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(TokenizerError, match=r"corrupted \(invalid JSON at line \d+") as err:
        load_tokenizer(path)
    assert str(path) in _one_line(err)


def test_binary_file(tmp_path):
    (tmp_path / "t.json").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(TokenizerError, match="not UTF-8 text"):
        load_tokenizer(tmp_path / "t.json")


def test_not_an_lmforge_tokenizer(tmp_path, tiny_text):
    (tmp_path / "config.json").write_text(json.dumps({"family": "transformer"}))
    with pytest.raises(TokenizerError, match="not an lmforge tokenizer"):
        load_tokenizer(tmp_path / "config.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(TokenizerError, match="not an lmforge tokenizer"):
        load_tokenizer(tmp_path / "list.json")
    hf = train_tokenizer("bpe", [tiny_text], vocab_size=280).hf_tokenizer
    (tmp_path / "hf.json").write_text(hf.to_str())
    with pytest.raises(TokenizerError, match="Hugging Face tokenizers file"):
        load_tokenizer(tmp_path / "hf.json")


def test_wrong_kind(saved):
    _, path = saved
    with pytest.raises(TokenizerError, match="is a 'char' tokenizer but a 'bpe' one is needed"):
        load_tokenizer(path, kind="bpe")
    assert load_tokenizer(path, kind="char").kind == "char"


def test_unknown_kind_and_future_version(saved):
    _, path = saved
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "kind": "sentencepiece"}))
    with pytest.raises(TokenizerError, match="unknown kind 'sentencepiece'; choose one of: bpe, char, hf, word"):
        load_tokenizer(path)
    path.write_text(json.dumps({**data, "version": 99}))
    with pytest.raises(TokenizerError, match="upgrade lmforge"):
        load_tokenizer(path)


@pytest.mark.parametrize("vocab", [None, "abc", ["a", "a"], ["ab"], ["<eos>"], [1, 2]])
def test_corrupted_vocabulary(saved, vocab):
    _, path = saved
    data = json.loads(path.read_text())
    if vocab is None:
        del data["vocab"]
    else:
        data["vocab"] = vocab
    path.write_text(json.dumps(data))
    with pytest.raises(TokenizerError, match="retrain"):
        load_tokenizer(path)


def test_failed_save_keeps_the_old_file(saved, monkeypatch, tiny_text):
    old, path = saved
    before = path.read_bytes()
    bigger = train_tokenizer("char", [tiny_text + "XYZ"])

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(io_utils.os, "fsync", boom)
    with pytest.raises(OSError):
        bigger.save(path)
    assert path.read_bytes() == before
    assert load_tokenizer(path).fingerprint() == old.fingerprint()
    assert [p.name for p in path.parent.iterdir()] == ["tokenizer.json"]
