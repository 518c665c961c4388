"""`lmforge train` and `lmforge eval` from start to finish with a tiny model, and their errors."""

import json
import math

import pytest
import torch

from lmforge.cli.main import main

TINY = ["model.d_model=32", "model.num_layers=1", "model.block_size=32", "model.attention.num_heads=4",
        "train.batch_size=4", "train.eval_interval=3", "train.eval_iters=2", "train.warmup_steps=2",
        "train.sample_tokens=20", "--threads", "1", "--quiet"]


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    yield
    torch.set_num_threads(old)


def _train(capsys, *args):
    code = main(["train", *args, "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    text = out.out
    return json.loads(text[: text.rindex("}") + 1])


def test_train_writes_a_complete_run_folder_then_resumes(tmp_path, tiny_corpus, capsys):
    run = tmp_path / "run"
    summary = _train(capsys, "--data", str(tiny_corpus), "--out", str(run), "--max-steps", "6", *TINY)
    names = {p.name for p in run.iterdir()}
    assert {"config.yaml", "tokenizer.json", "model.safetensors", "trainer_state.pt", "metrics.jsonl",
            "summary.json", "loss.png"} <= names
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [3, 6] and all("val_loss" in r and "train_loss" in r for r in lines)
    saved = json.loads((run / "summary.json").read_text())
    for key in ("val_loss", "val_ppl", "val_bits_per_char", "val_bits_per_byte", "train_tokens_per_s", "parameters", "wall_time"):
        assert saved[key] is not None, key
    assert saved["val_ppl"] == pytest.approx(math.exp(saved["val_loss"]))
    assert summary["steps"] == 6 and isinstance(summary["sample"], str)
    from lmforge.config import RunConfig

    cfg = RunConfig.from_yaml(run / "config.yaml")
    from lmforge.tokenizers import load_tokenizer

    assert cfg.model.vocab_size == load_tokenizer(run / "tokenizer.json").vocab_size
    assert cfg.data.path == str(tiny_corpus) and cfg.train.max_steps == 6 and cfg.train.time_budget is None

    resumed = _train(capsys, "--resume", str(run), "--max-steps", "9", "--quiet")
    assert resumed["steps"] == 9
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [3, 6, 9]


def test_lstm_spelling_and_text_report(tmp_path, tiny_corpus, capsys):
    code = main(["train", "--data", str(tiny_corpus), "--out", str(tmp_path / "l"), "--model-type", "lstm",
                 "--model-size", "tiny", "--max-steps", "3", "--batch-size", "4", "model.block_size=16",
                 "train.sample_tokens=10", "--threads", "1", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert "val loss" in out and "bits/char" in out and f"run folder: {tmp_path / 'l'}" in out
    from lmforge.config import RunConfig

    assert RunConfig.from_yaml(tmp_path / "l" / "config.yaml").model.family == "lstm"


def test_eval_matches_bits_per_char_computed_by_hand(tmp_path, tiny_corpus, capsys):
    run = tmp_path / "run"
    _train(capsys, "--data", str(tiny_corpus), "--out", str(run), "--max-steps", "1", *TINY)
    # make the model uniform: all weights zero -> all logits zero -> every token costs log2(V) bits
    from lmforge.models.run_folder import save_weights
    from lmforge.training.checkpoint import load_run

    loaded = load_run(run)
    with torch.no_grad():
        for p in loaded.model.parameters():
            p.zero_()
    save_weights(loaded.model, run / "model.safetensors")
    text = "To be, or not to be: that is the question.\n"
    (tmp_path / "q.txt").write_text(text, encoding="utf-8")
    assert main(["eval", str(run), "--data", str(tmp_path / "q.txt"), "--json"]) == 0
    figs = json.loads(capsys.readouterr().out)
    V = loaded.tokenizer.vocab_size
    n = len(text)  # char tokenizer, one document: one token per character, n - 1 of them predicted
    assert figs["tokens"] == n - 1
    assert figs["loss"] == pytest.approx(math.log(V))
    assert figs["bits_per_char"] == pytest.approx((n - 1) * math.log2(V) / n)
    assert figs["bits_per_byte"] == pytest.approx((n - 1) * math.log2(V) / len(text.encode()))
    assert main(["eval", str(run)]) == 0  # the run's own validation split, as a table
    assert "bits per char" in capsys.readouterr().out


@pytest.mark.parametrize("argv, needle", [
    (["train", "--data", "/no/such/corpus.txt", "--max-steps", "1"], "/no/such/corpus.txt"),
    (["train", "--preset", "nope"], "unknown preset"),
    (["train", "model.nonsense=3", "--max-steps", "1"], "unknown key"),
    (["train", "--resume", "/no/such/run"], "nothing to resume"),
    (["eval", "/no/such/run"], "does not exist"),
])
def test_bad_input_is_one_line_error(argv, needle, capsys, tmp_path):
    code = main(argv + (["--out", str(tmp_path / "x")] if argv[0] == "train" and "--resume" not in argv else []))
    err = capsys.readouterr().err
    assert code != 0
    assert err.startswith("error: ") and needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_eval_test_split_needs_data(tmp_path, tiny_corpus, capsys):
    run = tmp_path / "run"
    _train(capsys, "--data", str(tiny_corpus), "--out", str(run), "--max-steps", "1", *TINY)
    assert main(["eval", str(run), "--split", "test"]) != 0
    assert "--data" in capsys.readouterr().err
