"""The batching engine in its own process (``EngineProcess``) against independent truths: offline generation of
each request alone, the in-thread engine's seeded output, and what happens on cancel, a full queue and a dead
child."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from lmforge.config import RunConfig
from lmforge.inference.engine import BatchEngine, GenerationRequest
from lmforge.inference.engine_proc import EngineProcess
from lmforge.inference.generation import generate
from lmforge.inference.sampling import SamplingParams
from lmforge.models import build_model
from lmforge.models.quantized import quantize_model
from lmforge.tokenizers import train_tokenizer

CORPUS = "First Citizen:\nBefore we proceed any further, hear me speak.\nAll:\nSpeak, speak.\n"
MODELS = {
    "llama": {"family": "transformer", "d_model": 32, "num_layers": 2, "block_size": 32, "attention": {"num_heads": 2}},
    "lstm": {"family": "lstm", "embedding_dim": 32, "hidden_dim": 32, "num_layers": 2, "dropout": 0.0},
}
PROMPTS = ["First", "All:\nSpeak", "Before we proceed any further, hear me speak.", "x"]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer("char", [CORPUS])


def _model(tok, family, bits=None):
    cfg = RunConfig.model_validate({"model": {**MODELS[family], "vocab_size": tok.vocab_size},
                                    "tokenizer": {"kind": "char"}})
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    return model if bits is None else quantize_model(model, bits)


class Sink:
    def __init__(self) -> None:
        self.events: list = []
        self.done = threading.Event()

    def __call__(self, event) -> None:
        self.events.append(event)
        if event.finish_reason:
            self.done.set()

    def ids(self) -> list[int]:
        return [t for e in self.events for t in e.token_ids]


def _run(engine, tok, prompts, **kw):
    sinks = []
    for i, prompt in enumerate(prompts):
        params = SamplingParams.from_kwargs(None, **{"temperature": 0, "max_new_tokens": 10 + 10 * i,
                                                     "ignore_eos": True, **kw})
        sinks.append(Sink())
        engine.submit(GenerationRequest(tok.encode(prompt), params, sinks[-1], logprobs=1))
    for s in sinks:
        assert s.done.wait(60)
    return sinks


@pytest.mark.parametrize("family,bits", [("llama", None), ("lstm", None), ("llama", 8)])
def test_greedy_tokens_equal_offline_generation_and_seeds_equal_the_thread_engine(tok, family, bits):
    """The child rebuilds the model from its config and weights (quantized layers too): each request's greedy
    tokens equal offline generation of it alone in this process, and seeded sampling equals the in-thread
    engine's, token for token."""
    model = _model(tok, family, bits)
    eng = EngineProcess(model, tok, max_batch=4, threads=1)
    try:
        greedy = _run(eng, tok, PROMPTS)
        sampled = _run(eng, tok, PROMPTS, temperature=1.0, seed=3)
    finally:
        eng.stop()
    for i, (prompt, sink) in enumerate(zip(PROMPTS, greedy)):
        alone = generate(model, tok, [prompt], temperature=0, max_new_tokens=10 + 10 * i, ignore_eos=True)[0]
        assert sink.ids() == alone.token_ids
        assert [lp.token_id for e in sink.events for lp in e.logprobs] == alone.token_ids
    here = BatchEngine(model, tok, max_batch=4).start()
    try:
        assert [s.ids() for s in _run(here, tok, PROMPTS, temperature=1.0, seed=3)] == [s.ids() for s in sampled]
    finally:
        here.stop()


def test_cancel_full_queue_and_a_dead_child(tok):
    eng = EngineProcess(_model(tok, "lstm"), tok, max_batch=1, max_queue=1, threads=1)
    try:
        endless = SamplingParams(temperature=0, max_new_tokens=10**6, ignore_eos=True)
        first, second = Sink(), Sink()
        handle = eng.submit(GenerationRequest(tok.encode("All:"), endless, first))
        eng.submit(GenerationRequest(tok.encode("x"), endless, second))  # waits for the only slot
        assert (eng.active, eng.queued) == (1, 1)
        with pytest.raises(OverflowError):
            eng.submit(GenerationRequest(tok.encode("x"), endless, Sink()))
        deadline = time.monotonic() + 30
        while not first.events and time.monotonic() < deadline:
            time.sleep(0.01)
        handle.cancel()  # frees the slot: the second request starts
        deadline = time.monotonic() + 30
        while not second.events and time.monotonic() < deadline:
            time.sleep(0.01)
        assert second.events and not first.done.is_set()
        eng._proc.kill()  # the engine process dies mid-stream: the request in flight ends with an error event
        assert second.done.wait(30)
        assert second.events[-1].finish_reason == "error" and second.events[-1].error is not None
        with pytest.raises(RuntimeError, match="exited"):
            eng.submit(GenerationRequest(tok.encode("x"), endless, Sink()))
    finally:
        eng.stop()


def test_a_model_the_child_cannot_rebuild_is_refused_with_the_reason(tok):
    model = _model(tok, "lstm")
    model.register_buffer("extra", torch.zeros(1))  # not in what build_model makes from the config
    with pytest.raises(RuntimeError, match="(?s)could not load the model.*extra"):
        EngineProcess(model, tok, threads=1)


def test_events_pumped_by_the_owner_equal_the_reader_threads(tok):
    """With ``reader=False`` no thread reads the pipe: the owner calls ``pump()`` when ``fileno()`` is readable
    (as an event loop does) and the sinks run on its thread; greedy tokens equal offline generation, and a dead
    child makes ``pump()`` return False after the request in flight got its error event."""
    import select

    model = _model(tok, "lstm")
    eng = EngineProcess(model, tok, max_batch=4, threads=1, reader=False)
    try:
        sinks, threads = [], set()
        for i, prompt in enumerate(PROMPTS):
            params = SamplingParams(temperature=0, max_new_tokens=5 + i, ignore_eos=True)
            sinks.append(Sink())
            record = lambda e, s=sinks[-1]: (threads.add(threading.get_ident()), s(e))  # noqa: E731
            eng.submit(GenerationRequest(tok.encode(prompt), params, record))
        deadline = time.monotonic() + 60
        while not all(s.done.is_set() for s in sinks) and time.monotonic() < deadline:
            if select.select([eng.fileno()], [], [], 1.0)[0]:
                assert eng.pump()
        for i, (prompt, sink) in enumerate(zip(PROMPTS, sinks)):
            alone = generate(model, tok, [prompt], temperature=0, max_new_tokens=5 + i, ignore_eos=True)[0]
            assert sink.ids() == alone.token_ids
        assert threads == {threading.get_ident()}  # every sink ran on the pumping thread
        assert eng.active == 0  # finished requests are forgotten on both sides without a message
        endless = Sink()
        eng.submit(GenerationRequest(tok.encode("x"), SamplingParams(temperature=0, max_new_tokens=10**6,
                                                                     ignore_eos=True), endless))
        eng._proc.kill()
        while eng.pump():
            pass
        assert endless.events[-1].finish_reason == "error"
        with pytest.raises(RuntimeError, match="exited"):
            eng.submit(GenerationRequest(tok.encode("x"), SamplingParams(), Sink()))
    finally:
        eng.stop()


def test_events_held_over_an_interval_merge_into_the_same_stream(tok):
    """With ``event_interval`` the child merges what a running choice makes meanwhile; its first event and its
    last cross at once. With an interval longer than the run each request gets exactly those two events, and
    their tokens, log-probabilities and text are those of the engine that sends every step's events."""
    model = _model(tok, "lstm")
    merged = EngineProcess(model, tok, max_batch=4, threads=1, event_interval=3600.0)
    try:
        sinks = _run(merged, tok, PROMPTS)
    finally:
        merged.stop()
    for i, (prompt, sink) in enumerate(zip(PROMPTS, sinks)):
        alone = generate(model, tok, [prompt], temperature=0, max_new_tokens=10 + 10 * i, ignore_eos=True)[0]
        assert len(sink.events) == 2
        assert sink.ids() == alone.token_ids
        assert [lp.token_id for e in sink.events for lp in e.logprobs] == alone.token_ids
        assert "".join(e.text for e in sink.events) == alone.text
        last = sink.events[-1]
        assert last.finish_reason == "length" and last.completion_tokens == 10 + 10 * i


def test_outbox_sends_firsts_and_lasts_at_once_and_the_rest_per_interval(monkeypatch):
    """The child's outbox, with a clock of its own: a choice's first event and its finished one go at once
    (with what it held before), the others wait for the interval; a cancelled request's held events are
    dropped."""
    from lmforge.inference import engine_proc
    from lmforge.inference.engine_seq import Event

    class Conn:
        def __init__(self):
            self.sent = []

        def send(self, msg):
            self.sent.append(msg[2])

    now = [100.0]
    monkeypatch.setattr(engine_proc.time, "monotonic", lambda: now[0])
    conn = Conn()
    box = engine_proc._Outbox(conn, 0.02)
    a, b = engine_proc._Remote(1), engine_proc._Remote(2)

    def ev(text, reason=None, n=0):
        return Event(0, text, [ord(c) for c in text], [], reason, n, 3)

    box.add(1, [(a, ev("H", n=1))])  # a's first: at once
    box.add(2, [(a, ev("e", n=2)), (b, ev("x", n=1))])  # b's first: at once; a's second waits
    assert [[(m[0], m[2]) for m in msg] for msg in conn.sent] == [[(1, "H")], [(2, "x")]]
    box.add(3, [(a, ev("l", n=3)), (b, ev("y", n=2))])
    now[0] += 0.03  # the interval is over: everything held goes, merged per choice
    box.add(4, [(a, ev("l", n=4))])
    assert [(m[0], m[2], m[3], m[6]) for m in conn.sent[2]] == [(1, "ell", [101, 108, 108], 4), (2, "y", [121], 2)]
    box.add(5, [(b, ev("z", n=3))])
    box.add(6, [(a, ev("o", "length", n=5))])  # a finishes: at once; b's held "z" waits
    assert [(m[0], m[2], m[5]) for m in conn.sent[3]] == [(1, "o", "length")]
    box.cancelled.append(2)  # b is cancelled: its held text never crosses
    now[0] += 1
    box.add(7, [])
    assert len(conn.sent) == 4 and not box.held
