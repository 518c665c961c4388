"""Run folders saved before issue 13's reorganisation (commit 218643d; tests/fixtures/old_runs/README.md) still
load through the public loaders and compute what they computed when they were written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmforge import api
from lmforge.inference.generation import generate_ids

OLD = Path(__file__).resolve().parent / "fixtures" / "old_runs"


def _expected(name: str) -> tuple[dict, dict]:
    folder = OLD / name
    recorded = json.loads((folder / "expected.json").read_text()) if (folder / "expected.json").is_file() else {}
    return load_file(str(folder / "expected.safetensors")), recorded


@pytest.mark.parametrize("name", ["lm_transformer", "lm_lstm", "chat_finetuned"])
def test_old_language_model_runs_load_and_generate(name: str) -> None:
    tensors, recorded = _expected(name)
    lm = api.load(OLD / name, device="cpu")
    assert isinstance(lm, api.LM)
    with torch.no_grad():
        logits = lm.model(tensors["input"])[0]
    torch.testing.assert_close(logits, tensors["logits"], rtol=1e-5, atol=1e-5)
    prompt = lm.tokenizer.encode(recorded["prompt"])
    assert generate_ids(lm.model, prompt, max_new_tokens=8, temperature=0.0) == recorded["greedy_ids"]
    text = lm.generate(recorded["prompt"], max_new_tokens=4, temperature=0.0)
    assert isinstance(text, str)
    if name == "chat_finetuned":
        assert lm.chat_template == "tokens"


@pytest.mark.parametrize("name", ["translate_transformer", "translate_lstm"])
def test_old_translation_runs_load_and_translate(name: str) -> None:
    tensors, recorded = _expected(name)
    translator = api.load(OLD / name, device="cpu")
    assert translator.translate(recorded["sources"], beam=1) == recorded["greedy"]
    model = translator.model if hasattr(translator, "model") else translator.run.model
    with torch.no_grad():
        out = model(tensors["src"], tensors["tgt"])
    out = out[0] if isinstance(out, tuple) else out
    torch.testing.assert_close(out, tensors["logits"], rtol=1e-5, atol=1e-5)


def test_old_model_folder_loads() -> None:
    from lmforge.models.run_folder import load_model

    tensors, _ = _expected("model_folder_lstm")
    model = load_model(OLD / "model_folder_lstm")
    with torch.no_grad():
        logits = model(tensors["input"])[0]
    torch.testing.assert_close(logits, tensors["logits"], rtol=1e-5, atol=1e-5)


def test_the_one_loader_reads_a_model_folder_too() -> None:
    """load_run (and so api.load) reads a save_model folder (config.json) as well as a run folder."""
    from lmforge.models.run_folder import load_run

    tensors, _ = _expected("model_folder_lstm")
    run = load_run(OLD / "model_folder_lstm")
    assert run.config.task == "lm" and run.config.model.family == "lstm" and run.tokenizer is not None
    with torch.no_grad():
        torch.testing.assert_close(run.model(tensors["input"])[0], tensors["logits"], rtol=1e-5, atol=1e-5)
    assert isinstance(api.load(OLD / "model_folder_lstm", device="cpu").generate("the", max_new_tokens=3), str)


def _pairs(tmp_path: Path) -> tuple[Path, Path]:
    """The pairs the translation fixtures were trained on (make_fixtures.py)."""
    import random

    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 6))) for _ in range(200)]
    (tmp_path / "s.txt").write_text("".join(w + "\n" for w in words))
    (tmp_path / "t.txt").write_text("".join(w[::-1] + "\n" for w in words))
    return tmp_path / "s.txt", tmp_path / "t.txt"


def test_resuming_old_runs(tmp_path: Path, capsys) -> None:
    """An old seq2seq LSTM run resumes; the old seq2seq Transformer's optimizer state cannot (its Q/K/V are one
    matrix now), which is said in one line with the fix, and that fix (``--init-from``) trains on its weights."""
    import shutil

    from lmforge.cli.main import main

    src, tgt = _pairs(tmp_path)
    data = [f"data.src={src}", f"data.tgt={tgt}"]
    for name in ("translate_lstm", "translate_transformer"):
        shutil.copytree(OLD / name, tmp_path / name)
    assert main(["train", "--resume", str(tmp_path / "translate_lstm"), *data, "train.max_steps=4", "--quiet"]) == 0
    assert json.loads((tmp_path / "translate_lstm" / "summary.json").read_text())["steps"] == 4
    before = (tmp_path / "translate_transformer" / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "translate_transformer"), *data, "train.max_steps=4", "--quiet"]) != 0
    err = capsys.readouterr().err
    assert "older lmforge" in err and "--init-from" in err and "Traceback" not in err
    assert (tmp_path / "translate_transformer" / "model.safetensors").read_bytes() == before  # nothing lost
    out = tmp_path / "continued"
    assert main(["train", "--task", "translate", "--init-from", str(tmp_path / "translate_transformer"), "--src", str(src),
                 "--tgt", str(tgt), "--max-steps", "1", "--out", str(out), "--quiet"]) == 0
    old = api.load(OLD / "translate_transformer", device="cpu").model.state_dict()
    new = api.load(out, device="cpu").model.state_dict()
    assert set(old) == set(new)
    assert max((old[k] - new[k]).abs().max().item() for k in old) < 0.05  # one small step from the old weights
