"""End to end: a tiny model of each family learns to reverse strings through the shared Trainer, then the run
folder is used through Translator, evaluate_translation (BLEU) and `lmforge translate`."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import sacrebleu

from lmforge.config import RunConfig
from lmforge.errors import ConfigError, DataError
from lmforge.inference.translate import Translator
from lmforge.workflows.translate_run import evaluate_translation, train_translation

LETTERS = "abcdefghijklmnop"


def _write(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def _reverse_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    words = ["".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 8))) for _ in range(n)]
    return [(w, w[::-1]) for w in words]


@pytest.fixture
def reverse_files(tmp_path: Path) -> dict[str, str]:
    files = {}
    for split, n, seed in (("train", 4000, 1), ("val", 200, 2), ("test", 200, 3)):
        pairs = _reverse_pairs(n, seed)
        files[f"{split}_src"] = _write(tmp_path / f"{split}.src", [s for s, _ in pairs])
        files[f"{split}_tgt"] = _write(tmp_path / f"{split}.tgt", [t for _, t in pairs])
    return files


def _config(files: dict[str, str], out: Path, model: dict, steps: int, lr: float) -> RunConfig:
    return RunConfig.parse({
        "task": "translate", "model": model, "tokenizer": {"kind": "char"}, "out_dir": str(out),
        "data": {"src": files["train_src"], "tgt": files["train_tgt"], "val_src": files["val_src"],
                 "val_tgt": files["val_tgt"], "max_tokens": 512},
        "train": {"max_steps": steps, "lr": lr, "warmup_steps": 30, "weight_decay": 0.0, "eval_interval": 1000,
                  "device": "cpu", "seed": 0},
    })


def _exact(run: Path, files: dict[str, str], beam: int) -> float:
    src = Path(files["test_src"]).read_text(encoding="utf-8").split("\n")[:-1]
    ref = Path(files["test_tgt"]).read_text(encoding="utf-8").split("\n")[:-1]
    hyps = Translator.load(run, device="cpu").translate(src, beam=beam)
    return sum(h == r for h, r in zip(hyps, ref)) / len(ref)


@pytest.mark.slow
def test_transformer_learns_to_reverse_and_the_run_folder_works(reverse_files, tmp_path, capsys) -> None:
    model = {"family": "seq2seq_transformer", "d_model": 64, "num_heads": 4, "num_encoder_layers": 2,
             "num_decoder_layers": 2, "d_ff": 128, "dropout": 0.0}
    run = tmp_path / "run"
    summary = train_translation(_config(reverse_files, run, model, steps=300, lr=6e-3))
    # one "word" per sentence makes BLEU's 4-grams empty, so the character-level chrF is the quality figure here
    assert summary["val_chrf"] > 90 and summary["val_loss"] < 0.2
    assert {"config.yaml", "tokenizer.json", "model.safetensors", "trainer_state.pt", "summary.json"} <= {
        p.name for p in run.iterdir()}
    assert _exact(run, reverse_files, beam=1) >= 0.9
    assert _exact(run, reverse_files, beam=4) >= 0.9

    figs = evaluate_translation(run, reverse_files["test_src"], reverse_files["test_tgt"], beam=3)
    hyps = Path(figs["hypotheses_file"]).read_text(encoding="utf-8").split("\n")[:-1]
    refs = Path(reverse_files["test_tgt"]).read_text(encoding="utf-8").split("\n")[:-1]
    assert figs["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert figs["chrf"] > 90 and figs["sentences"] == 200 and figs["bleu_signature"].startswith("nrefs:1")
    assert Path(figs["scores_file"]).is_file()

    from lmforge.cli.main import main

    inp = _write(tmp_path / "in.txt", ["abcdef", "", "ponm"])
    out = tmp_path / "out.txt"
    assert main(["translate", str(run), "--input", inp, "--output", str(out), "--beam", "2", "--device", "cpu"]) == 0
    lines = out.read_text(encoding="utf-8").split("\n")
    assert len(lines) == 4 and lines[1] == "" and lines[3] == ""
    assert lines[0] == "fedcba" and lines[2] == "mnop"
    assert main(["translate", str(run / "missing")]) != 0
    assert "error:" in capsys.readouterr().err


@pytest.mark.slow
def test_lstm_with_attention_learns_to_reverse(reverse_files, tmp_path) -> None:
    model = {"family": "seq2seq_lstm", "emb_dim": 32, "hidden_dim": 64, "num_layers": 1, "dropout": 0.0,
             "attention": "general", "bidirectional_encoder": True}
    run = tmp_path / "run"
    summary = train_translation(_config(reverse_files, run, model, steps=250, lr=1e-2))
    assert summary["val_chrf"] > 90
    assert _exact(run, reverse_files, beam=1) >= 0.9
    assert _exact(run, reverse_files, beam=3) >= 0.9


def test_separate_vocabularies_and_input_errors(tmp_path) -> None:
    src = _write(tmp_path / "s.txt", ["abc", "abd", "bcd", "cde"] * 5)
    tgt = _write(tmp_path / "t.txt", ["xyz", "xyw", "yzw", "zwv"] * 5)
    cfg = RunConfig.parse({
        "task": "translate", "out_dir": str(tmp_path / "run"), "tokenizer": {"kind": "char"},
        "model": {"family": "seq2seq_lstm", "emb_dim": 8, "hidden_dim": 16, "num_layers": 1, "dropout": 0.0},
        "data": {"src": src, "tgt": tgt, "joint_vocab": False, "val_fraction": 0.2},
        "train": {"max_steps": 2, "eval_interval": 100, "device": "cpu"},
    })
    summary = train_translation(cfg)
    assert summary["steps"] == 2
    assert {"src_tokenizer.json", "tgt_tokenizer.json"} <= {p.name for p in (tmp_path / "run").iterdir()}
    tr = Translator.load(tmp_path / "run", device="cpu")
    assert tr.src_tokenizer is not tr.tgt_tokenizer
    assert set("".join(tr.translate(["abc", "bcd"], beam=2))) <= set("xyzwv")
    bad = _write(tmp_path / "short.txt", ["xyz"])
    with pytest.raises(DataError, match="has 20 lines but target file"):
        train_translation(cfg.with_overrides({"data.tgt": bad}))
    with pytest.raises(ConfigError, match="--src"):
        train_translation(cfg.with_overrides({"data.src": None}))


def test_a_user_config_without_a_tokenizer_kind_still_gets_bpe(tmp_path) -> None:
    from lmforge.tokenizers import BPETokenizer
    from lmforge.workflows.translate_run import prepare_translation_run

    pairs = _reverse_pairs(60, 5)
    cfg = RunConfig.parse({"task": "translate", "out_dir": str(tmp_path / "run"), "tokenizer": {"vocab_size": 300},
                           "model": {"family": "seq2seq_lstm", "emb_dim": 16, "hidden_dim": 16, "num_layers": 1},
                           "data": {"src": _write(tmp_path / "s.txt", [s for s, _ in pairs]),
                                    "tgt": _write(tmp_path / "t.txt", [t for _, t in pairs])}})
    assert cfg.tokenizer.kind != "bpe"  # the general default (char) ...
    run = prepare_translation_run(cfg)
    assert run.config.tokenizer.kind == "bpe" and isinstance(run.src_tokenizer, BPETokenizer)  # ... not for translation


def test_cli_train_translate_then_eval(tmp_path, capsys) -> None:
    from lmforge.cli.main import main

    pairs = _reverse_pairs(60, 4)
    src = _write(tmp_path / "s.txt", [s for s, _ in pairs])
    tgt = _write(tmp_path / "t.txt", [t for _, t in pairs])
    run = tmp_path / "run"
    code = main(["train", "--task", "translate", "--preset", "seq2seq_transformer-tiny", "--src", src, "--tgt", tgt,
                 "--max-steps", "2", "--out", str(run), "--device", "cpu", "--quiet", "data.max_tokens=256",
                 "tokenizer.vocab_size=300"])
    assert code == 0
    assert "run folder:" in capsys.readouterr().out
    assert RunConfig.from_yaml(run / "config.yaml").tokenizer.kind == "bpe"  # the preset's tokenizer
    assert main(["eval", str(run), "--src", src, "--ref", tgt, "--beam", "2", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"bleu"' in out and '"bleu_signature"' in out and (run / "eval" / "s.txt.beam2.hyp").is_file()
    figs = json.loads(out)
    assert main(["eval", str(run), "--src", src, "--ref", tgt, "--beam", "2"]) == 0  # the text table
    table = capsys.readouterr().out
    hyps = (run / "eval" / "s.txt.beam2.hyp").read_text(encoding="utf-8").split("\n")[:-1]
    refs = [t for _, t in pairs]
    bleu, chrf = sacrebleu.BLEU(), sacrebleu.CHRF()  # the reference library's own signatures for these settings
    bleu.corpus_score(hyps, [refs])
    chrf.corpus_score(hyps, [refs])
    assert f"BLEU signature     {bleu.get_signature()}" in table
    assert f"chrF signature     {chrf.get_signature()}" in table
    assert f"{figs['bleu']:.2f}" in table and str(bleu.get_signature()).startswith("nrefs:1")
