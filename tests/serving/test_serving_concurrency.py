"""Concurrent requests on real models: no shared decoding state, and disconnects stop real generations."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import pytest

PROMPTS = ["Speak, speak.", "All:", "First Citizen:", "famish?"]


def _stream_text(url: str, body: dict) -> str:
    resp = httpx.post(url + "/v1/chat/completions", json={**body, "stream": True}, timeout=60)
    assert resp.status_code == 200, resp.text
    assert resp.text.endswith("data: [DONE]\n\n")
    text = ""
    for line in resp.text.split("\n"):
        if line.startswith("data: {"):
            event = json.loads(line[6:])
            for choice in event.get("choices", []):
                text += choice["delta"].get("content") or ""
    return text


@pytest.mark.slow
@pytest.mark.parametrize("family,serialize", [("transformer", True), ("transformer", False), ("lstm", False)])
def test_concurrent_seeded_streams_equal_sequential_ones(serve, tiny_lm, tiny_lstm, family, serialize):
    """Four clients at once, each with its own prompt and seed, get exactly what each gets alone; with
    ``serialize=False`` the model steps of different requests really run at the same time in threads."""
    lm = tiny_lm if family == "transformer" else tiny_lstm
    bodies = [{"messages": [{"role": "user", "content": p}], "temperature": 1.0, "seed": 100 + i,
               "max_tokens": 24} for i, p in enumerate(PROMPTS)]
    expected = ["".join(c.text for c in lm.stream_chat(b["messages"], temperature=1.0, seed=b["seed"],
                                                       max_new_tokens=24)) for b in bodies]
    assert len(set(expected)) == len(expected)
    srv = serve(lm, max_concurrency=len(bodies), serialize=serialize)
    got: dict[int, str] = {}
    threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, _stream_text(srv.url, bodies[i])))
               for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [got.get(i) for i in range(len(bodies))] == expected


class CountingLM:
    """Wraps a real LM and counts the chunks pulled from ``stream_chat``."""

    def __init__(self, lm: Any) -> None:
        self._lm = lm
        self.pulled = 0
        self.closed = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lm, name)

    def stream_chat(self, messages: list, **kw: Any):
        try:
            for chunk in self._lm.stream_chat(messages, **kw):
                self.pulled += 1
                yield chunk
        finally:
            self.closed.set()


def _stream_five_events_and_leave(url: str, body: dict) -> None:
    with httpx.Client(base_url=url, timeout=30) as c:
        with c.stream("POST", "/v1/chat/completions", json=body) as resp:
            assert resp.status_code == 200
            seen = 0
            for line in resp.iter_lines():
                seen += line.startswith("data: {")
                if seen == 5:
                    break


def _wait_idle(url: str) -> dict:
    deadline = time.monotonic() + 5
    health = httpx.get(url + "/health").json()
    while health["active"] and time.monotonic() < deadline:
        time.sleep(0.02)
        health = httpx.get(url + "/health").json()
    return health


LONG = {"messages": [{"role": "user", "content": "All:"}], "max_tokens": 20000, "temperature": 1.0, "seed": 1,
        "stream": True}


def test_disconnect_stops_a_real_generation(serve, tiny_lstm):
    """Without batching: the worker stops pulling the facade's stream once the client leaves."""
    lm = CountingLM(tiny_lstm)  # an LSTM has no context limit, so 20000 tokens is a valid (long) request
    srv = serve(lm, batching=False)
    _stream_five_events_and_leave(srv.url, LONG)
    assert lm.closed.wait(5), "the generation was not stopped after the client left"
    pulled = lm.pulled
    time.sleep(0.2)
    assert lm.pulled == pulled < 20000
    assert _wait_idle(srv.url)["active"] == 0


@pytest.mark.parametrize("engine_process", [False, True])
def test_disconnect_frees_the_batching_slot(serve, tiny_lstm, engine_process):
    """With the batching engine, in the server's process or its own: the sequence leaves the batch and the
    engine stops stepping."""
    srv = serve(tiny_lstm, max_batch=2, engine_process=engine_process)
    engine = srv.app.state.server.backend.engine
    _stream_five_events_and_leave(srv.url, LONG)
    assert _wait_idle(srv.url)["active"] == 0, "the slot was not freed after the client left"
    steps = engine.steps
    time.sleep(0.2)
    assert engine.steps == steps < 20000
    # both slots are usable again: two requests at once complete
    body = {"messages": [{"role": "user", "content": "All:"}], "max_tokens": 5}
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        for _ in range(2):
            assert c.post("/v1/chat/completions", json=body).status_code == 200


def test_the_server_falls_back_to_the_engine_thread_when_the_process_cannot_start(serve, tiny_lstm, monkeypatch,
                                                                                   caplog):
    from lmforge.inference import engine_proc

    def refuse(*args, **kwargs):
        raise RuntimeError("the engine process could not load the model: (test)")

    monkeypatch.setattr(engine_proc.EngineProcess, "__init__", refuse)
    srv = serve(tiny_lstm, engine_process=True)
    assert "running the engine in this process" in caplog.text
    body = {"messages": [{"role": "user", "content": "All:"}], "max_tokens": 5}
    assert httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=30).status_code == 200
