"""The lean decoding path for Llama-style Transformers gives the model's own logits and tokens."""

from __future__ import annotations

import pytest
import torch

from lmforge.config import TransformerConfig
from lmforge.models.transformer.decode import FastLlamaDecoder, fast_decoder
from lmforge.inference.generation import generate
from lmforge.models import build_model

from llama_toy import VARIANTS, llama_toy as _model


@pytest.mark.parametrize("name", list(VARIANTS))
@torch.inference_mode()
def test_fast_logits_equal_model_logits(name):
    model = _model(VARIANTS[name])
    fast = FastLlamaDecoder(model)
    ids = torch.randint(8, 64, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, :3] = 0
    mask[2, :6] = 0
    for m in (None, mask):  # unpadded and left-padded batches
        a_state, b_state = model.init_state(3), fast.init_state(3)
        a, a_state = model.step(ids[:, :5], a_state, attention_mask=None if m is None else m[:, :5])
        b, b_state = fast.step(ids[:, :5], b_state, attention_mask=None if m is None else m[:, :5])
        torch.testing.assert_close(b[:, -1], a[:, -1], atol=2e-5, rtol=1e-5)
        a, a_state = model.step(ids[:, 5:], a_state)  # a chunk after a chunk (explicit causal offset)
        b, b_state = fast.step(ids[:, 5:], b_state)
        torch.testing.assert_close(b[:, -1], a[:, -1], atol=2e-5, rtol=1e-5)
        for _ in range(4):  # one token at a time
            nxt = a[:, -1].argmax(-1, keepdim=True)
            a, a_state = model.step(nxt, a_state)
            b, b_state = fast.step(nxt, b_state)
            torch.testing.assert_close(b[:, -1], a[:, -1], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_generate_fast_equals_model_path(name):
    model = _model(VARIANTS[name])
    prompts = [[9, 10, 11], [20, 21, 22, 23, 24, 25], [30]]
    kw = dict(temperature=0, max_new_tokens=40, ignore_eos=True)  # runs past the context (32): cache re-fill
    fast = [c.token_ids for c in generate(model, None, prompts, **kw)]
    slow = [c.token_ids for c in generate(model, None, prompts, fast=False, **kw)]
    assert fast == slow


def test_fast_decoder_is_cached_and_rebuilt_when_weights_change():
    model = _model({})
    first = fast_decoder(model)
    assert first is not None and fast_decoder(model) is first
    with torch.no_grad():
        model.tok_emb.weight.add_(1.0)
    assert fast_decoder(model) is not first
    other = build_model(TransformerConfig(vocab_size=64, d_model=32, num_layers=1, block_size=16,
                                          norm={"type": "layernorm"}, attention={"num_heads": 4}))
    assert fast_decoder(other) is None  # not Llama-compatible: the model's own step is used
    half = _model({}).to(torch.bfloat16)
    assert fast_decoder(half) is None
    out = generate(half, None, [[9, 10]], temperature=0, max_new_tokens=3, ignore_eos=True)[0]
    assert len(out.token_ids) == 3  # bfloat16 models still generate, through model.step
