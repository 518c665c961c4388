"""Weight-only int8/int4 quantization: exact formats, layers equal to float layers holding the dequantized
weights, quality on trained tiny models, and quantized run folders that save, load, evaluate and serve."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from lmforge.api import LM
from lmforge.cli.main import main
from lmforge.config import RunConfig
from lmforge.models import int8_cpu
from lmforge.models.quantized import (QuantLinear, QuantLSTM, dequantize_weight, matvec, quantization_of,
                                      quantize_model, quantize_weight)
from lmforge.models.run_folder import save_run
from lmforge.models.transformer import native
from trained_toy import corpus, trained, validation_ids


def test_int8_is_symmetric_per_output_channel():
    w = torch.tensor([[1.27, -0.5, 0.0], [0.0, 0.2, -0.254]])
    q, scale = quantize_weight(w, 8)
    assert torch.allclose(scale, torch.tensor([0.01, 0.002]))
    assert q.dtype == torch.int8 and q.tolist() == [[127, -50, 0], [0, 100, -127]]
    assert torch.allclose(dequantize_weight((q, scale)), w, atol=1e-6)


def test_int4_groups_and_half_split_nibbles():
    # one row, 4 columns, groups of 2: group 0 = (0, 1.875) -> scale 0.125, low 0; group 1 = (-3.75, 0) -> scale
    # 0.25, low -3.75 (all exact in the stored float16)
    w = torch.tensor([[0.0, 1.875, -3.75, 0.0]])
    packed, scale, low = quantize_weight(w, 4, group_size=2)
    assert scale.dtype == low.dtype == torch.float16
    assert scale.tolist() == [[0.125, 0.25]] and low.tolist() == [[0.0, -3.75]]
    # q = (0, 15, 0, 15); column j in the low nibble, column j + 2 in the high one
    assert packed.dtype == torch.uint8 and packed.tolist() == [[0 | 0 << 4, 15 | 15 << 4]]
    assert torch.allclose(dequantize_weight((packed, scale, low)), w, atol=1e-6)


@pytest.fixture
def no_fbgemm(monkeypatch):
    """Every int8 layer takes the dequantize-then-matmul path, as on a machine without FBGEMM."""
    monkeypatch.setattr(int8_cpu, "available", lambda: False)


@pytest.mark.parametrize("bits, out_features, in_features", [(8, 24, 40), (4, 24, 64), (4, 8, 44), (4, 8, 344)])
def test_quant_linear_equals_the_float_layer_with_dequantized_weights(bits, out_features, in_features, no_fbgemm):
    lin = nn.Linear(in_features, out_features)
    q = QuantLinear(lin, bits)
    w = q.dequantize()
    step = (lin.weight.abs().amax(1, keepdim=True) / 127) if bits == 8 else None
    if step is not None:  # round to nearest: every weight within half a step
        assert ((w - lin.weight).abs() <= step / 2 + 1e-6).all()
    x = torch.randn(3, in_features)
    assert torch.allclose(q(x), F.linear(x, w, lin.bias), atol=1e-5)
    for row in x:  # the compiled kernel's formula, run eagerly
        assert torch.allclose(matvec(row[None], q.qweight_parts)[0] + lin.bias, q(row[None])[0], atol=1e-4)


def _float_twin(ql: QuantLSTM, source: nn.LSTM) -> nn.LSTM:
    ref = copy.deepcopy(source)
    with torch.no_grad():
        for k in range(ql.num_layers):
            wi, wh = ql.matrices(k)
            getattr(ref, f"weight_ih_l{k}").copy_(dequantize_weight(wi))
            getattr(ref, f"weight_hh_l{k}").copy_(dequantize_weight(wh))
    return ref


@pytest.mark.parametrize("bits", [8, 4])
def test_quant_lstm_equals_nn_lstm_with_dequantized_matrices(bits):
    lstm = nn.LSTM(32, 32, 2, batch_first=True)
    ql = QuantLSTM(lstm, bits)
    ref = _float_twin(ql, lstm)
    x = torch.randn(3, 5, 32)
    hx = (torch.randn(2, 3, 32), torch.randn(2, 3, 32))
    (a, (h, c)), (b, (h2, c2)) = ql(x, hx), ref(x, hx)
    assert torch.allclose(a, b, atol=1e-6) and torch.allclose(h, h2, atol=1e-6) and torch.allclose(c, c2, atol=1e-6)
    packed = pack_padded_sequence(x, torch.tensor([5, 2, 3]), batch_first=True, enforce_sorted=False)
    (a, (h, c)), (b, (h2, c2)) = ql(packed, hx), ref(packed, hx)
    assert torch.allclose(a.data, b.data, atol=1e-6) and torch.allclose(h, h2, atol=1e-6)


# Stated tolerances on trained tiny models (held-out Shakespeare, teacher forcing): the largest logit change is
# at most 10% of the float logits' standard deviation for int8 (35% for int4), the mean KL divergence of the
# next-token distributions at most 1e-3 nats for int8 (1e-2 for int4), perplexity within 1% (int8) and 5% (int4).
TOL = {8: (0.10, 1e-3, 0.01), 4: (0.35, 1e-2, 0.05)}


@pytest.mark.parametrize("family", ["transformer", "lstm"])
@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_logits_stay_within_the_stated_tolerance(family, bits):
    model, tok = trained(family, "bpe")
    ids = validation_ids(tok)[:512].view(4, 128)
    quant = quantize_model(copy.deepcopy(model), bits)
    with torch.no_grad():
        ref, ref_loss = model(ids[:, :-1], ids[:, 1:])
        got, loss = quant(ids[:, :-1], ids[:, 1:])
    logit_tol, kl_tol, ppl_tol = TOL[bits]
    p, q = ref.log_softmax(-1), got.log_softmax(-1)
    kl = float((p.exp() * (p - q)).sum(-1).mean())
    assert (got - ref).abs().max() <= logit_tol * ref.std()
    assert kl <= kl_tol
    assert abs(math.exp(loss - ref_loss) - 1) <= ppl_tol
    top1 = float((got.argmax(-1) == ref.argmax(-1)).float().mean())
    a = LM(model, tok).complete(["ROMEO:\n"], temperature=0, max_new_tokens=64)[0].token_ids
    b = LM(quant, tok).complete(["ROMEO:\n"], temperature=0, max_new_tokens=64)[0].token_ids
    same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    print(f"{family} int{bits}: greedy tokens equal to fp32 for the first {same} of 64; teacher-forced top-1 "
          f"agreement {top1:.1%}; perplexity {math.exp(ref_loss):.3f} -> {math.exp(loss):.3f}; KL {kl:.2e}")
    assert top1 >= (0.95 if bits == 8 else 0.85)


@pytest.fixture(scope="module")
def float_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("qrun")
    model, tok = trained("transformer", "bpe")
    cfg = RunConfig.parse({"model": model.config.to_dict(), "out_dir": str(tmp / "run")})
    save_run(tmp / "run", cfg, model, tok, summary={"val_loss": 1.0, "chat_template": "plain"})
    (tmp / "val.txt").write_text(corpus()[:3000], encoding="utf-8")
    return tmp


def test_quantized_run_saves_loads_evaluates_and_serves(float_run, capsys):
    run, out = float_run / "run", float_run / "run-int8"
    assert main(["quantize", str(run), "--bits", "8", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["quantization"] == {"bits": 8, "group_size": 32}
    summary = json.loads((out / "summary.json").read_text())
    assert "val_loss" not in summary and summary["quantization"]["bits"] == 8  # float figures are not copied
    assert (out / "model.safetensors").stat().st_size < 0.45 * (run / "model.safetensors").stat().st_size

    lm = LM.load(out, device="cpu")
    assert quantization_of(lm.model) == {"bits": 8, "group_size": 32}
    expected = quantize_model(LM.load(run, device="cpu").model, 8)  # quantized in memory, never saved
    with torch.no_grad():
        ids = validation_ids(lm.tokenizer)[:64][None]
        assert torch.equal(lm.model(ids)[0], expected(ids)[0])
    text = lm.generate("ROMEO:\n", temperature=0, max_new_tokens=24)

    assert main(["eval", str(out), "--data", str(float_run / "val.txt"), "--json"]) == 0
    q_figs = json.loads(capsys.readouterr().out)
    assert main(["eval", str(run), "--data", str(float_run / "val.txt"), "--json"]) == 0
    f_figs = json.loads(capsys.readouterr().out)
    assert abs(q_figs["perplexity"] / f_figs["perplexity"] - 1) < 0.01

    from fastapi.testclient import TestClient

    from lmforge.serving.app import create_app

    with TestClient(create_app(str(out))) as client:
        r = client.post("/v1/completions", json={"prompt": "ROMEO:\n", "max_tokens": 24, "temperature": 0})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == text


def test_quantize_on_load_gives_the_quantized_run_s_text(float_run, capsys):
    run, out = float_run / "run", float_run / "run-int4"
    assert main(["quantize", str(run), "--bits", "4", "--out", str(out)]) == 0
    capsys.readouterr()
    args = ["--prompt", "KING:", "--temperature", "0", "--max-new-tokens", "16"]
    assert main(["generate", str(out)] + args) == 0
    saved = capsys.readouterr().out
    assert main(["generate", str(run), "--quantize", "int4"] + args) == 0
    assert capsys.readouterr().out == saved
    assert main(["generate", str(run)] + args) == 0  # the float run itself is unchanged on disk


def test_quantized_lstm_run_round_trips(tmp_path):
    model, tok = trained("lstm", "bpe")
    cfg = RunConfig.parse({"model": model.config.to_dict(), "out_dir": str(tmp_path / "run")})
    save_run(tmp_path / "run", cfg, model, tok)
    from lmforge.workflows.quantize import quantize_run

    quantize_run(tmp_path / "run", tmp_path / "q", bits=8)
    lm = LM.load(tmp_path / "q", device="cpu")
    assert isinstance(lm.model.lstm, QuantLSTM) and isinstance(lm.model.head, QuantLinear)
    ids = validation_ids(tok)[:40].view(2, 20)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding: the padded row's real tokens give the same logits as the row alone
    with torch.no_grad():
        padded, _ = lm.model.step(ids, lm.model.init_state(2), mask)
        alone, _ = lm.model.step(ids[1:, 5:], lm.model.init_state(1))
    assert torch.allclose(padded[1, 5:], alone[0], atol=1e-5)


def test_quantize_errors_are_one_line(float_run, tmp_path, capsys):
    run = float_run / "run"
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    cases = [
        (["quantize", str(run), "--out", str(tmp_path / "full")], "not an empty folder"),
        (["quantize", str(tmp_path / "nowhere"), "--out", str(tmp_path / "a")], "does not exist"),
        (["quantize", str(run), "--out", str(run)], "not an empty folder"),
    ]
    for argv, words in cases:
        assert main(argv) != 0
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and words in err and "\n" not in err
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert main(["quantize", str(run), "--out", str(tmp_path / "q")]) == 0
    assert main(["quantize", str(tmp_path / "q"), "--out", str(tmp_path / "qq")]) != 0
    assert "already quantized" in capsys.readouterr().err


@pytest.mark.parametrize("bits", [8, 4])
def test_fast_decoding_path_reads_the_quantized_layers(bits, monkeypatch):
    """The fast path reads the quantized layers: with FBGEMM off, its logits equal the model's own forward (FBGEMM's
    activation rounding is bounded in test_int8_cpu.py, the C step's in test_native_step.py)."""
    monkeypatch.setattr(int8_cpu, "ENABLED", False)
    monkeypatch.setattr(native, "ENABLED", False)
    from llama_toy_path import llama_toy

    from lmforge.models.transformer.decode import FastLlamaDecoder, fast_decoder

    model = quantize_model(llama_toy({"attention": {"variant": "mha", "num_heads": 4, "bias": True}}), bits)
    ids = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        ref, _ = model(ids)
        fast = fast_decoder(model, compile=False)
        assert isinstance(fast, FastLlamaDecoder)
        state = fast.init_state(2)
        first, _ = fast.step(ids[:, :5], state)
        second, _ = fast.step(ids[:, 5:6], state)
    assert torch.allclose(first[:, 0], ref[:, 4], atol=1e-4) and torch.allclose(second[:, 0], ref[:, 5], atol=1e-4)


def test_compiled_step_is_chosen_for_long_generations_only(monkeypatch):
    """Where the C step runs it is the default whatever the length and ``--compile`` (it is faster than the
    compiled step), and only ``compile=True`` compiles; elsewhere long generations compile."""
    from llama_toy_path import llama_toy

    from lmforge.models.transformer.compiled import CompiledLlamaDecoder
    from lmforge.models.transformer.decode import AUTO_COMPILE_TOKENS, FastLlamaDecoder, compile_decoding, fast_decoder

    if native.library() is not None:
        model = quantize_model(llama_toy({}), 8)
        assert isinstance(fast_decoder(model, tokens=AUTO_COMPILE_TOKENS), FastLlamaDecoder)
        assert isinstance(fast_decoder(model, compile=True), CompiledLlamaDecoder)
        assert compile_decoding(model) and isinstance(fast_decoder(model, tokens=1), FastLlamaDecoder)
    monkeypatch.setattr(native, "ENABLED", False)
    model = quantize_model(llama_toy({}), 8)
    assert isinstance(fast_decoder(model, tokens=200), FastLlamaDecoder)
    comp = fast_decoder(model, tokens=AUTO_COMPILE_TOKENS)
    assert isinstance(comp, CompiledLlamaDecoder)
    assert isinstance(fast_decoder(model, tokens=1), FastLlamaDecoder)  # built, but never compiled yet
    comp.ready = True  # as after its first compiled step: reused for free from then on
    assert fast_decoder(model, tokens=1) is comp
    assert isinstance(fast_decoder(model, compile=False), FastLlamaDecoder)


@pytest.mark.slow
def test_compiled_int8_and_int4_steps_give_the_eager_greedy_tokens():
    from llama_toy_path import llama_toy

    from lmforge.inference.generation import generate

    for bits in (8, 4):
        model = quantize_model(llama_toy({}), bits)
        runs = [generate(model, None, [[5, 6, 7], [9]], temperature=0, max_new_tokens=12, ignore_eos=True,
                         **kw) for kw in ({"fast": False}, {"compile": False}, {"compile": True})]
        ids = [[c.token_ids for c in r] for r in runs]
        assert ids[0] == ids[1] == ids[2]


def test_serve_quantizes_on_load(float_run, monkeypatch):
    import uvicorn

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.setdefault("app", app))
    assert main(["serve", str(float_run / "run"), "--quantize", "int8", "--port", "0"]) == 0
    assert quantization_of(served["app"].state.engine.model) == {"bits": 8, "group_size": 32}
