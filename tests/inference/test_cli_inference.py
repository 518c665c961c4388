"""The generate, chat, finetune, embed and search commands on a tiny run folder."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from lmforge.api import LM, load
from lmforge.cli.main import main
from lmforge.config import RunConfig
from lmforge.models import build_model
from lmforge.tokenizers import train_tokenizer
from lmforge.training.checkpoint import save_run

TEXT = "abcdefghijklmnopqrstuvwxyz ?!.,:\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    tok = train_tokenizer("char", [TEXT])
    cfg = RunConfig.parse({"model": {"family": "transformer", "vocab_size": tok.vocab_size, "d_model": 32,
                                     "num_layers": 1, "block_size": 48, "attention": {"num_heads": 2}},
                           "train": {"batch_size": 4}, "out_dir": str(tmp / "run")})
    torch.manual_seed(0)
    model = build_model(cfg.model)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.5)
    save_run(tmp / "run", cfg, model, tok)
    return tmp / "run"


def test_generate_matches_the_facade(run_dir, capsys):
    assert main(["generate", str(run_dir), "--prompt", "ab", "--temperature", "0", "--max-new-tokens", "12"]) == 0
    streamed = capsys.readouterr().out
    lm = LM.load(run_dir, device="cpu")
    expected = lm.generate("ab", temperature=0, max_new_tokens=12)
    assert streamed == "ab" + expected + "\n"
    assert main(["generate", str(run_dir), "--prompt", "ab", "--num-samples", "2", "--seed", "3", "--json",
                 "--max-new-tokens", "6"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out) == 2 and all(o["completion_tokens"] <= 6 for o in out)
    assert isinstance(load(run_dir, device="cpu"), LM)


def test_generate_compile_gives_the_eager_text(run_dir, capsys):
    args = ["generate", str(run_dir), "--prompt", "ab", "--temperature", "0", "--max-new-tokens", "12"]
    assert main(args) == 0
    eager = capsys.readouterr()
    assert main(args + ["--compile"]) == 0
    compiled = capsys.readouterr()
    assert compiled.out == eager.out and "note:" not in compiled.err


def test_compile_note_for_engines_that_cannot_use_it(capsys):
    from argparse import Namespace
    from types import SimpleNamespace

    from lmforge.cli.generate import apply_compile

    apply_compile(SimpleNamespace(translate=lambda s: s), Namespace(compile=True))  # a translator: no such method
    assert "note: --compile applies to" in capsys.readouterr().err
    apply_compile(SimpleNamespace(compile_decoding=lambda: False), Namespace(compile=True))  # an LSTM, a GPU
    assert "note: --compile applies to" in capsys.readouterr().err
    apply_compile(SimpleNamespace(), Namespace(compile=False))
    assert capsys.readouterr().err == ""


def test_chat_reads_one_message_per_line_when_not_a_terminal(run_dir, capsys, monkeypatch, tmp_path):
    save = tmp_path / "c.json"
    monkeypatch.setattr("sys.stdin", io.StringIO(f"hi there\n/save {save}\nhow are you\n"))
    assert main(["chat", str(run_dir), "--temperature", "0", "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and out[1].startswith("(saved")
    saved = json.loads(save.read_text())
    assert [m["role"] for m in saved["messages"]] == ["user", "assistant"]
    assert saved["template"] == "plain"  # a raw-text run chats in the plain User:/Assistant: format


def test_embed_and_search_commands(run_dir, tmp_path, capsys):
    docs = tmp_path / "docs.txt"
    docs.write_text("the cat sat\nstocks fell today\na dog ran\n")
    vec_path = tmp_path / "v.npy"
    assert main(["embed", str(run_dir), "--input", str(docs), "--output", str(vec_path), "--device", "cpu"]) == 0
    vecs = np.load(vec_path)
    lm = LM.load(run_dir, device="cpu")
    np.testing.assert_allclose(vecs, lm.embed(["the cat sat", "stocks fell today", "a dog ran"]), atol=1e-6)
    capsys.readouterr()
    args = ["search", str(run_dir), "--docs", str(docs), "--query", "stocks fell today", "--top-k", "2", "--json"]
    assert main(args) == 0
    first = capsys.readouterr()
    assert "index built" in first.err
    hits = json.loads(first.out)[0]["hits"]
    assert len(hits) == 2 and hits[0]["text"] == "stocks fell today" and hits[0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert main(args) == 0
    assert "index reused" in capsys.readouterr().err
    docs.write_text("the cat sat\nstocks rose\n")
    assert main(args) == 0
    assert "index built" in capsys.readouterr().err  # the documents changed


def test_finetune_command_writes_a_chat_run(run_dir, tmp_path, capsys):
    data = tmp_path / "conv.jsonl"
    conv = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    data.write_text("\n".join(json.dumps(conv) for _ in range(8)))
    out = tmp_path / "chat"
    assert main(["finetune", str(run_dir), "--data", str(data), "--out", str(out), "--max-steps", "3",
                 "--device", "cpu", "--quiet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 3 and summary["chat_template"] == "tokens"
    assert LM.load(out, device="cpu").chat_template == "tokens"


def test_user_errors_are_one_line(tmp_path, capsys):
    assert main(["generate", str(tmp_path / "nope"), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err
    assert main(["finetune", str(tmp_path / "nope"), "--data", "x.jsonl", "--out", str(tmp_path / "o")]) == 2
    assert main(["embed", str(tmp_path)]) == 2
