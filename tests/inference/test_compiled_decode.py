"""The compiled one-token step gives the eager fast path's logits, and the same greedy tokens in ``generate``."""

from __future__ import annotations

import pytest
import torch

from lmforge.config import LSTMConfig
from lmforge.models.transformer import native
from lmforge.models.transformer.compiled import CompiledLlamaDecoder
from lmforge.models.transformer.decode import FastLlamaDecoder, compile_decoding, fast_decoder
from lmforge.inference.generation import generate
from lmforge.models import build_model

from llama_toy import VARIANTS as _ALL, llama_toy as _model

VARIANTS = {k: _ALL[k] for k in ("gqa", "mha-bias-scaled-rope")}  # GQA; biases with scaled rotary positions


@pytest.mark.parametrize("name", list(VARIANTS))
@torch.inference_mode()
def test_compiled_steps_equal_eager_steps(name):
    model = _model(VARIANTS[name])
    fast = FastLlamaDecoder(model)
    comp = CompiledLlamaDecoder(fast)
    ids = torch.randint(8, 64, (3, 6))
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[1, :2] = 0
    mask[2, :5] = 0
    batches = [(ids, None), (ids, mask)] + ([(ids[:1], None)] if name == "gqa" else [])
    for rows, m in batches:  # unpadded and left-padded batches (and one row: the reduction path)
        a_state, b_state = fast.init_state(rows.size(0)), comp.init_state(rows.size(0))
        a, a_state = fast.step(rows, a_state, attention_mask=m)
        b, b_state = comp.step(rows, b_state, attention_mask=m)  # prompts go through the eager path
        for _ in range(12):
            nxt = a[:, -1].argmax(-1, keepdim=True)
            step_mask = None if m is None else torch.ones_like(nxt)
            a, a_state = fast.step(nxt, a_state, attention_mask=step_mask)
            b, b_state = comp.step(nxt, b_state, attention_mask=step_mask)
            torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-5)
        assert b_state.length == a_state.length == rows.size(1) + 12
        torch.testing.assert_close(b_state.seen, a_state.seen) if m is not None else None


def test_generate_compiled_equals_eager_past_the_context():
    model = _model({})
    prompts = [[9, 10, 11], [20, 21, 22, 23, 24, 25], [30]]
    kw = dict(temperature=0, max_new_tokens=40, ignore_eos=True)  # past the context (32): the cache is refilled
    eager = generate(model, None, prompts, **kw)
    compiled = generate(model, None, prompts, compile=True, **kw)
    assert [c.token_ids for c in compiled] == [c.token_ids for c in eager]
    one = generate(model, None, prompts[1:2], compile=True, **kw)  # one row (a batch refills on its longest row)
    assert one[0].token_ids == generate(model, None, prompts[1:2], **kw)[0].token_ids


def test_fast_decoder_compile_is_cached_and_cpu_float_only():
    model = _model({})
    comp = fast_decoder(model, compile=True)
    assert isinstance(comp, CompiledLlamaDecoder)
    assert fast_decoder(model, compile=True) is comp
    assert isinstance(fast_decoder(model), FastLlamaDecoder)  # the eager path stays available
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # new weights: a new decoder (and compiled step) for them
    assert fast_decoder(model, compile=True) is not comp
    model.double()
    assert isinstance(fast_decoder(model, compile=True), CompiledLlamaDecoder)


def test_compile_decoding_is_the_models_default_and_reports_support(monkeypatch):
    model = _model({})
    if native.library() is not None:  # the C step runs: faster, so it stays the default
        assert compile_decoding(model) is True
        assert isinstance(fast_decoder(model), FastLlamaDecoder) and fast_decoder(model).native_step() is not None
        compile_decoding(model, enabled=False)
    monkeypatch.setattr(native, "ENABLED", False)
    model = _model({})
    assert isinstance(fast_decoder(model), FastLlamaDecoder)
    assert compile_decoding(model) is True
    assert isinstance(fast_decoder(model), CompiledLlamaDecoder)  # generate()'s compile=None follows it
    assert isinstance(fast_decoder(model, compile=False), FastLlamaDecoder)
    compile_decoding(model, enabled=False)
    assert isinstance(fast_decoder(model), FastLlamaDecoder)
    lstm = build_model(LSTMConfig(vocab_size=16, embedding_dim=8, hidden_dim=8, num_layers=1))
    assert compile_decoding(lstm) is False  # not a Llama-style Transformer: stays on its own step
    classic = _model({"norm": {"type": "layernorm"}})
    assert compile_decoding(classic) is False


def test_a_failed_compile_falls_back_to_eager_decoding(monkeypatch):
    from lmforge.models.transformer import compiled as compiled_decode

    def broken(self, *args):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")

    monkeypatch.setattr(compiled_decode.CompiledStep, "__call__", broken)
    model = _model({})
    prompts = [[9, 10, 11], [20, 21, 22, 23, 24, 25]]
    kw = dict(temperature=0, max_new_tokens=10, ignore_eos=True)
    with pytest.warns(RuntimeWarning, match="compiled decoding is unavailable.*C\\+\\+ compiler"):
        compiled = generate(model, None, prompts, compile=True, **kw)
    assert [c.token_ids for c in compiled] == [c.token_ids for c in generate(model, None, prompts, **kw)]
