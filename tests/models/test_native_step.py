"""The one-token decoding step in C (models/transformer/native.py): the model's own forward is the truth for
float32, the dequantized model within the stated int8 tolerances for int8; rows never depend on their batch; the
build without AVX-512 gives the same logits; where it cannot be built the PyTorch step runs."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
from llama_toy_path import llama_toy
from trained_toy import teacher_forced, trained, validation_ids

from lmforge.inference.generation import generate
from lmforge.models import int8_cpu
from lmforge.models.quantized import quantize_model
from lmforge.models.transformer import native
from lmforge.models.transformer.decode import FastLlamaDecoder, fast_decoder

needs_native = pytest.mark.skipif(native.library() is None, reason=f"no C step here: {native.unavailable_reason()}")

VARIANTS = {
    "gqa": {},
    "mqa-untied": {"attention": {"variant": "mqa", "num_heads": 4}, "tie_embeddings": False},
    "mha-bias-scaled-rope": {"attention": {"variant": "mha", "num_heads": 4, "bias": True},
                             "ffn": {"bias": True}, "positional": {"rope_scaling": 2.0, "rope_base": 500.0}},
}


def _steps(fast, ids: torch.Tensor, prompt: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The logits of positions prompt-1 .. T-1 of ``ids`` (B, T): one call for the prompt, then one token a call."""
    state = fast.init_state(ids.shape[0])
    out, state = fast.step(ids[:, :prompt], state, attention_mask=None if mask is None else mask[:, :prompt])
    logits = [out[:, 0]]
    for t in range(prompt, ids.shape[1]):
        out, state = fast.step(ids[:, t:t + 1], state)
        logits.append(out[:, 0])
    return torch.stack(logits, 1)


@needs_native
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("rows", [3, 13])  # 13: three tiles of 4 rows and a tile of 1
def test_float32_steps_equal_the_models_forward(variant, rows):
    model = llama_toy(VARIANTS[variant])
    ids = torch.randint(0, 64, (rows, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fast = FastLlamaDecoder(model)
        got = _steps(fast, ids, 4)
        ref, _ = model(ids)
    assert fast.native_step() is not None
    assert torch.allclose(got, ref[:, 3:], atol=1e-4), float((got - ref[:, 3:]).abs().max())


@needs_native
@pytest.mark.parametrize("bits", [None, 8])
@pytest.mark.parametrize("count", [3, 13])  # 13: float rows go through the panels 6 at a time (6 + 6 + 1)
def test_a_row_gives_the_same_logits_alone_and_in_a_padded_batch(bits, count):
    """Every row's arithmetic is its own (int8: its own activation scale), so a step gives a row bitwise the logits
    it gets alone, whatever else is in the batch. Each prompt is prefilled alone and its cache placed right-aligned
    in a batch cache with a padding mask, as the serving engine's slots do."""
    model = llama_toy({})
    model = model if bits is None else quantize_model(model, bits)
    g = torch.Generator().manual_seed(2)
    rows = [torch.randint(0, 64, (n,), generator=g) for n in (9, 5, 7, 3, 8, 6, 9, 4, 5, 7, 2, 9, 6)[:count]]
    new = torch.randint(0, 64, (count, 6), generator=g)
    width = max(len(r) for r in rows)
    with torch.no_grad():
        fast = FastLlamaDecoder(model)
        batch = fast.init_state(count)
        batch.padded, batch.length = True, width
        alone = []
        for i, r in enumerate(rows):
            state = fast.init_state(1)
            fast.step(r.view(1, -1), state)
            for kb, vb, ks, vs in zip(batch.k, batch.v, state.k, state.v):
                kb[i, :, width - len(r):width] = ks[0, :, :len(r)]
                vb[i, :, width - len(r):width] = vs[0, :, :len(r)]
            batch.valid[i, width - len(r):width] = True
            batch.seen[i] = len(r)
            alone.append(torch.cat([fast.step(new[i, t].view(1, 1), state)[0][0] for t in range(6)]))
        together = torch.cat([fast.step(new[:, t:t + 1], batch)[0] for t in range(6)], 1)
    assert fast.native_step() is not None
    for i in range(count):
        assert torch.equal(together[i], alone[i]), i


@pytest.mark.parametrize("kernel", ["c", "fbgemm"])
def test_int8_decoding_steps_keep_perplexity_and_the_stated_tolerances(kernel, monkeypatch):
    """Both int8 kernels of the one-token step round the activations to 8 bits too (the C step: per row, absmax;
    FBGEMM: per call, min/max): perplexity within 1% of fp32 and test_quantized.py's int8 tolerances still hold."""
    if kernel == "c" and native.library() is None:
        pytest.skip(f"no C step here: {native.unavailable_reason()}")
    if kernel == "fbgemm":
        if not int8_cpu.available():
            pytest.skip("this PyTorch build has no FBGEMM (not x86)")
        monkeypatch.setattr(native, "ENABLED", False)
    model, tok = trained("transformer", "bpe")
    quant = quantize_model(copy.deepcopy(model), 8)
    ids = validation_ids(tok)[:256].view(2, 128)
    with torch.no_grad():
        ppl, ref = teacher_forced(FastLlamaDecoder(model), ids)
        fast = FastLlamaDecoder(quant)
        qppl, got = teacher_forced(fast, ids)
        assert (fast.native_step() is not None) == (kernel == "c")
        assert kernel == "c" or fast.layers[0][0][1] is not None  # FBGEMM: the decoding path holds its packs
        monkeypatch.setattr(native, "ENABLED", False)
        monkeypatch.setattr(int8_cpu, "ENABLED", False)
        dppl, deq = teacher_forced(FastLlamaDecoder(quant), ids)  # the same weights, dequantized
    p, q = ref.log_softmax(-1), got.log_softmax(-1)
    kl = float((p.exp() * (p - q)).sum(-1).mean())
    print(f"\n{kernel} int8 step at batch 1: perplexity fp32 {ppl:.3f}, int8 {qppl:.3f} ({qppl / ppl - 1:+.3%}), "
          f"int8 dequantized {dppl:.3f}; KL {kl:.2e}; max logit change vs dequantized "
          f"{float((got - deq).abs().max()):.3f} (logit std {float(deq.std()):.2f})")
    assert abs(qppl / ppl - 1) <= 0.01
    assert (got - ref).abs().max() <= 0.10 * ref.std() and kl <= 1e-3  # test_quantized.py's int8 tolerances
    assert (got - deq).abs().max() <= 0.05 * deq.std()  # activation rounding only
    assert not torch.equal(got, deq)  # the activations really are rounded to 8 bits


@needs_native
def test_greedy_tokens_equal_the_pytorch_steps_and_generation_uses_it(monkeypatch):
    model, tok = trained("transformer", "bpe")
    prompts = [tok.encode("ROMEO:\n"), tok.encode("First Citizen:\nWe")]
    with torch.no_grad():
        ours = generate(model, None, prompts, temperature=0, max_new_tokens=64, ignore_eos=True)
        assert fast_decoder(model).native_step() is not None
        monkeypatch.setattr(native, "ENABLED", False)
        theirs = generate(model, None, prompts, temperature=0, max_new_tokens=64, ignore_eos=True, fast=False)
    assert [c.token_ids for c in ours] == [c.token_ids for c in theirs]


@needs_native
@pytest.mark.parametrize("arch", ["x86-64-v2", "x86-64-v3"])
@pytest.mark.parametrize("bits", [None, 8])
def test_the_builds_without_avx512_give_the_same_logits(arch, bits):
    """The portable loops (any x86-64 CPU) and the AVX2 ones (most laptops) against the AVX-512 ones this machine
    runs; int8 sums are exact integers in every build, so only the float parts may round differently."""
    model = llama_toy({"ffn": {"bias": True, "hidden_dim": 96}, "d_model": 48,
                       "attention": {"variant": "mha", "num_heads": 4}})
    model = model if bits is None else quantize_model(model, bits)  # rows of 48 and 96: vectors and tails
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(3))
    plain = native.build(f"-march={arch}")
    with torch.no_grad():
        fast = FastLlamaDecoder(model)
        got = _steps(fast, ids, 3)
        base = FastLlamaDecoder(model)
        base._native = native.NativeStep(base, lib=plain)
        ref = _steps(base, ids, 3)
    assert fast.native_step().lib is not plain
    assert torch.allclose(got, ref, atol=1e-5)


def test_without_a_compiler_the_pytorch_step_runs(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    native.library.cache_clear()
    try:
        assert native.library() is None
        assert "no C compiler" in native.unavailable_reason()
        model = llama_toy({})
        ids = torch.randint(0, 64, (1, 8))
        with torch.no_grad():
            fast = FastLlamaDecoder(model)
            got = _steps(fast, ids, 3)
            ref, _ = model(ids)
        assert fast.native_step() is None
        assert torch.allclose(got, ref[:, 2:], atol=1e-4)
    finally:
        native.library.cache_clear()


@needs_native
def test_a_build_keeps_the_cache_small(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache = tmp_path / "lmforge" / "native"
    cache.mkdir(parents=True)
    for i in range(9):  # builds of other versions or CPUs, oldest first
        (cache / f"native_step-old{i}.so").write_bytes(b"")
        os.utime(cache / f"native_step-old{i}.so", (1000 + i, 1000 + i))
    lib = native.build("-march=x86-64-v2")
    left = sorted(f.name for f in cache.glob("*.so"))
    assert len(left) == 6  # the new build and the five newest others
    assert Path(lib._name).exists() and {f"native_step-old{i}.so" for i in range(4, 9)} <= set(left)


@needs_native
def test_out_of_range_token_ids_are_refused_before_c_reads_them():
    fast = FastLlamaDecoder(llama_toy({}))
    state = fast.init_state(1)
    with torch.no_grad():
        fast.step(torch.tensor([[1, 2]]), state)
        with pytest.raises(IndexError, match="token ids"):
            fast.step(torch.tensor([[64]]), state)


@pytest.mark.parametrize("shape, parts", [((48, 73), 1), ((40, 128), 1), ((24, 2 * 70), 2)])
def test_panels_hold_the_matrix_and_give_back_its_rows(shape, parts):
    """The C step's layout: panel p holds output columns 64p .. 64p + 63 as k rows, zero past the last one (each of
    ``parts`` matrices packed on its own); ``rows()`` gives the (out, in) matrix back exactly."""
    w = torch.randn(shape, generator=torch.Generator().manual_seed(4))  # (in, out)
    packed = native._c_layout(w, parts)
    n = shape[1] // parts
    per = -(-n // native.PANEL)
    assert packed.data.shape == (parts * per, shape[0], native.PANEL) and (packed.n, packed.k) == (shape[1], shape[0])
    first = w[:, :n]
    assert torch.equal(packed.data[0, :, :min(n, 64)], first[:, :64])
    if n % 64:
        assert not packed.data[per - 1, :, n % 64:].any()  # the padding columns are zero
    assert torch.equal(packed.rows(), w.t())
