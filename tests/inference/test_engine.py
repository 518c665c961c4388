"""The continuously batched engine against independent truths: offline generation of each request alone,
``log_softmax`` of the model's own logits, and seeded reruns."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from lmforge.config import RunConfig
from lmforge.inference.engine import BatchEngine, GenerationRequest
from lmforge.inference.generation import generate
from lmforge.inference.sampling import SamplingParams
from lmforge.models import build_model
from lmforge.models.quantized import quantize_model
from lmforge.tokenizers import train_tokenizer

CORPUS = "First Citizen:\nBefore we proceed any further, hear me speak.\nAll:\nSpeak, speak.\n"
FAMILIES = {
    # a Llama-style Transformer (the fast decoding path), one with ALiBi and LayerNorm (the model's
    # own KV cache, with ALiBi position biases read from its per-slot positions), and an LSTM; context 32 so that long requests slide past it
    "llama": {"family": "transformer", "d_model": 32, "num_layers": 2, "block_size": 32, "attention": {"num_heads": 2}},
    "gpt": {"family": "transformer", "d_model": 32, "num_layers": 2, "block_size": 32, "attention": {"num_heads": 2},
            "positional": {"encoding": "alibi"}, "norm": {"type": "layernorm"}, "ffn": {"variant": "mlp"}},
    "lstm": {"family": "lstm", "embedding_dim": 32, "hidden_dim": 32, "num_layers": 2, "dropout": 0.0},
}
PROMPTS = ["First", "All:\nSpeak", "Before we proceed any further, hear me speak.", "x"]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer("char", [CORPUS])


def _model(tok, family):
    cfg = RunConfig.model_validate({"model": {**FAMILIES[family], "vocab_size": tok.vocab_size},
                                    "tokenizer": {"kind": "char"}})
    torch.manual_seed(0)
    return build_model(cfg.model).eval()


class Collector:
    """A request's sink: events per choice, and an Event set when all ``n`` choices finished."""

    def __init__(self, n: int = 1) -> None:
        self.events: dict[int, list] = {i: [] for i in range(n)}
        self.left = n
        self.done = threading.Event()

    def __call__(self, event) -> None:
        self.events[event.index].append(event)
        if event.finish_reason:
            self.left -= 1
            if not self.left:
                self.done.set()

    def ids(self, i: int = 0) -> list[int]:
        return [t for e in self.events[i] for t in e.token_ids]

    def text(self, i: int = 0) -> str:
        return "".join(e.text for e in self.events[i])


def _submit(eng, tok, prompt, n=1, **kw):
    sink = Collector(n)
    logprobs = kw.pop("logprobs", None)
    params = SamplingParams.from_kwargs(None, **{"temperature": 0, "max_new_tokens": 40, "ignore_eos": True, **kw})
    eng.submit(GenerationRequest(tok.encode(prompt), params, sink, n=n, logprobs=logprobs))
    return sink


def _queued_then_alone(eng, model, tok, prompts, lengths):
    """Queues greedy requests before the engine starts, runs them, and checks each one's tokens against offline
    generation of that request alone."""
    sinks = [_submit(eng, tok, p, max_new_tokens=n) for p, n in zip(prompts, lengths)]
    eng.start()
    try:
        for s in sinks:
            assert s.done.wait(60)
    finally:
        eng.stop()
    for prompt, n_new, sink in zip(prompts, lengths, sinks):
        alone = generate(model, tok, [prompt], temperature=0, max_new_tokens=n_new, ignore_eos=True)[0]
        assert sink.ids() == alone.token_ids


@pytest.mark.parametrize("bits", [None, 8])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_batch_invariance_and_join_leave_mid_stream(tok, family, bits):
    """Requests of different lengths join a running batch at different steps and leave when done (different
    max_new_tokens); each one's greedy tokens equal offline generation of that request alone. With int8 weights
    too: FBGEMM rounds each row's activations on its own scale where it runs."""
    model = _model(tok, family) if bits is None else quantize_model(_model(tok, family), bits)
    eng = BatchEngine(model, tok, max_batch=8, prefill_chunk=8).start()
    try:
        lengths = [40, 7, 25, 40]
        sinks = []
        for prompt, n_new in zip(PROMPTS, lengths):
            sinks.append(_submit(eng, tok, prompt, max_new_tokens=n_new))
            time.sleep(0.01)  # later requests join mid-stream
        for s in sinks:
            assert s.done.wait(60)
        for prompt, n_new, sink in zip(PROMPTS, lengths, sinks):
            alone = generate(model, tok, [prompt], temperature=0, max_new_tokens=n_new, ignore_eos=True)[0]
            assert sink.ids() == alone.token_ids
            assert sink.text() == alone.text
            assert sink.events[0][-1].finish_reason == "length"
        assert eng.active == 0
    finally:
        eng.stop()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_many_rows_leave_at_once_from_scattered_slots(tok, family):
    """Eight requests prefilled together, whose lengths make rows 0, 2 and 5 leave at the same step, then rows
    4 and 7 (the running rows past the new count move into the freed slots in one copy, into rows that are not
    consecutive), while the 32-token context makes rows re-prefill: each one's greedy tokens still equal
    offline generation of that request alone."""
    model = _model(tok, family)
    eng = BatchEngine(model, tok, max_batch=8, prefill_chunk=512)
    prompts = [p + str(i) for i, p in enumerate(PROMPTS * 2)]
    _queued_then_alone(eng, model, tok, prompts, [5, 45, 5, 45, 12, 5, 45, 12])


def test_requests_really_share_steps(tok):
    """Four requests of 30 tokens take about 30 decoding steps together, not 120."""
    eng = BatchEngine(_model(tok, "llama"), tok, max_batch=4, prefill_chunk=64)
    sinks = [_submit(eng, tok, p, max_new_tokens=30) for p in PROMPTS]  # queued before the engine starts
    eng.start()
    try:
        for s in sinks:
            assert s.done.wait(60)
        assert eng.steps <= 35
    finally:
        eng.stop()


@pytest.mark.parametrize("family", ["llama", "lstm"])
def test_seeds_reproduce_and_choices_are_independent(tok, family):
    model = _model(tok, family)
    eng = BatchEngine(model, tok, max_batch=8).start()
    try:
        a = _submit(eng, tok, "All:", n=3, temperature=1.0, seed=7)
        busy = _submit(eng, tok, "First Citizen", n=2, temperature=1.0)  # other, unseeded traffic
        b = _submit(eng, tok, "All:", n=3, temperature=1.0, seed=7)
        for s in (a, b, busy):
            assert s.done.wait(60)
        runs = [[s.ids(i) for i in range(3)] for s in (a, b)]
        assert runs[0] == runs[1]  # the same seed gives the same choices, whatever else runs
        assert len({tuple(r) for r in runs[0]}) == 3  # n choices differ from one another
        # choice i is offline sampling with seed + i
        for i in range(3):
            alone = generate(model, tok, ["All:"], temperature=1.0, seed=7 + i, max_new_tokens=40, ignore_eos=True)[0]
            assert runs[0][i] == alone.token_ids
    finally:
        eng.stop()


@pytest.mark.parametrize("family", ["llama", "lstm"])
def test_logprobs_equal_log_softmax_of_the_models_logits(tok, family):
    model = _model(tok, family)
    eng = BatchEngine(model, tok, max_batch=4).start()
    try:
        sink = Collector()
        params = SamplingParams(temperature=0, max_new_tokens=6, ignore_eos=True)
        ids = tok.encode("All:\nSpeak")
        eng.submit(GenerationRequest(ids, params, sink, logprobs=3))
        assert sink.done.wait(60)
    finally:
        eng.stop()
    entries = [lp for e in sink.events[0] for lp in e.logprobs]
    out = [lp.token_id for lp in entries]
    assert len(out) == 6
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids + out]))
    ref = F.log_softmax(logits[0].float(), dim=-1)
    for k, lp in enumerate(entries):
        row = ref[len(ids) - 1 + k]
        assert lp.logprob == pytest.approx(float(row[lp.token_id]), abs=1e-4)
        values, best = torch.topk(row, 3)
        assert [t for t, _ in lp.top] == best.tolist()
        assert [v for _, v in lp.top] == pytest.approx(values.tolist(), abs=1e-4)


def test_cancel_frees_the_slot(tok):
    eng = BatchEngine(_model(tok, "lstm"), tok, max_batch=1).start()
    try:
        sink = Collector()
        params = SamplingParams(temperature=0, max_new_tokens=100000, ignore_eos=True)
        handle = eng.submit(GenerationRequest(tok.encode("All:"), params, sink))
        deadline = time.monotonic() + 10
        while eng.steps < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        handle.cancel()
        second = _submit(eng, tok, "x", max_new_tokens=3)  # needs the only slot
        assert second.done.wait(30)
        deadline = time.monotonic() + 5
        while eng.active and time.monotonic() < deadline:  # the finished sequence leaves right after its event
            time.sleep(0.01)
        assert eng.active == 0 and not sink.done.is_set()
    finally:
        eng.stop()


@pytest.mark.parametrize("stepwise_max", [0, 256])
def test_long_prompt_prefill_does_not_stall_running_streams(tok, stepwise_max):
    """A prompt many chunks long is prefilled between decoding steps (in chunks, or one token per step beside
    the running stream): the running stream keeps getting a token every iteration meanwhile."""
    model = _model(tok, "lstm")
    eng = BatchEngine(model, tok, max_batch=4, prefill_chunk=4, stepwise_max=stepwise_max)
    running = _submit(eng, tok, "All:", max_new_tokens=60)
    eng.start()
    try:
        deadline = time.monotonic() + 10
        while eng.steps < 2 and time.monotonic() < deadline:
            time.sleep(0.001)
        steps_before = eng.steps
        long = _submit(eng, tok, CORPUS * 2, max_new_tokens=1)  # ~160 tokens = 40 chunks
        assert long.done.wait(60)
        assert eng.steps - steps_before >= 30  # decoding went on while the long prompt was prefilled
        assert running.done.wait(60)
    finally:
        eng.stop()


@pytest.mark.parametrize("family", ["llama", "gpt", "lstm"])
def test_prompts_of_different_lengths_prefill_as_one_padded_batch(tok, family):
    """Requests waiting together, of different lengths, are prefilled in one left-padded call (and so are the
    re-prefills of rows that filled the 32-token context of a Transformer); each one's greedy tokens still equal
    offline generation of that request alone."""
    model = _model(tok, family)
    eng = BatchEngine(model, tok, max_batch=4, prefill_chunk=256)
    calls = _feeds(eng)
    _queued_then_alone(eng, model, tok, PROMPTS, [40, 33, 45, 38])
    assert len(calls[1]) == 4 and len(set(calls[1])) == 4  # all four at once (calls[0] is the warm-up)
    if model.max_context is not None:
        assert len(calls) > 2  # and the rows that filled the context were re-prefilled


def test_a_process_exiting_mid_step_exits_cleanly(tmp_path):
    """A script that leaves an engine decoding and returns must exit 0. Python 3.11 ends daemon threads that
    wake during interpreter shutdown with pthread_exit, whose unwinding through PyTorch's C++ frames aborts the
    process (exit code 134, "terminate called without an active exception"); the engine is stopped at exit."""
    import subprocess
    import sys

    script = tmp_path / "leave_running.py"
    script.write_text(f"""
import threading, torch
from lmforge.config import RunConfig
from lmforge.inference.engine import BatchEngine, GenerationRequest
from lmforge.inference.sampling import SamplingParams
from lmforge.models import build_model
from lmforge.tokenizers import train_tokenizer
tok = train_tokenizer("char", [{CORPUS!r}])
cfg = RunConfig.model_validate({{"model": {{**{FAMILIES['llama']!r}, "vocab_size": tok.vocab_size}},
                                 "tokenizer": {{"kind": "char"}}}})
engine = BatchEngine(build_model(cfg.model), tok).start()
started = threading.Event()
params = SamplingParams(temperature=0, max_new_tokens=10**6, ignore_eos=True)
for _ in range(4):
    engine.submit(GenerationRequest(tok.encode("First"), params, lambda event: started.set()))
started.wait(60)
""")
    for _ in range(3):  # without the fix, each run aborted
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "terminate called" not in done.stderr


def _feeds(eng) -> list[list[int]]:
    """Counts the engine's prefill calls (the prompt lengths of each) from now on: into a scratch state, or
    straight into slot rows (the C step's slots)."""
    calls: list[list[int]] = []
    feed, feed_rows = eng.slots.feed, getattr(eng.slots, "feed_rows", None)

    def counting_feed(scratch, ids):
        calls.append([len(r) for r in ids])
        return feed(scratch, ids)

    def counting_feed_rows(ids, rows):
        calls.append([len(r) for r in ids])
        return feed_rows(ids, rows)

    eng.slots.feed = counting_feed
    if feed_rows is not None:
        eng.slots.feed_rows = counting_feed_rows
    return calls


def test_lstm_prompts_ride_along_with_decoding_rows(tok):
    """With an LSTM, a prompt that arrives while others decode is fed one token per decoding step in a row of its
    own (no prefill call of its own); its greedy tokens still equal offline generation of it alone, and the
    log-probabilities of its tokens (the first one sampled from the step's logits of that row only) equal those
    of the engine that prefills every prompt."""
    model = _model(tok, "lstm")
    runs = {}
    for stepwise_max in (0, 256):
        eng = BatchEngine(model, tok, max_batch=4, stepwise_max=stepwise_max)
        calls = _feeds(eng)
        eng.start()
        try:  # a request that decodes until cancelled, so that the others always find a batch running
            endless = eng.submit(GenerationRequest(tok.encode("First"), SamplingParams(
                temperature=0, max_new_tokens=10**6, ignore_eos=True), Collector()))
            deadline = time.monotonic() + 10
            while eng.steps < 2 and time.monotonic() < deadline:
                time.sleep(0.001)
            later = []
            for prompt in PROMPTS[1:]:
                later.append(_submit(eng, tok, prompt, max_new_tokens=20, logprobs=2))
                time.sleep(0.005)
            for sink in later:
                assert sink.done.wait(60)
            endless.cancel()
        finally:
            eng.stop()
        runs[stepwise_max] = (calls, later)
    calls, later = runs[256]
    assert calls == [[2], [5]]  # the warm-up, then only the first request, which found nothing decoding
    assert sum(len(c) for c in runs[0][0]) == 5  # the other engine prefilled each prompt
    for prompt, sink, other in zip(PROMPTS[1:], later, runs[0][1]):
        alone = generate(model, tok, [prompt], temperature=0, max_new_tokens=20, ignore_eos=True)[0]
        assert sink.ids() == alone.token_ids == other.ids()
        got = [lp for e in sink.events[0] for lp in e.logprobs]
        ref = [lp for e in other.events[0] for lp in e.logprobs]
        assert [lp.logprob for lp in got] == pytest.approx([lp.logprob for lp in ref], abs=1e-5)
        assert [[t for t, _ in lp.top] for lp in got] == [[t for t, _ in lp.top] for lp in ref]


def test_choose_plain_makes_each_rows_choose_next_choice():
    """The engine's batched choice equals ``choose_next`` on each row alone with the row's own generator, over
    several steps: greedy rows, one temperature for all, and mixed temperatures; a row whose scaled logits
    overflow chooses as ``Sequence.take`` does (from their finite part), with one draw of noise per step (the
    next step's choices still agree)."""
    from lmforge.inference.engine_seq import _finite, choose_plain
    from lmforge.inference.sampling import active_processors, choose_next

    torch.manual_seed(0)
    logits = torch.randn(6, 50) * 3

    def seqs(temps, seed=11):
        out = []
        for i, t in enumerate(temps):
            g = torch.Generator().manual_seed(seed + i) if t > 0 else None
            p = SamplingParams(temperature=t, max_new_tokens=50)
            out.append(SimpleNamespace(plain=True, n_gen=0, params=p, generator=g,
                                       processors=active_processors(p)))
        return out

    def alone(t, s, raw):  # Sequence.take's path
        x = raw if t in (0.0, 1.0) else raw / t
        if t not in (0.0, 1.0) and not torch.isfinite(x.max()):
            x = _finite(x, raw)
        return int(choose_next(x, SamplingParams(temperature=t), [s.generator] if s.generator else None)[0])

    for temps in ([0.8] * 6, [0.0, 0.5, 1.0, 0.8, 0.0, 2.0], [1.0] * 6, [0.0] * 6, [0.8, 1e-38, 0.8]):
        mine, refs = seqs(temps), seqs(temps)
        for step in range(3):
            x = logits[:len(temps)] * (1 + step / 10)
            got = choose_plain(mine, x)
            assert got == [alone(t, s, x[row:row + 1]) for row, (t, s) in enumerate(zip(temps, refs))], step
