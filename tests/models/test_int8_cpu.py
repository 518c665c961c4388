"""FBGEMM's int8 x int8 kernels for int8 layers on the CPU (models/int8_cpu.py): taken where they should be, within
the activation rounding bound of the dequantize-then-matmul reference, the fallback where they are missing, packs
never saved (the decoding step's quality with FBGEMM is tested beside the C step's, in test_native_step.py).
These tests run the decoding path's PyTorch step, where FBGEMM is used."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from lmforge.api import LM
from lmforge.config import RunConfig
from lmforge.models import int8_cpu
from lmforge.models.quantized import QuantLinear, QuantLSTM, quantize_model
from lmforge.models.run_folder import save_run
from lmforge.models.transformer import native
from lmforge.models.transformer.decode import fast_decoder
from trained_toy import trained

needs_fbgemm = pytest.mark.skipif(not int8_cpu.available(), reason="this PyTorch build has no FBGEMM (not x86)")


@pytest.fixture
def no_fbgemm(monkeypatch):
    monkeypatch.setattr(int8_cpu, "available", lambda: False)


@pytest.fixture(autouse=True)
def _pytorch_step(monkeypatch):
    """The decoding path's PyTorch step (where FBGEMM runs); the C step has its own tests (test_native_step.py)."""
    monkeypatch.setattr(native, "ENABLED", False)


def _bound(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Largest change of ``x @ w.T`` when each element of the row ``x`` moves by at most one step of an 8-bit
    (7-bit without VNNI) grid spanning [min(x, 0), max(x, 0)]: step * sum_k |w[n, k]| (twice the round-to-nearest
    error, for the zero point's own rounding)."""
    levels = 127 if int8_cpu._reduce_range() else 255
    step = (x.max().clamp(min=0) - x.min().clamp(max=0)) / levels
    return step * w.abs().sum(1) + 1e-5


@needs_fbgemm
def test_one_row_takes_fbgemm_within_the_activation_rounding_bound():
    torch.manual_seed(0)
    q = QuantLinear(nn.Linear(96, 40), 8)
    w = q.dequantize()
    x = torch.randn(1, 96)
    got = q(x)
    ref = F.linear(x, w, q.bias)
    assert q._packs.value is not None  # the pack was built: the FBGEMM path ran
    assert not torch.equal(got, ref)  # the activations were rounded, so the result is not the float one
    assert ((got - ref).abs()[0] <= _bound(x[0], w)).all()
    rows = torch.randn(3, 96)  # several rows: each one rounded on its own, as if alone (one scale per row)
    assert torch.equal(q(rows), torch.cat([q(r) for r in rows.split(1)]))
    assert torch.equal(q(rows.view(3, 1, 96)), q(rows).view(3, 1, 40))  # one position per row: a decoding step
    seq = rows.view(1, 3, 96)  # a sequence (a prompt, an evaluation batch) keeps the exact float reference
    assert torch.allclose(q(seq), F.linear(seq, w, q.bias), atol=1e-5)


def test_quantizing_an_eval_model_keeps_eval_mode():
    model = nn.Sequential(nn.Linear(8, 8), nn.LSTM(8, 8, 2, dropout=0.5)).eval()
    quantize_model(model, 8)
    assert not any(m.training for m in model.modules())  # else the LSTM would apply dropout while generating


@needs_fbgemm
def test_layers_quantized_under_inference_mode_run(monkeypatch):
    torch.manual_seed(0)
    with torch.inference_mode():  # inference tensors have no version counter for the pack's key
        model = quantize_model(nn.Sequential(nn.Linear(16, 8), nn.LSTM(8, 8, batch_first=True)), 8).eval()
        y = model[0](torch.randn(1, 16))
        out, _ = model[1](y.view(1, 1, 8))
        monkeypatch.setattr(int8_cpu, "ENABLED", False)
        ref, _ = model[1](y.view(1, 1, 8))
    assert model[0]._packs.value is not None and model[1]._packs.value is not None
    assert (out - ref).abs().max() < 0.02


def test_without_fbgemm_int8_layers_dequantize(no_fbgemm):
    torch.manual_seed(0)
    q = QuantLinear(nn.Linear(96, 40), 8)
    x = torch.randn(1, 96)
    assert torch.allclose(q(x), F.linear(x, q.dequantize(), q.bias), atol=1e-6)
    assert q._packs.value is None
    lstm = QuantLSTM(nn.LSTM(16, 24, 2, batch_first=True), 8).eval()
    out, _ = lstm(torch.randn(1, 1, 16))
    assert out.shape == (1, 1, 24) and lstm._packs.value is None
    model, _ = trained("transformer", "bpe")
    quant = quantize_model(copy.deepcopy(model), 8)
    ids = torch.tensor([[5, 9, 17, 3]])
    with torch.no_grad():
        fast = fast_decoder(quant, compile=False)
        assert fast.layers[0][0][1] is None  # no pack: the decoding path dequantizes
        state = fast.init_state(1)
        fast.step(ids[:, :3], state)
        one, _ = fast.step(ids[:, 3:], state)  # the one-row step, on the fallback
        ref, _ = quant(ids)
    assert torch.allclose(one[0, 0], ref[0, 3], atol=1e-4)


@needs_fbgemm
def test_lstm_step_at_batch_one_uses_fbgemm_and_stays_close(monkeypatch):
    torch.manual_seed(0)
    lstm = QuantLSTM(nn.LSTM(16, 24, 2, batch_first=True), 8).eval()
    x, hx = torch.randn(1, 1, 16), (torch.randn(2, 1, 24), torch.randn(2, 1, 24))
    out, (h, c) = lstm(x, hx)
    assert lstm._packs.value is not None
    monkeypatch.setattr(int8_cpu, "ENABLED", False)
    ref, (h2, c2) = lstm(x, hx)
    assert not torch.equal(out, ref)
    # gates move by at most the bound of a 16/24-wide row of weights ~0.2: the outputs by far less than 0.02
    assert (out - ref).abs().max() < 0.02 and (c - c2).abs().max() < 0.02


@needs_fbgemm
def test_packs_are_never_saved_and_copies_pack_again(tmp_path):
    model, tok = trained("transformer", "bpe")
    quant = quantize_model(copy.deepcopy(model), 8)
    LM(quant, tok).complete(["ROMEO:\n"], temperature=0, max_new_tokens=4)  # builds packs on the way
    with torch.no_grad():
        quant(torch.tensor([[1, 2, 3]])[:, :1])
    assert any(m._packs.value is not None for m in quant.modules() if isinstance(m, QuantLinear))
    twin = copy.deepcopy(quant)
    assert all(m._packs.value is None for m in twin.modules() if isinstance(m, QuantLinear))
    cfg = RunConfig.parse({"model": model.config.to_dict(), "out_dir": str(tmp_path / "run")})
    save_run(tmp_path / "run", cfg, quant, tok)
    saved = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert set(saved) == set(quant.state_dict())
    assert all(t.dtype != torch.quint8 and t.dtype != torch.qint8 for t in saved.values())
