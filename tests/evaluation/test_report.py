"""Tests of report.json -> report.md and plots (lmforge.evaluation.report), from hand-written figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmforge.cli.main import main
from lmforge.errors import DataError
from lmforge.evaluation.report import METRICS, load_report, render_markdown, summary_paragraph, write_report


def _metrics(**over: float) -> dict:
    base = {
        "params_total": 2_000_000, "params_embedding": 16_640, "params_body": 1_050_000, "params_output": 16_705,
        "train_tokens_per_s": 10_000.0, "train_wall_s": 60.0, "train_tokens": 600_000, "time_to_target_s": 40.0,
        "val_loss": 1.5, "perplexity": 4.4817, "bits_per_char": 2.0, "bits_per_byte": 2.0,
        "latency_b1_ms": 5.0, "latency_b32_ms": 80.0, "gen_tokens_per_s_b1": 300.0, "gen_tokens_per_s_b32": 4000.0,
        "decode_ms_start": 2.0, "decode_ms_end": 2.0, "train_peak_memory_bytes": 600 * 2**20,
        "train_memory_increase_bytes": 200 * 2**20, "infer_peak_memory_bytes": 450 * 2**20,
        "infer_memory_increase_bytes": 20 * 2**20, "disk_bytes": 8 * 2**20,
    }
    base.update(over)
    return base


def _report() -> dict:
    return {
        "title": "lmforge compare: test", "command": "lmforge compare --budget-seconds 20",
        "notes": ["The CPU was shared with other jobs."],
        "machine": {"cpu": "Test CPU", "cores": 2, "usable_cores": 2, "gpu": None, "torch": "2.x"},
        "settings": {"budget_description": "30 s of training", "tokenizer": "char", "decode_length": 64},
        "target_loss": 1.6,
        "models": {
            "lstm-a": {"family": "lstm", "description": "an LSTM", "metrics": _metrics(),
                       "curves": {"val": [{"step": 10, "tokens": 1000, "time_s": 1.0, "loss": 3.0},
                                          {"step": 20, "tokens": 2000, "time_s": 2.0, "loss": 1.5}],
                                  "decode_ms_per_token": [2.0] * 64},
                       "samples": [{"prompt": "ROMEO:", "completion": " hello"}]},
            "tfm-b": {"family": "transformer", "description": "a Transformer",
                      "metrics": _metrics(bits_per_char=1.5, train_tokens_per_s=5_000.0, decode_ms_start=1.0,
                                          decode_ms_end=3.0, latency_b32_ms={"unavailable": "out of memory at batch 32"}),
                      "curves": {"val": [{"step": 10, "tokens": 1000, "time_s": 1.5, "loss": 2.5},
                                         {"step": 20, "tokens": 2000, "time_s": 3.0, "loss": 1.2}],
                                 "decode_ms_per_token": [1.0 + i / 32 for i in range(64)]},
                      "samples": [{"prompt": "ROMEO:", "completion": " there"}]},
        },
    }


def _table_rows(md: str) -> list[list[str]]:
    lines = [l for l in md.splitlines() if l.startswith("| ")]
    return [[c.strip() for c in l.strip("|").split(" | ")] for l in lines]


def test_table_has_every_metric_for_every_model_and_no_empty_cell() -> None:
    md = render_markdown(_report())
    rows = _table_rows(md)
    assert rows[0] == ["Metric", "lstm-a", "tfm-b"]
    body = rows[1:]
    assert len(body) == len(METRICS)
    for row in body:
        assert len(row) == 3
        assert all(cell and "TBD" not in cell for cell in row)
    cells = {row[0]: row[1:] for row in body}
    assert cells["Bits per character (validation)"] == ["2.0000", "1.5000"]
    assert cells["Parameters, total"] == ["2,000,000", "2,000,000"]
    assert cells["Peak memory, training"] == ["600.0 MiB", "600.0 MiB"]
    assert cells["Forward latency, batch 32 (ms)"] == ["80.0", "n/a: out of memory at batch 32"]
    assert "Time to reach the shared target loss (1.6000)" in cells


def test_a_metric_missing_from_the_json_says_so() -> None:
    report = _report()
    del report["models"]["lstm-a"]["metrics"]["disk_bytes"]
    report["models"]["lstm-a"]["metrics"]["val_loss"] = float("nan")
    cells = {row[0]: row[1:] for row in _table_rows(render_markdown(report))}
    assert cells["Size on disk (model.safetensors)"][0].startswith("n/a: not recorded")
    assert cells["Validation loss (nats/token)"][0] == "n/a: the measurement gave nan"


def test_summary_paragraph_names_winners_and_margins() -> None:
    text = summary_paragraph(_report())
    # bits per char: 1.5 against 2.0 -> 25% lower; throughput 10000 against 5000 -> 2.00x.
    assert "tfm-b led on bits per character: 1.5000 against 2.0000 for lstm-a (25% lower)" in text
    assert "lstm-a led on training throughput: 10,000 against 5,000 for tfm-b (2.00x as much)" in text
    assert "3.0x for tfm-b" in text and "1.0x for lstm-a" in text  # time-per-token growth
    assert "Test CPU (2 cores)" in text and "30 s of training" in text
    assert "level on time to the shared target loss (40.0 s)" in text
    # A figure only one model has is not a contest.
    assert "forward latency at batch 32" not in text


def test_write_report_writes_markdown_json_and_pngs(tmp_path: Path) -> None:
    paths = write_report(_report(), tmp_path)
    assert json.loads((tmp_path / "report.json").read_text()) == _report()
    names = sorted(p.name for p in paths["plots"])
    assert names == ["decode_time.png", "loss_vs_time.png", "loss_vs_tokens.png", "memory.png"]
    for p in paths["plots"]:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "report.md").read_text()
    assert "![memory](memory.png)" in md and "ROMEO: there" in md and "The CPU was shared" in md


def test_cli_renders_from_a_saved_report_without_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "run"
    src.mkdir()
    (src / "report.json").write_text(json.dumps(_report()))
    import lmforge.evaluation.report as report_mod

    # Training would go through lmforge.workflows.compare; make any use of it fail loudly.
    monkeypatch.setitem(__import__("sys").modules, "lmforge.workflows.compare", None)
    assert main(["compare", "--from", str(src / "report.json")]) == 0
    md = (src / "report.md").read_text()
    assert md == report_mod.render_markdown(_report(), ["loss_vs_time.png", "loss_vs_tokens.png", "decode_time.png", "memory.png"])
    out = tmp_path / "elsewhere"
    assert main(["compare", "--from", str(src), "--out", str(out)]) == 0
    assert (out / "report.md").read_text() == md and (out / "report.json").exists()
    # --note annotates a finished report: the note lands in both the JSON and the Markdown.
    assert main(["compare", "--from", str(src / "report.json"), "--note", "Looked at later."]) == 0
    assert json.loads((src / "report.json").read_text())["notes"][-1] == "Looked at later."
    assert "- Looked at later." in (src / "report.md").read_text()


def test_load_report_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_report(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_report(bad)
    bad.write_text(json.dumps({"models": {}}))
    with pytest.raises(DataError, match="no 'models'"):
        load_report(bad)
    assert main(["compare", "--from", str(bad)]) == 2
    assert capsys.readouterr().err.startswith("error: report")
