"""Generation with the real model families (Transformer with its KV cache, LSTM with its state)."""

from __future__ import annotations

import pytest
import torch

from lmforge.config import LSTMConfig, TransformerConfig
from lmforge.inference.generation import generate, stream
from lmforge.models import build_model
from lmforge.tokenizers import train_tokenizer
from toy_causal_lm import ScriptedLM

CONFIGS = {
    "transformer": TransformerConfig(vocab_size=64, d_model=32, num_layers=2, block_size=24,
                                     attention={"num_heads": 4, "variant": "gqa", "num_kv_heads": 2}),
    "transformer-alibi-mha": TransformerConfig(vocab_size=64, d_model=32, num_layers=2, block_size=24,
                                               attention={"num_heads": 4, "variant": "mha"},
                                               positional={"encoding": "alibi"}),
    "lstm": LSTMConfig(vocab_size=64, embedding_dim=32, hidden_dim=32, num_layers=2, dropout=0.0),
}


def _model(name):
    torch.manual_seed(0)
    model = build_model(CONFIGS[name]).eval()
    with torch.no_grad():  # spread the weights so greedy outputs vary (a fresh model mostly repeats itself)
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return model


def _uncached(model, ids, n, window):
    seq, out = list(ids), []
    with torch.no_grad():
        for _ in range(n):
            ctx = seq[-window:] if window else seq
            nxt = int(model(torch.tensor([ctx]))[0][0, -1].argmax())
            out.append(nxt)
            seq.append(nxt)
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_cached_equals_uncached_greedy(name):
    model = _model(name)
    prompt = [9, 17, 33, 41, 12]
    got = generate(model, None, [prompt], temperature=0, max_new_tokens=15, ignore_eos=True)[0].token_ids
    window = getattr(model, "max_context", None)
    assert got == _uncached(model, prompt, 15, window)
    assert len(set(got)) > 2  # a non-trivial sequence


@pytest.mark.parametrize("name", list(CONFIGS))
def test_batched_equals_one_by_one_real(name):
    model = _model(name)
    prompts = [[10, 11, 12], [20, 21, 22, 23, 24, 25, 26, 27], [30], [40, 41]]
    for kw in (dict(temperature=0), dict(temperature=0.9, top_k=20, top_p=0.95, min_p=0.01, seed=4,
                                          repetition_penalty=1.2, frequency_penalty=0.3)):
        alone = [generate(model, None, [p], max_new_tokens=12, ignore_eos=True, **kw)[0].token_ids for p in prompts]
        batched = generate(model, None, prompts, max_new_tokens=12, ignore_eos=True, **kw)
        assert [c.token_ids for c in batched] == alone


def test_transformer_prompt_longer_than_context_and_long_generation():
    model = _model("transformer")
    prompt = list(range(8, 58))  # 50 tokens, context 24
    got = generate(model, None, [prompt], temperature=0, max_new_tokens=40, ignore_eos=True)[0]
    assert got.prompt_tokens == 24 and len(got.token_ids) == 40
    assert got.token_ids[:1] == _uncached(model, prompt[-24:], 1, 24)


def test_streaming_with_byte_level_bpe_reassembles_multibyte_text():
    text = "naïve café — 日本語の文章 🎉🎉 ünïcödé " * 4
    tok = train_tokenizer("bpe", [text], vocab_size=300)
    assert tok.decode(tok.encode(text)) == text
    # a scripted continuation through the real tokenizer
    scripted = ScriptedLM(tok.encode(text) + [tok.eos_id], vocab=tok.vocab_size)
    pieces = [c.text for c in stream(scripted, tok, "x", temperature=0, max_new_tokens=500)]
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)
    # a sampled real model: the stream reassembles exactly to generate()'s text
    model = build_model(LSTMConfig(vocab_size=tok.vocab_size, embedding_dim=16, hidden_dim=16, num_layers=1, dropout=0.0)).eval()
    kw = dict(temperature=1.0, seed=7, max_new_tokens=60, ignore_eos=True)
    full = generate(model, tok, ["café"], **kw)[0].text
    assert "".join(c.text for c in stream(model, tok, "café", **kw)) == full
