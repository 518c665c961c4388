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
