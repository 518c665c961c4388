"""Tests of ``lmforge compare`` (lmforge.workflows.compare and the CLI): model resolution, the shared target,
and the whole command end to end on the bundled corpus with tiny presets."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lmforge.cli.main import main
from lmforge.errors import ConfigError
from lmforge.workflows.compare import resolve_models, shared_target
from lmforge.workflows.compare import _time_to as time_to
from lmforge.evaluation.report import METRICS


# ---------------------------------------------------------------------------------------------- fast checks
def test_aliases_and_default_pair() -> None:
    names = [n for n, _, _ in resolve_models(["lstm", "transformer"])]
    assert names == ["lstm-classic", "transformer-classic"]
    families = [c.model.family for _, _, c in resolve_models(["lstm-classic", "transformer-classic"])]
    assert families == ["lstm", "transformer"]


def test_config_files_are_models(tmp_path: Path) -> None:
    bare = tmp_path / "my-lstm.yaml"
    bare.write_text("family: lstm\nembedding_dim: 32\nhidden_dim: 32\nnum_layers: 1\n")
    full = tmp_path / "run.json"
    full.write_text(json.dumps({"model": {"family": "transformer", "d_model": 32, "num_layers": 1,
                                          "attention": {"num_heads": 2}, "block_size": 64}}))
    (n1, _, c1), (n2, _, c2) = resolve_models([str(bare), str(full)])
    assert (n1, c1.model.family, c1.model.hidden_dim) == ("my-lstm", "lstm", 32)
    assert (n2, c2.model.family, c2.model.d_model) == ("run", "transformer", 32)


@pytest.mark.parametrize("models, message", [
    (["lstm", "gpt-9000"], "unknown model 'gpt-9000'; pass a preset"),
    (["lstm", "lstm-classic"], "listed twice"),
    (["seq2seq_lstm-tiny"], "translation model"),
])
def test_bad_model_lists(models: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_models(models)


def test_cli_reports_bad_models_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["compare", "--models", "lstm,nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown model 'nope'") and "lstm-classic" in err and "Traceback" not in err


def test_shared_target_is_the_lowest_loss_every_model_reached() -> None:
    curves = {"a": [{"loss": 3.0, "time_s": 1.0}, {"loss": 2.0, "time_s": 2.0}, {"loss": 1.8, "time_s": 3.0}],
              "b": [{"loss": 2.5, "time_s": 4.0}, {"loss": 2.1, "time_s": 8.0}, {"loss": 2.2, "time_s": 12.0}]}
    target = shared_target(curves)
    assert target == 2.1  # b never got below 2.1; a got to 1.8
    assert time_to(curves["a"], target)["time_s"] == 2.0  # a's first point at or below 2.1
    assert time_to(curves["b"], target)["time_s"] == 8.0
    assert shared_target({"a": []}) is None


def test_time_to_target_takes_the_first_crossing() -> None:
    pts = [{"loss": 3.0, "time_s": 1.0}, {"loss": 2.0, "time_s": 2.0}, {"loss": 1.8, "time_s": 3.0}]
    assert time_to(pts, 2.1)["time_s"] == 2.0
    assert time_to(pts, 1.0) is None


# ------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_compare_end_to_end_on_the_bundled_corpus(tmp_path: Path) -> None:
    import torch

    from lmforge.data import read_documents, split_documents
    from lmforge.evaluation.perplexity import evaluate_lm
    from lmforge.tokenizers import load_tokenizer
    from lmforge.training.checkpoint import load_run

    out = tmp_path / "cmp"
    eval_tokens = 2000
    code = main(["compare", "--budget-seconds", "20", "--models", "lstm-tiny,transformer-tiny", "--out", str(out),
                 "--eval-tokens", str(eval_tokens), "--evals", "3", "--repeats", "2", "--decode-length", "24",
                 "--sample-tokens", "20", "--threads", "1", "--note", "test run"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report["models"]) == ["lstm-tiny", "transformer-tiny"]
    assert report["machine"]["torch"] == torch.__version__ and report["machine"]["cpu"]
    assert "--budget-seconds 20" in report["command"]

    tok = load_tokenizer(out / "tokenizer.json")
    _, val_docs = split_documents(read_documents(None), 0.1)
    val_ids = tok.encode(val_docs[0])[: eval_tokens + 1]
    text = tok.decode(val_ids)
    for name, entry in report["models"].items():
        m = entry["metrics"]
        for metric in METRICS:  # every figure was measured on this CPU: no "unavailable" cells
            assert isinstance(m[metric.key], (int, float)) and math.isfinite(m[metric.key]), (name, metric.key)
        run = load_run(out / "runs" / name)
        assert m["params_embedding"] + m["params_body"] + m["params_output"] == m["params_total"]
        assert m["params_total"] == sum(p.numel() for p in run.model.parameters())
        # The budget: 10 s of training each (the last step may overrun), every step a full 32 x 128 batch.
        assert m["train_wall_s"] >= 10.0
        assert m["train_tokens"] == entry["steps"] * 32 * 128
        # The figures belong to the saved weights: re-score the same validation prefix independently.
        again = evaluate_lm(run.model, torch.tensor(val_ids).numpy(), None, 128, 32)
        assert m["val_loss"] == pytest.approx(again["loss"], rel=1e-4)
        # Bits per character from the real text length, not bits per token.
        assert m["bits_per_char"] == pytest.approx(m["val_loss"] * eval_tokens / (len(text) * math.log(2)), rel=1e-4)
        assert m["bits_per_byte"] == pytest.approx(m["bits_per_char"] * len(text) / len(text.encode()), rel=1e-6)
        assert m["perplexity"] == pytest.approx(math.exp(m["val_loss"]), rel=1e-6)
        assert m["time_to_target_s"] <= m["train_wall_s"]
        assert m["disk_bytes"] == (out / "runs" / name / "model.safetensors").stat().st_size
        assert len(entry["curves"]["decode_ms_per_token"]) == 24
        assert [s["prompt"] for s in entry["samples"]] == ["ROMEO:", "First Citizen:\n"]
        assert all(s["completion"] for s in entry["samples"])
        assert entry["curves"]["val"]
    target = report["target_loss"]
    assert target == max(min(p["loss"] for p in e["curves"]["val"]) for e in report["models"].values())

    md = (out / "report.md").read_text()
    assert "| Metric | lstm-tiny | transformer-tiny |" in md and "TBD" not in md and "n/a" not in md
    assert "test run" in md
    for png in ("loss_vs_time.png", "loss_vs_tokens.png", "decode_time.png", "memory.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"

    # Re-rendering from the JSON gives the same Markdown without training again.
    first = md
    (out / "report.md").unlink()
    assert main(["compare", "--from", str(out / "report.json")]) == 0
    assert (out / "report.md").read_text() == first


@pytest.mark.slow
def test_token_budget_in_one_process(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    code = main(["compare", "--budget-tokens", "4096", "--models", "lstm-tiny", "--out", str(out), "--no-isolate",
                 "--batch-size", "8", "--block-size", "64", "--eval-tokens", "500", "--evals", "2", "--repeats", "1",
                 "--decode-length", "8", "--sample-tokens", "5", "--threads", "1"])
    assert code == 0
    entry = json.loads((out / "report.json").read_text())["models"]["lstm-tiny"]
    assert entry["steps"] == 8  # ceil(4096 / (8 x 64))
    assert entry["metrics"]["train_tokens"] == 4096
    assert [p["step"] for p in entry["curves"]["val"]] == [4, 8]
