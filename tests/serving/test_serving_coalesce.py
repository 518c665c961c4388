"""Streams that fall behind the engine: the tokens waiting for a stream go out as one server-sent event.

The server's event loop is made to lag on purpose (a blocking sleep scheduled on it while the engine keeps
generating), then the streamed answer is checked against the same request answered without streaming
(greedy, so both are the same tokens): the deltas concatenate to the same text, every token's log-probability
is there once and in order, and some events carry several tokens.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

MESSAGES = [{"role": "user", "content": "Speak, speak."}]


def _events(lines: list[str]) -> list[dict]:
    return [json.loads(line[6:]) for line in lines if line.startswith("data: {")]


def _stream_lagging(srv: Any, path: str, body: dict, lag_s: float = 0.6) -> list[dict]:
    """Streams ``body``; after the first event with generated text, blocks the server's event loop for
    ``lag_s`` (the engine runs on its own thread and keeps generating meanwhile)."""
    loop = srv.server.servers[0].get_loop()
    lines, lagged = [], False
    with httpx.stream("POST", srv.url + path, json={**body, "stream": True}, timeout=60) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line:
                lines.append(line)
            if not lagged and line.startswith("data: {"):
                choice = (json.loads(line[6:])["choices"] or [{}])[0]
                if choice.get("text") or choice.get("delta", {}).get("content"):
                    loop.call_soon_threadsafe(time.sleep, lag_s)
                    lagged = True
    assert lagged and lines[-1] == "data: [DONE]"
    return _events(lines)


def test_chat_stream_that_lags_gets_several_tokens_per_event(serve, tiny_lm):
    srv = serve(tiny_lm)
    body = {"messages": MESSAGES, "temperature": 0, "max_tokens": 48, "logprobs": True, "top_logprobs": 2}
    whole = httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=60).json()["choices"][0]
    events = _stream_lagging(srv, "/v1/chat/completions", body)
    content = [e["choices"][0] for e in events if e["choices"] and e["choices"][0]["delta"].get("content")]
    assert "".join(c["delta"]["content"] for c in content) == whole["message"]["content"]
    streamed = [t for e in events if e["choices"] and e["choices"][0]["logprobs"]
                for t in e["choices"][0]["logprobs"]["content"]]
    expected = whole["logprobs"]["content"]
    assert [t["token"] for t in streamed] == [t["token"] for t in expected]
    assert [t["logprob"] for t in streamed] == pytest.approx([t["logprob"] for t in expected], abs=1e-5)
    assert [[a["token"] for a in t["top_logprobs"]] for t in streamed] == \
        [[a["token"] for a in t["top_logprobs"]] for t in expected]
    per_event = [len(c["logprobs"]["content"]) for c in content]
    assert max(per_event) >= 5, per_event  # the tokens made while the loop was blocked came together
    assert len(content) < len(expected)
    assert events[-1]["choices"] == [] or events[-1]["choices"][0]["finish_reason"] == "length"


def test_completions_stream_that_lags_keeps_every_token(serve, tiny_lm):
    srv = serve(tiny_lm)
    body = {"prompt": "First Citizen:", "temperature": 0, "max_tokens": 48, "logprobs": 1}
    whole = httpx.post(srv.url + "/v1/completions", json=body, timeout=60).json()["choices"][0]
    events = _stream_lagging(srv, "/v1/completions", body)
    choices = [e["choices"][0] for e in events if e["choices"]]
    assert "".join(c["text"] for c in choices) == whole["text"]
    lps = [c["logprobs"] for c in choices if c["logprobs"]]
    assert [t for lp in lps for t in lp["tokens"]] == whole["logprobs"]["tokens"]
    assert [o for lp in lps for o in lp["text_offset"]] == whole["logprobs"]["text_offset"]
    assert [v for lp in lps for v in lp["token_logprobs"]] == pytest.approx(whole["logprobs"]["token_logprobs"],
                                                                           abs=1e-5)
    assert max(len(lp["tokens"]) for lp in lps) >= 5
    assert choices[-1]["finish_reason"] == "length"


def test_a_stream_that_keeps_up_gets_one_token_per_event(serve):
    """A slow generation (100 ms a token, the reader idle in between): no event merges tokens."""
    from serving_fakes import FakeLM, reply_for, render_chat

    srv = serve(FakeLM(delay=0.1))
    body = {"messages": MESSAGES, "max_tokens": 8, "stream": True}
    resp = httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=60)
    deltas = [e["choices"][0]["delta"].get("content") for e in _events(resp.text.split("\n")) if e["choices"]]
    deltas = [d for d in deltas if d]
    assert "".join(deltas) == reply_for(render_chat(MESSAGES))[:8].lstrip()
    assert all(len(d) == 1 for d in deltas), deltas


@pytest.mark.parametrize("engine_process", [False, True])
def test_stream_interval_spaces_the_writes_and_keeps_every_token(serve, tiny_lstm, engine_process):
    """With ``stream_interval`` (in the server's process or with the engine in its own), the deltas still
    concatenate to the non-streamed answer, token by token, several tokens per event, and the stream closes
    with usage and [DONE]."""
    interval = 0.15
    srv = serve(tiny_lstm, stream_interval=interval, engine_process=engine_process)
    body = {"messages": MESSAGES, "temperature": 0, "max_tokens": 120, "logprobs": True}
    whole = httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=60).json()["choices"][0]
    lines = []
    with httpx.stream("POST", srv.url + "/v1/chat/completions", timeout=60,
                      json={**body, "stream": True, "stream_options": {"include_usage": True}}) as resp:
        lines = [line for line in resp.iter_lines() if line]
    events = _events(lines)
    content = [e["choices"][0] for e in events if e["choices"] and e["choices"][0]["delta"].get("content")]
    assert "".join(c["delta"]["content"] for c in content) == whole["message"]["content"]
    streamed = [t["token"] for c in content for t in c["logprobs"]["content"]]
    assert streamed == [t["token"] for t in whole["logprobs"]["content"]]
    assert events[-1]["usage"]["completion_tokens"] == len(streamed) and lines[-1] == "data: [DONE]"
    assert len(content) < len(streamed)  # several tokens per event


@pytest.mark.parametrize("interval", [0.0, 0.2])
def test_event_stream_writes_first_at_once_then_once_per_interval_and_closes_with_the_last(interval):
    """Events reach a stream at chosen times: the head goes out with the first event, at once; with an interval
    the next ones wait for it and go out merged, but the finishing one (before the interval is over) sends them
    at once and closes the stream in the same write."""
    import asyncio

    from lmforge.inference.engine import Event
    from lmforge.serving.backend import Generation
    from lmforge.serving.metrics import Metrics
    from lmforge.serving.responses import event_stream

    async def scenario() -> list[tuple[float, bytes, bool]]:
        loop = asyncio.get_running_loop()
        gen = Generation(1, Metrics({}))
        for k, at in enumerate((0.0, 0.01, 0.02, 0.25, 0.27)):
            event = Event(0, f"t{k} ", [k], [], "stop" if k == 4 else None, k + 1, 2)
            loop.call_later(at, gen.put, event)
        render = lambda e: [f"[{e.text}{e.finish_reason or ''}]".encode()]  # noqa: E731
        resp = event_stream(gen, render, [b"<head>"], lambda: [b"<usage>"], interval)
        start, out = loop.time(), []
        async for chunk, last in resp.chunks:
            out.append((loop.time() - start, chunk, last))
        return out

    writes = asyncio.run(scenario())
    assert writes[0][1] == b"<head>[t0 ]" and writes[0][0] < 0.1
    assert [last for *_, last in writes] == [False] * (len(writes) - 1) + [True]  # the last one ends the body
    if interval:
        assert [w for _, w, _ in writes[1:]] == [b"[t1 t2 ]", b"[t3 t4 stop]<usage>data: [DONE]\n\n"]
        assert interval * 0.9 <= writes[1][0] < 0.25 <= writes[2][0] < 0.25 + interval * 0.9
    else:
        assert [w for _, w, _ in writes[1:]] == [b"[t1 ]", b"[t2 ]", b"[t3 ]", b"[t4 stop]<usage>data: [DONE]\n\n"]


def test_coalesce_merges_each_choice_in_order_and_leaves_the_events_alone():
    from lmforge.inference.engine import Event
    from lmforge.serving.backend import coalesce

    events = [Event(1, "x", [7], ["l7"], None, 1, 3), Event(0, "a", [1], ["l1"], None, 1, 3),
              Event(1, "y", [8], ["l8"], "stop", 2, 3), Event(0, "b", [2], ["l2"], None, 2, 3),
              Event(0, "c", [3], ["l3"], "length", 3, 3), Event(2, "z", [9], [], None, 1, 3)]
    before = [(e.text, list(e.token_ids)) for e in events]
    merged = coalesce(events)
    assert [(m.index, m.text, m.token_ids, m.logprobs, m.finish_reason, m.completion_tokens) for m in merged] == [
        (1, "xy", [7, 8], ["l7", "l8"], "stop", 2), (0, "abc", [1, 2, 3], ["l1", "l2", "l3"], "length", 3),
        (2, "z", [9], [], None, 1)]
    assert [(e.text, e.token_ids) for e in events] == before
