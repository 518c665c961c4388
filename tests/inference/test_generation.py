"""The generation loop against the CausalLM protocol, with tiny toy models (see toy_causal_lm.py)."""

from __future__ import annotations

import pytest
import torch

from lmforge.inference.generation import IncrementalDetokenizer, generate, generate_ids, stream
from lmforge.inference.sampling import SamplingParams
from toy_causal_lm import ByteTokenizer, ScriptedLM, ToyAttentionLM, ToyGRULM


@pytest.fixture
def tok():
    return ByteTokenizer()


def _models():
    torch.manual_seed(0)
    return [ToyAttentionLM(block_size=48).eval(), ToyGRULM().eval()]


def _uncached_greedy(model, ids, n, window=None):
    """Reference: re-run the full forward over the (windowed) sequence for every new token."""
    seq = list(ids)
    out = []
    with torch.no_grad():
        for _ in range(n):
            ctx = seq[-window:] if window else seq
            logits, _ = model(torch.tensor([ctx]))
            nxt = int(logits[0, -1].argmax())
            out.append(nxt)
            seq.append(nxt)
    return out


def test_toy_models_step_equals_forward():
    for model in _models():
        ids = torch.randint(8, 200, (2, 10))
        full, _ = model(ids)
        state = model.init_state(2)
        a, state = model.step(ids[:, :6], state)
        b, state = model.step(ids[:, 6:], state)
        assert torch.allclose(torch.cat([a, b], 1), full, atol=1e-5)


@pytest.mark.parametrize("index", [0, 1])
def test_cached_greedy_equals_uncached(tok, index):
    model = _models()[index]
    prompt = tok.encode("hello")
    got = generate(model, tok, [prompt], temperature=0, max_new_tokens=20, ignore_eos=True)[0]
    assert got.token_ids == _uncached_greedy(model, prompt, 20)
    assert got.finish_reason == "length" and got.completion_tokens == 20 and got.prompt_tokens == 5


@pytest.mark.parametrize("index", [0, 1])
def test_batched_equals_one_by_one(tok, index):
    model = _models()[index]
    prompts = ["a", "hello there", "", "xyz!"]  # different lengths -> left padding
    alone = [generate(model, tok, [p], temperature=0, max_new_tokens=12, ignore_eos=True)[0] for p in prompts]
    batched = generate(model, tok, prompts, temperature=0, max_new_tokens=12, ignore_eos=True)
    assert [c.token_ids for c in batched] == [c.token_ids for c in alone]
    sampled = dict(temperature=1.0, top_k=50, top_p=0.9, repetition_penalty=1.3, seed=3, max_new_tokens=12, ignore_eos=True)
    alone = [generate(model, tok, [p], **sampled)[0] for p in prompts]
    batched = generate(model, tok, prompts, **sampled)
    assert [c.token_ids for c in batched] == [c.token_ids for c in alone]


def test_seed_reproducible_and_num_samples(tok):
    model = _models()[0]
    kw = dict(temperature=1.0, max_new_tokens=10, seed=11, num_samples=3, ignore_eos=True)
    a = generate(model, tok, ["hi", "yo"], **kw)
    b = generate(model, tok, ["hi", "yo"], **kw)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    assert [(c.prompt_index, c.sample_index) for c in a] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert len({tuple(c.token_ids) for c in a[:3]}) > 1  # different samples differ
    c = generate(model, tok, ["hi"], **{**kw, "seed": 12, "num_samples": 1})
    assert c[0].token_ids != a[0].token_ids


def test_stop_token_and_eos(tok):
    model = _models()[0]
    full = generate(model, tok, ["hey"], temperature=0, max_new_tokens=15, ignore_eos=True)[0].token_ids
    stop_tok = full[4]
    first = full.index(stop_tok)
    got = generate(model, tok, ["hey"], temperature=0, max_new_tokens=15, stop_token_ids=[stop_tok])[0]
    assert got.token_ids == full[:first] and got.finish_reason == "stop" and got.completion_tokens == first + 1


MULTIBYTE = "héllo wörld — 日本語 🎉 ok STOP after"


def test_streaming_never_splits_multibyte_characters(tok):
    model = ScriptedLM(tok.encode(MULTIBYTE) + [3])
    pieces = list(stream(model, tok, "x", temperature=0, max_new_tokens=200))
    assert "".join(p.text for p in pieces) == MULTIBYTE
    assert all("\ufffd" not in p.text for p in pieces)
    assert pieces[-1].finish_reason == "stop" and all(p.finish_reason is None for p in pieces[:-1])
    assert generate(model, tok, ["x"], temperature=0, max_new_tokens=200)[0].text == MULTIBYTE


def test_stop_strings_in_generate_and_stream(tok):
    model = ScriptedLM(tok.encode(MULTIBYTE) + [3])
    expected = MULTIBYTE[: MULTIBYTE.index("STOP")]
    got = generate(model, tok, ["x"], temperature=0, max_new_tokens=200, stop=["STOP", "never"])[0]
    assert got.text == expected and got.finish_reason == "stop"
    pieces = [p.text for p in stream(model, tok, "x", temperature=0, max_new_tokens=200, stop=["STOP"])]
    assert "".join(pieces) == expected
    assert not any("S" in p for p in pieces)  # the held-back start of the stop string is never emitted


def test_length_limit_stream(tok):
    model = ScriptedLM(tok.encode(MULTIBYTE))
    pieces = list(stream(model, tok, "x", temperature=0, max_new_tokens=3))
    assert "".join(p.text for p in pieces) == "hé" and pieces[-1].finish_reason == "length"


def test_incremental_detokenizer_reassembles(tok):
    det = IncrementalDetokenizer(tok)
    ids = tok.encode(MULTIBYTE)
    text = "".join(det.push([i]) for i in ids) + det.flush()
    assert text == MULTIBYTE


def test_long_prompt_keeps_most_recent_tokens_and_generation_runs_past_context(tok):
    torch.manual_seed(0)
    model = ToyAttentionLM(block_size=16).eval()
    prompt = tok.encode("abcdefghijklmnopqrstuvwxyz0123456789")  # 36 tokens > 16
    got = generate(model, tok, [prompt], temperature=0, max_new_tokens=30, ignore_eos=True)[0]
    assert got.prompt_tokens == 16 and len(got.token_ids) == 30
    streamed = list(stream(model, tok, prompt, temperature=0, max_new_tokens=30, ignore_eos=True))
    assert {c.prompt_tokens for c in streamed} == {16}  # streamed chunks count the prompt as generate does
    # reference: each token is predicted from seq[s:]; when that window would exceed the context (16), it
    # restarts from the most recent 16 - 16 // 4 = 12 tokens, as the documented cache re-fill does
    seq, s, ref = prompt[-16:], 0, []
    with torch.no_grad():
        for _ in range(30):
            if len(seq) - s > 16:
                s = len(seq) - 12
            nxt = int(model(torch.tensor([seq[s:]]))[0][0, -1].argmax())
            ref.append(nxt)
            seq.append(nxt)
    assert got.token_ids == ref


def test_lstm_style_model_has_no_context_limit(tok):
    model = _models()[1]
    prompt = tok.encode("z" * 100)
    got = generate(model, tok, [prompt], temperature=0, max_new_tokens=5, ignore_eos=True)[0]
    assert got.prompt_tokens == 100 and got.token_ids == _uncached_greedy(model, prompt, 5)


def test_generate_ids_and_training_mode_restored(tok):
    model = _models()[0].train()
    ids = generate_ids(model, [10, 11, 12], max_new_tokens=6, temperature=0)
    assert ids[:3] == [10, 11, 12] and len(ids) == 9
    assert model.training
    assert ids[3:] == _uncached_greedy(model.eval(), [10, 11, 12], 6)


def test_penalties_change_greedy_output(tok):
    model = _models()[0]
    plain = generate(model, tok, ["aaaa"], temperature=0, max_new_tokens=20, ignore_eos=True)[0].token_ids
    pen = generate(model, tok, ["aaaa"], temperature=0, max_new_tokens=20, ignore_eos=True, repetition_penalty=5.0)[0].token_ids
    assert plain != pen
    assert len(set(pen)) >= len(set(plain))
