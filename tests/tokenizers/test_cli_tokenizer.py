"""`lmforge tokenizer train|encode`: writes a loadable file; bad input is one `error:` line, exit code != 0."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lmforge.cli.main import COMMANDS, main
from lmforge.tokenizers import load_tokenizer


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_command_is_listed():
    assert COMMANDS["tokenizer"][0] == "lmforge.cli.tokenizer"


@pytest.mark.parametrize("kind,size", [("char", 100), ("word", 40), ("bpe", 300)])
def test_train_writes_a_loadable_tokenizer(kind, size, tiny_corpus, tmp_path, capsys):
    out = tmp_path / "out" / "tokenizer.json"
    assert main(["tokenizer", "train", "--kind", kind, "--vocab-size", str(size), str(tiny_corpus), "-o", str(out)]) == 0
    assert f"{kind} tokenizer" in capsys.readouterr().out
    tok = load_tokenizer(out)
    assert tok.kind == kind and tok.vocab_size <= size
    text = tiny_corpus.read_text()
    assert tok.decode(tok.encode(text)) == text


def test_train_on_several_files_and_folders(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("alpha beta\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.md").write_text("gamma delta\n")
    out = tmp_path / "t.json"
    assert main(["tokenizer", "train", "--kind", "word", str(tmp_path / "a.txt"), str(tmp_path / "docs"), "-o", str(out)]) == 0
    tok = load_tokenizer(out)
    assert all(tok.token_to_id(w) is not None for w in ["alpha", "beta", "gamma", "delta"])


def test_encode_prints_ids(tiny_corpus, tmp_path, capsys):
    out = tmp_path / "t.json"
    main(["tokenizer", "train", "--kind", "char", str(tiny_corpus), "-o", str(out)])
    capsys.readouterr()
    assert main(["tokenizer", "encode", str(out), "Speak, all", "--ids-only"]) == 0
    printed = [int(i) for i in capsys.readouterr().out.split()]
    assert printed == load_tokenizer(out).encode("Speak, all")
    assert main(["tokenizer", "encode", str(out), "All"]) == 0
    assert "3 tokens" in capsys.readouterr().out


@pytest.mark.parametrize("setup,args,needle", [
    (None, ["train", "{tmp}/missing.txt"], "does not exist"),
    ("empty", ["train", "{tmp}/empty.txt"], "is empty"),
    ("binary", ["train", "{tmp}/bin.txt"], "binary"),
    ("latin1", ["train", "{tmp}/latin1.txt"], "not valid UTF-8"),
    ("nodocs", ["train", "{tmp}/folder"], "no .txt or .md files"),
    ("corrupt", ["encode", "{tmp}/tok.json", "hi"], "corrupted"),
    (None, ["encode", "{tmp}/none.json", "hi"], "not found"),
    (None, ["train", "--kind", "bpe", "--vocab-size", "100", "{tmp}/ok.txt"], "at least 264"),
])
def test_bad_input_is_one_error_line(setup, args, needle, tmp_path, capsys):
    (tmp_path / "ok.txt").write_text("some text\n")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "bin.txt").write_bytes(b"abc\x00\x01")
    (tmp_path / "latin1.txt").write_bytes("caf\u00e9".encode("latin-1"))
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "x.csv").write_text("a,b")
    (tmp_path / "tok.json").write_text('{"kind": "char", "vocab": [')
    args = [a.format(tmp=tmp_path) for a in args]
    code = main(["tokenizer", *args, "-o", str(tmp_path / "o.json")] if args[0] == "train" else ["tokenizer", *args])
    assert code != 0
    assert needle in _error_line(capsys)
    assert not (tmp_path / "o.json").exists()


def test_real_process_prints_no_traceback(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xff\xfe")
    proc = subprocess.run([sys.executable, "-m", "lmforge", "tokenizer", "train", str(bad), "-o", str(tmp_path / "t.json")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert proc.stderr.strip() == f"error: {bad} is not valid UTF-8 (bad byte 0xff at byte offset 3); re-save the file as UTF-8"
