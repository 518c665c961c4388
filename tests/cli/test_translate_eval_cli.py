"""Scoring translation runs from the command line: TER beside BLEU and chrF (checked against sacreBLEU), the
paired bootstrap of `lmforge eval --compare` (checked against calling sacreBLEU's PairedTest directly on the same
hypotheses), and bad input: misaligned files, empty line pairs, a language-model run where a translation run is
needed. Runs are tiny untrained models saved as run folders (their output is deterministic, not good)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sacrebleu
import torch
from sacrebleu.significance import PairedTest

from lmforge.cli.main import main
from lmforge.config import RunConfig
from lmforge.models import build_model
from lmforge.tokenizers import train_tokenizer
from lmforge.training.checkpoint import save_run

LETTERS = "abcdefgh xyz"
SOURCES = ["abc", "bad cab", "head", "face bed", "ace", "cafe", "dab be", "hag", "egg", "bag"] * 3
REFS = ["cba", "bac dab", "daeh", "deb ecaf", "eca", "efac", "eb bad", "gah", "gge", "gab"] * 3


def _write(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def _run(root: Path, name: str, model: dict, seed: int) -> Path:
    tok = train_tokenizer("char", [LETTERS])
    cfg = RunConfig.parse({"task": "translate", "out_dir": str(root / name), "tokenizer": {"kind": "char"},
                           "model": {**model, "src_vocab_size": tok.vocab_size, "tgt_vocab_size": tok.vocab_size,
                                     "max_len": 32}})
    torch.manual_seed(seed)
    net = build_model(cfg.model)
    with torch.no_grad():  # large random weights: varied, deterministic output
        for p in net.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.6)
    return save_run(root / name, cfg, net, tok)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("runs")
    tfm = {"family": "seq2seq_transformer", "d_model": 16, "num_heads": 2, "num_encoder_layers": 1,
           "num_decoder_layers": 1, "d_ff": 32, "dropout": 0.0}
    lstm = {"family": "seq2seq_lstm", "emb_dim": 8, "hidden_dim": 16, "num_layers": 1, "dropout": 0.0,
            "attention": "dot"}
    return {"src": _write(root / "test.src", SOURCES), "ref": _write(root / "test.ref", REFS),
            "a": str(_run(root, "a", tfm, 1)), "b": str(_run(root, "b", lstm, 2)), "root": str(root)}


def _hyps(run: str, src: str, beam: int) -> list[str]:
    return (Path(run) / "eval" / f"{Path(src).name}.beam{beam}.hyp").read_text(encoding="utf-8").split("\n")[:-1]


def test_eval_reports_ter_as_sacrebleu_computes_it(runs, capsys) -> None:
    assert main(["eval", runs["a"], "--src", runs["src"], "--ref", runs["ref"], "--beam", "2", "--json"]) == 0
    figs = json.loads(capsys.readouterr().out)
    hyps = _hyps(runs["a"], runs["src"], 2)
    assert len(hyps) == len(REFS)
    ter = sacrebleu.metrics.TER()
    assert figs["ter"] == pytest.approx(ter.corpus_score(hyps, [REFS]).score, abs=1e-9)
    assert figs["ter_signature"] == str(ter.get_signature())
    assert figs["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [REFS]).score, abs=1e-9)
    assert main(["eval", runs["a"], "--src", runs["src"], "--ref", runs["ref"], "--beam", "2"]) == 0
    table = capsys.readouterr().out
    assert f"TER                {figs['ter']:.2f}" in table and "TER signature" in table


def test_compare_is_sacrebleus_paired_bootstrap(runs, capsys) -> None:
    argv = ["eval", runs["a"], "--src", runs["src"], "--ref", runs["ref"], "--beam", "1", "--compare", runs["b"],
            "--bootstrap-samples", "200"]
    assert main([*argv, "--json"]) == 0
    figs = json.loads(capsys.readouterr().out)
    ha, hb = _hyps(runs["a"], runs["src"], 1), _hyps(runs["b"], runs["src"], 1)
    assert ha != hb  # two different systems
    metrics = {"BLEU": sacrebleu.metrics.BLEU(), "chrF": sacrebleu.metrics.CHRF(), "TER": sacrebleu.metrics.TER()}
    _, direct = PairedTest([("a", ha), ("b", hb)], metrics, references=[REFS], test_type="bs", n_samples=200)()
    for key, shown in (("bleu", "BLEU"), ("chrf", "chrF2"), ("ter", "TER")):
        for row, res in zip(figs["systems"], direct[shown]):
            assert row[key]["score"] == pytest.approx(res.score, abs=1e-9)
            assert row[key]["mean"] == pytest.approx(res.mean, abs=1e-6)
            assert row[key]["ci"] == pytest.approx(res.ci, abs=1e-6)
        assert figs["systems"][0][key]["p_value"] is None
        assert figs["systems"][1][key]["p_value"] == pytest.approx(direct[shown][1].p_value)
    assert "bs:200" in figs["signatures"]["bleu"] and figs["n_samples"] == 200
    assert main(argv) == 0
    out = capsys.readouterr().out
    b = figs["systems"][1]["bleu"]
    assert f"{b['score']:.2f} ({b['mean']:.2f} ± {b['ci']:.2f}) p={b['p_value']:.4f}" in out and "baseline:" in out


def test_misaligned_files_name_both_counts(runs, tmp_path, capsys) -> None:
    short = _write(tmp_path / "short.ref", REFS[:7])
    assert main(["eval", runs["a"], "--src", runs["src"], "--ref", short]) != 0
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "has 30 lines" in err and "has 7" in err
    assert main(["train", "--task", "translate", "--src", runs["src"], "--tgt", short, "--max-steps", "1",
                 "--out", str(tmp_path / "r"), "--quiet"]) != 0
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "has 30 lines" in err and "has 7" in err


def test_empty_line_pairs_are_skipped_and_counted(runs, tmp_path, capsys, caplog) -> None:
    src = _write(tmp_path / "e.src", SOURCES[:5] + ["", "abc", ""] + SOURCES[5:8])
    ref = _write(tmp_path / "e.ref", REFS[:5] + ["", "", "cba"] + REFS[5:8])
    assert main(["eval", runs["a"], "--src", src, "--ref", ref, "--beam", "1", "--json"]) == 0
    figs = json.loads(capsys.readouterr().out)
    assert figs["skipped_empty_pairs"] == 3 and figs["sentences"] == 8
    hyps = (Path(figs["hypotheses_file"])).read_text(encoding="utf-8").split("\n")[:-1]
    assert figs["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [REFS[:5] + REFS[5:8]]).score)
    from lmforge.workflows.translate_run import prepare_translation_run

    cfg = RunConfig.parse({"task": "translate", "out_dir": str(tmp_path / "t"), "tokenizer": {"kind": "char"},
                           "model": {"family": "seq2seq_lstm", "emb_dim": 8, "hidden_dim": 8, "num_layers": 1},
                           "data": {"src": src, "tgt": ref, "val_src": src, "val_tgt": ref}})
    with caplog.at_level("WARNING"):
        run = prepare_translation_run(cfg)
    assert len(run.task.train_src) == 8 and len(run.val_pairs) == 8
    assert "skipped 3 empty line pair(s) of 11" in caplog.text


def test_a_language_model_run_is_refused_in_one_line(runs, tmp_path, capsys) -> None:
    tok = train_tokenizer("char", [LETTERS])
    cfg = RunConfig.parse({"model": {"family": "transformer", "vocab_size": tok.vocab_size, "d_model": 16,
                                     "num_layers": 1, "block_size": 16, "attention": {"num_heads": 2}},
                           "out_dir": str(tmp_path / "lm")})
    lm = save_run(tmp_path / "lm", cfg, build_model(cfg.model), tok)
    for argv in (["translate", str(lm), "--input", runs["src"]],
                 ["eval", str(lm), "--src", runs["src"], "--ref", runs["ref"]],
                 ["eval", runs["a"], "--src", runs["src"], "--ref", runs["ref"], "--compare", str(lm)]):
        assert main(argv) != 0
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "not a translation run" in err, argv


def _check_map(m, translator, text: str) -> None:
    from lmforge.data.pair_batching import encode_source
    from lmforge.evaluation.attention_plot import plot_attention

    src_ids = encode_source(translator.src_tokenizer, text)
    hyp = translator.translate_ids([text], beam=1)[0]
    assert m.weights.shape == (len(hyp) + 1, len(src_ids))  # a row per predicted token (+ <eos>), a column per source token
    assert len(m.target_tokens) == len(hyp) + 1 and m.target_tokens[-1] == "<eos>" and len(m.source_tokens) == len(src_ids)
    assert (m.weights >= 0).all() and abs(m.weights.sum(axis=1) - 1).max() < 1e-5  # softmax rows
    shown = plot_attention(m.weights, m.source_tokens, m.target_tokens, Path(translator.name + ".png"))
    assert shown.shape == m.weights.shape and abs(shown - m.weights).max() < 1e-6  # what matplotlib was given
    # rows line up with the target tokens: teacher-forcing <bos> + the greedy output predicts that output
    tgt = translator.tgt_tokenizer
    with torch.no_grad():
        logits = translator.model(torch.tensor([src_ids]), torch.tensor([[tgt.bos_id, *hyp]]))[0]
    logits[:, [tgt.pad_id, tgt.bos_id]] = -float("inf")
    assert logits.argmax(-1).tolist()[: len(hyp)] == hyp


def test_lstm_attention_heatmaps(runs, tmp_path, capsys, monkeypatch) -> None:
    from lmforge.inference.attention_maps import attention_maps
    from lmforge.inference.translate import Translator

    monkeypatch.chdir(tmp_path)
    tr = Translator.load(runs["b"], device="cpu")
    maps = attention_maps(tr, SOURCES[:4], beam=1)
    for m, text in zip(maps, SOURCES[:4]):
        _check_map(m, tr, text)
        assert m.what == "attention over the encoder outputs"
    # the weights are the model's own: its attention module on the decoder outputs gives the same numbers
    src = torch.tensor([[*tr.src_tokenizer.encode(SOURCES[1]), tr.src_tokenizer.eos_id]])
    hyp = tr.translate_ids([SOURCES[1]], beam=1)[0]
    tgt_in = torch.tensor([[tr.tgt_tokenizer.bos_id, *hyp]])
    with torch.no_grad():
        memory = tr.model.encode(src)
        out, _ = tr.model.decoder(tr.model.tgt_embed(tgt_in), memory.hidden)
        _, direct = tr.model.attention(out, tr.model.attention.keys(memory.outputs), memory.outputs, memory.src_mask)
    assert abs(direct[0].numpy() - maps[1].weights).max() < 1e-6
    out_dir, few = tmp_path / "plots", _write(tmp_path / "few.src", SOURCES[:3])
    assert main(["translate", runs["b"], "--input", few, "--beam", "2", "--attention-plot", str(out_dir),
                 "--output", str(tmp_path / "hyp.txt")]) == 0
    assert "wrote 3 attention heatmap(s)" in capsys.readouterr().err
    files = sorted(out_dir.glob("*.png"))
    assert len(files) == 3 and files[0].name.startswith("0001_abc") and files[0].read_bytes()[:4] == b"\x89PNG"
    plain = tmp_path / "plain.txt"
    assert main(["translate", runs["b"], "--input", few, "--beam", "2", "--output", str(plain)]) == 0
    assert (tmp_path / "hyp.txt").read_text() == plain.read_text()  # the same translations either way
    assert main(["translate", runs["b"], "--input", few, "--attention-plot", str(out_dir), "--head", "2"]) != 0
    assert "out of range" in capsys.readouterr().err


def test_transformer_cross_attention_heatmaps(runs, tmp_path, capsys, monkeypatch) -> None:
    from lmforge.inference.attention_maps import attention_maps
    from lmforge.inference.translate import Translator

    monkeypatch.chdir(tmp_path)
    tr = Translator.load(runs["a"], device="cpu")
    text = SOURCES[3]
    src = torch.tensor([[*tr.src_tokenizer.encode(text), tr.src_tokenizer.eos_id]])
    hyp = tr.translate_ids([text], beam=1)[0]
    tgt_in = torch.tensor([[tr.tgt_tokenizer.bos_id, *hyp]])
    with torch.no_grad():
        plain = tr.model(src, tgt_in)  # the fused kernel, no weights
        weights = tr.model.cross_attention_weights(src, tgt_in)  # (B, layers, heads, T, S), explicit softmax
        again = tr.model(src, tgt_in)
    assert weights.shape == (1, 1, 2, len(hyp) + 1, src.size(1))
    assert torch.allclose(again, plain)  # capturing leaves the model as it was
    # the captured weights are the ones the model uses: its cross-attention output recomputed from them
    layer = tr.model.decoder_layers[0].cross_attn
    assert layer.capture_weights is False and getattr(layer, "last_weights", None) is None
    layer.capture_weights = True
    try:
        with torch.no_grad():
            explicit = tr.model(src, tgt_in)
    finally:
        layer.capture_weights, layer.last_weights = False, None
    assert torch.allclose(explicit, plain, atol=1e-5)
    mean_map = attention_maps(tr, [text], beam=1)[0]
    _check_map(mean_map, tr, text)
    assert mean_map.what == "cross-attention, layer 1 of 1, mean of 2 heads"
    assert abs(mean_map.weights - weights[0, 0].mean(0).numpy()).max() < 1e-6
    head2 = attention_maps(tr, [text], beam=1, layer=1, head=2)[0]
    assert abs(head2.weights - weights[0, 0, 1].numpy()).max() < 1e-6 and "head 2 of 2" in head2.what
    out_dir, few = tmp_path / "plots", _write(tmp_path / "few.src", SOURCES[:2])
    assert main(["translate", runs["a"], "--input", few, "--attention-plot", str(out_dir), "--layer", "1",
                 "--head", "1", "--output", str(tmp_path / "hyp.txt")]) == 0
    assert len(list(out_dir.glob("*.png"))) == 2
    assert main(["translate", runs["a"], "--input", few, "--attention-plot", str(out_dir), "--layer", "3"]) != 0
    assert "--layer 3 is out of range: this model has 1 attention layer(s)" in capsys.readouterr().err
