"""The server's HTTP behaviour, checked with httpx against a real uvicorn server and the fake engine
(whose output is known by construction, see conftest.py)."""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
import time

import httpx
import numpy as np
import pytest
from serving_fakes import FakeLM, FakeTranslator, render_chat, reply_for

from lmforge.errors import LMForgeError
from lmforge.inference.sampling import SamplingParams

USER = [{"role": "user", "content": "hello there"}]


def events(resp: httpx.Response) -> list[dict]:
    """The JSON payloads of an SSE body, after checking it ends with ``data: [DONE]``."""
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.text.endswith("data: [DONE]\n\n")
    lines = [line for line in resp.text.split("\n") if line]
    assert all(line.startswith("data: ") for line in lines)
    return [json.loads(line[6:]) for line in lines[:-1]]


def assert_error(resp: httpx.Response, status: int, code: str | None = None, param: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and len(err["message"]) > 10
    if code is not None:
        assert err["code"] == code
    if param is not None:
        assert err["param"] == param
    return err


def test_models_health_and_unknown_routes(serve):
    srv = serve(FakeLM())
    with httpx.Client(base_url=srv.url) as c:
        models = c.get("/v1/models").json()
        assert [m["id"] for m in models["data"]] == ["fake-lm"]
        assert models["data"][0]["lmforge"] == {"kind": "lm", "max_context": 64}
        assert c.get("/v1/models/fake-lm").json()["id"] == "fake-lm"
        assert_error(c.get("/v1/models/gpt-4"), 404, "model_not_found", "model")
        assert c.get("/health").json() == {"status": "ok", "model": "fake-lm", "kind": "lm", "batching": False, "active": 0,
                                           "queued": 0}
        assert_error(c.get("/v1/nothing"), 404, "not_found")
        assert_error(c.delete("/v1/models"), 405, "method_not_allowed")


def test_chat_completion_text_finish_reason_and_usage(serve):
    lm = FakeLM()
    srv = serve(lm)
    prompt = render_chat(USER)
    with httpx.Client(base_url=srv.url) as c:
        short = c.post("/v1/chat/completions", json={"model": "fake-lm", "messages": USER, "max_tokens": 10}).json()
        full = c.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 64}).json()
    assert short["object"] == "chat.completion" and short["id"].startswith("chatcmpl-")
    choice = short["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": reply_for(prompt)[:10]}
    assert choice["finish_reason"] == "length"
    assert short["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": 10, "total_tokens": len(prompt) + 10}
    assert full["choices"][0]["message"]["content"] == reply_for(prompt)
    assert full["choices"][0]["finish_reason"] == "stop"


def test_chat_stream_is_openai_chunk_format(serve):
    srv = serve(FakeLM())
    prompt = render_chat(USER)
    body = {"messages": USER, "max_tokens": 12, "stream": True}
    with httpx.Client(base_url=srv.url) as c:
        plain = events(c.post("/v1/chat/completions", json=body))
        with_usage = events(c.post("/v1/chat/completions", json={**body, "stream_options": {"include_usage": True}}))
    assert {e["object"] for e in plain} == {"chat.completion.chunk"}
    assert len({e["id"] for e in plain}) == 1
    assert plain[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in plain)
    assert text == reply_for(prompt)[:12]
    # role, the text (one chunk per token; fewer when the writer lags behind this instant fake model, as the
    # tokens waiting then share a chunk: tests/serving/test_serving_coalesce.py), finish
    assert 3 <= len(plain) <= 1 + 12 + 1
    assert plain[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
    assert all("usage" not in e for e in plain)
    assert with_usage[-1]["choices"] == []
    assert with_usage[-1]["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": 12,
                                       "total_tokens": len(prompt) + 12}


def test_sampling_fields_reach_the_sampler_under_its_names(serve):
    lm = FakeLM()
    srv = serve(lm)
    body = {"messages": USER, "temperature": 0.7, "top_p": 0.9, "top_k": 5, "min_p": 0.1, "repetition_penalty": 1.2,
            "presence_penalty": 0.5, "frequency_penalty": 0.25, "stop": "x", "seed": 3, "max_tokens": 7}
    with httpx.Client(base_url=srv.url) as c:
        assert c.post("/v1/chat/completions", json=body).status_code == 200
        assert c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 5}).status_code == 200
    got = {k: v for k, v in lm.calls[0].items() if k != "prompt"}
    assert got == {"temperature": 0.7, "top_p": 0.9, "top_k": 5, "min_p": 0.1, "repetition_penalty": 1.2,
                   "presence_penalty": 0.5, "frequency_penalty": 0.25, "stop": ["x"], "seed": 3, "max_new_tokens": 7}
    params = SamplingParams.from_kwargs(**got)  # the names are the real sampler's fields
    assert (params.top_k, params.stop, params.max_new_tokens) == (5, ["x"], 7)
    # Unset options are left to the sampler's defaults.
    assert {k: v for k, v in lm.calls[1].items() if k != "prompt"} == {"max_new_tokens": 5}


def test_default_max_tokens_is_capped_by_the_context(serve):
    lm = FakeLM()
    srv = serve(lm, default_max_tokens=256)
    with httpx.Client(base_url=srv.url) as c:
        c.post("/v1/chat/completions", json={"messages": USER})
        c.post("/v1/chat/completions", json={"messages": USER, "max_completion_tokens": 9})
    assert lm.calls[0]["max_new_tokens"] == 64
    assert lm.calls[1]["max_new_tokens"] == 9


def test_n_choices_are_seeded_distinct_and_reproducible(serve):
    srv = serve(FakeLM())
    prompt = render_chat(USER)
    body = {"messages": USER, "n": 3, "seed": 5, "temperature": 1.0, "max_tokens": 20}
    with httpx.Client(base_url=srv.url) as c:
        first = c.post("/v1/chat/completions", json=body).json()
        again = c.post("/v1/chat/completions", json=body).json()
        streamed = events(c.post("/v1/chat/completions", json={**body, "stream": True}))
    texts = [ch["message"]["content"] for ch in first["choices"]]
    assert texts == [reply_for(prompt, 5 + i)[:20] for i in range(3)]
    assert len(set(texts)) == 3
    assert texts == [ch["message"]["content"] for ch in again["choices"]]
    assert [ch["index"] for ch in first["choices"]] == [0, 1, 2]
    assert first["usage"]["completion_tokens"] == 60
    per_index = {i: "" for i in range(3)}
    for e in streamed:
        for ch in e["choices"]:
            per_index[ch["index"]] += ch["delta"].get("content", "")
    assert [per_index[i] for i in range(3)] == texts


def test_completions_prompt_list_n_and_stream(serve):
    srv = serve(FakeLM())
    with httpx.Client(base_url=srv.url) as c:
        out = c.post("/v1/completions", json={"prompt": ["ab", "cd"], "n": 2, "seed": 1, "max_tokens": 6,
                                              "temperature": 1.0}).json()
        greedy = c.post("/v1/completions", json={"prompt": "once upon", "max_tokens": 64, "temperature": 0,
                                                 "stop": ["up"]}).json()
        streamed = events(c.post("/v1/completions", json={"prompt": "once upon", "max_tokens": 8, "stream": True,
                                                          "stream_options": {"include_usage": True}}))
    assert out["object"] == "text_completion"
    # OpenAI's order: prompt-major, then choice (index = prompt * n + choice).
    assert [ch["text"] for ch in out["choices"]] == [reply_for(p, 1 + c)[:6] for p in ("ab", "cd") for c in range(2)]
    assert out["usage"] == {"prompt_tokens": 4, "completion_tokens": 24, "total_tokens": 28}
    full = reply_for("once upon")
    assert greedy["choices"][0]["text"] == full[: full.find("up")]
    assert greedy["choices"][0]["finish_reason"] == "stop"
    assert {e["object"] for e in streamed} == {"text_completion"}
    assert "".join(ch["text"] for e in streamed for ch in e["choices"]) == full[:8]
    assert streamed[-2]["choices"][0]["finish_reason"] == "length"
    assert streamed[-1]["usage"] == {"prompt_tokens": 9, "completion_tokens": 8, "total_tokens": 17}


MSG = {"role": "user", "content": "x"}


@pytest.mark.parametrize("route,body,status,code,param", [
    ("/v1/chat/completions", b"{not json", 400, "invalid_json", None),
    ("/v1/chat/completions", b"[1, 2]", 400, "invalid_body", None),
    ("/v1/chat/completions", b"", 400, None, None),
    ("/v1/chat/completions", {"messages": []}, 400, "invalid_value", "messages"),
    ("/v1/chat/completions", {}, 400, "missing_required_parameter", "messages"),
    ("/v1/chat/completions", {"messages": "hi"}, 400, "invalid_value", "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, 400, "invalid_value",
     "messages[0].role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400, "invalid_value", None),
    ("/v1/chat/completions", {"messages": [MSG], "temperature": "hot"}, 400, "invalid_value", "temperature"),
    ("/v1/chat/completions", {"messages": [MSG], "temperature": 3}, 400, "invalid_value", "temperature"),
    ("/v1/chat/completions", {"messages": [MSG], "n": True}, 400, "invalid_value", "n"),
    ("/v1/chat/completions", {"messages": [MSG], "n": 0}, 400, "invalid_value", "n"),
    ("/v1/chat/completions", {"messages": [MSG], "max_tokens": "10"}, 400, "invalid_value", "max_tokens"),
    ("/v1/chat/completions", {"messages": [MSG], "max_tokens": 65}, 400, "context_length_exceeded", "max_tokens"),
    ("/v1/chat/completions", {"messages": [MSG], "max_tokens": 0}, 400, "invalid_value", "max_tokens"),
    ("/v1/chat/completions", {"messages": [MSG], "stop": ["a", "b", "c", "d", "e"]}, 400, "invalid_value", "stop"),
    ("/v1/chat/completions", {"messages": [MSG], "seed": -1}, 400, "invalid_value", "seed"),
    ("/v1/chat/completions", {"messages": [MSG], "temprature": 1}, 400, "unknown_parameter", "temprature"),
    ("/v1/chat/completions", {"messages": [MSG], "model": "gpt-4"}, 404, "model_not_found", "model"),
    ("/v1/chat/completions", {"messages": [MSG], "stream": "yes"}, 400, "invalid_value", "stream"),
    ("/v1/completions", {"prompt": []}, 400, "invalid_value", "prompt"),
    ("/v1/completions", {"prompt": [1, -2, 3]}, 400, "invalid_value", None),
    ("/v1/completions", {"prompt": [[]]}, 400, "invalid_value", None),
    ("/v1/chat/completions", {"messages": [MSG], "tools": []}, 400, "unsupported_parameter", "tools"),
    ("/v1/completions", {"prompt": "x", "suffix": "y"}, 400, "unsupported_parameter", "suffix"),
    ("/v1/chat/completions", {"messages": [MSG], "response_format": {"type": "json_object"}}, 400,
     "unsupported_parameter", "response_format.type"),
    ("/v1/chat/completions", {"messages": [MSG], "logit_bias": {"x": 1}}, 400, "invalid_value", "logit_bias.x.[key]"),
    ("/v1/chat/completions", {"messages": [MSG], "logit_bias": {"1": 101}}, 400, "invalid_value", "logit_bias.1"),
    ("/v1/chat/completions", {"messages": [MSG], "top_logprobs": 21}, 400, "invalid_value", "top_logprobs"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 10**9}, 400, "context_length_exceeded", "max_tokens"),
    ("/v1/embeddings", {"input": []}, 400, "invalid_value", "input"),
    ("/v1/embeddings", {"input": ["ok", ""]}, 400, "invalid_value", "input"),
    ("/v1/embeddings", {"input": "x", "encoding_format": "hex"}, 400, "invalid_value", "encoding_format"),
    ("/v1/translations", {"input": ["x"]}, 400, "unsupported_for_model", None),
])
def test_invalid_requests_get_openai_errors(serve, route, body, status, code, param):
    srv = serve(FakeLM())
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with httpx.Client(base_url=srv.url) as c:
        resp = c.post(route, content=raw, headers={"content-type": "application/json"})
        assert_error(resp, status, code, param)
        assert c.get("/health").json()["status"] == "ok"  # still serving


def test_oversized_bodies_get_413_before_reaching_the_model(serve):
    lm = FakeLM()
    srv = serve(lm, max_body_bytes=2000)
    big = json.dumps({"messages": [{"role": "user", "content": "y" * 5000}]}).encode()

    def chunked():  # no Content-Length: the server must count the bytes it receives
        for i in range(0, len(big), 500):
            yield big[i:i + 500]

    with httpx.Client(base_url=srv.url) as c:
        assert_error(c.post("/v1/chat/completions", content=big, headers={"content-type": "application/json"}),
                     413, "request_too_large")
        resp = c.post("/v1/chat/completions", content=chunked(), headers={"content-type": "application/json"})
        assert "content-length" not in resp.request.headers
        assert_error(resp, 413, "request_too_large")
        small = {"messages": [{"role": "user", "content": "y" * 100}], "max_tokens": 2}
        assert c.post("/v1/chat/completions", json=small).status_code == 200
    assert len(lm.calls) == 1


def test_a_client_that_stalls_mid_body_gets_408_not_a_hung_connection(serve):
    srv = serve(FakeLM(), body_timeout_s=0.5)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{\"messages\"")
        start = time.monotonic()
        reply = b""
        while b"request_timeout" not in reply and time.monotonic() - start < 4:
            data = s.recv(4096)
            if not data:
                break
            reply += data
        reply = reply.decode()
    assert reply.startswith("HTTP/1.1 408")
    assert '"code":"request_timeout"' in reply.replace(" ", "")
    assert time.monotonic() - start < 4


def test_api_key_guards_every_route_but_health_and_page(serve):
    srv = serve(FakeLM(), api_key="s3cret-key")
    with httpx.Client(base_url=srv.url) as c:
        assert c.get("/health").status_code == 200
        assert c.get("/").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-key"},
                        {"Authorization": "Basic s3cret-key"}, {"Authorization": "Bearer s3cret-ke"}):
            err = assert_error(c.get("/v1/models", headers=headers), 401, "invalid_api_key")
            assert err["type"] == "authentication_error"
            assert_error(c.post("/v1/chat/completions", json={"messages": USER}, headers=headers), 401)
        good = {"Authorization": "Bearer s3cret-key"}
        assert c.get("/v1/models", headers=good).status_code == 200
        assert c.get("/v1/models", headers={"authorization": "bearer s3cret-key"}).status_code == 200
        assert c.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 2}, headers=good).status_code == 200


def _wait(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def test_requests_beyond_the_queue_get_429_and_queued_ones_finish(serve):
    lm = FakeLM()
    lm.gate = threading.Event()  # generations block until the gate opens
    srv = serve(lm, max_concurrency=1, max_queue=1)
    results: dict[str, int] = {}

    def call(tag: str, stream: bool) -> None:
        body = {"messages": USER, "max_tokens": 3, "stream": stream}
        results[tag] = httpx.post(f"{srv.url}/v1/chat/completions", json=body, timeout=20).status_code

    running = threading.Thread(target=call, args=("running", True))
    running.start()
    _wait(lambda: lm.active == 1)
    waiting = threading.Thread(target=call, args=("waiting", False))
    waiting.start()
    _wait(lambda: httpx.get(f"{srv.url}/health").json()["queued"] == 1)
    refused = httpx.post(f"{srv.url}/v1/chat/completions", json={"messages": USER, "max_tokens": 3})
    err = assert_error(refused, 429, "queue_full")
    assert err["type"] == "rate_limit_error"
    assert refused.headers["retry-after"] == "1"
    lm.gate.set()
    running.join(20)
    waiting.join(20)
    assert results == {"running": 200, "waiting": 200}
    assert lm.max_active == 1
    _wait(lambda: httpx.get(f"{srv.url}/health").json()["active"] == 0)


def test_a_client_disconnecting_mid_stream_stops_its_generation(serve):
    lm = FakeLM(delay=0.05)  # 24 tokens would take 1.2 s
    srv = serve(lm)
    with httpx.Client(base_url=srv.url, timeout=10) as c:
        with c.stream("POST", "/v1/chat/completions", json={"messages": USER, "stream": True}) as resp:
            lines = resp.iter_lines()
            got = [next(lines) for _ in range(6)]  # the role chunk and two tokens (blank lines between)
            assert got[0].startswith("data: ")
        _wait(lambda: lm.closed == 1, timeout=3)
        stopped_at = lm.tokens_generated
        time.sleep(0.3)
        assert lm.tokens_generated == stopped_at < 10
        _wait(lambda: c.get("/health").json()["active"] == 0, timeout=3)


def test_concurrent_streams_do_not_mix_their_outputs(serve):
    lm = FakeLM(delay=0.005)
    srv = serve(lm, max_concurrency=4)
    out: dict[int, str] = {}

    def worker(i: int) -> None:
        body = {"messages": [{"role": "user", "content": f"client {i}"}], "seed": i, "temperature": 1.0,
                "max_tokens": 24, "stream": True}
        resp = httpx.post(f"{srv.url}/v1/chat/completions", json=body, timeout=30)
        out[i] = "".join(e["choices"][0]["delta"].get("content", "") for e in events(resp) if e["choices"])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert out == {i: reply_for("", i) for i in range(8)}
    assert lm.max_active > 1  # the streams really were interleaved


def test_errors_raised_by_the_engine(serve):
    class Refusing(FakeLM):
        def stream_chat(self, messages, **kw):
            raise LMForgeError("the prompt is too long for this model; shorten it")
            yield  # a generator, as the facade's

    class Broken(FakeLM):
        def stream_chat(self, messages, **kw):
            for i, chunk in enumerate(super().stream_chat(messages, max_new_tokens=5)):
                if i == 2:
                    raise RuntimeError("boom")
                yield chunk

    with httpx.Client(base_url=serve(Refusing()).url) as c:
        err = assert_error(c.post("/v1/chat/completions", json={"messages": USER}), 400)
        assert "too long" in err["message"]
    with httpx.Client(base_url=serve(Broken()).url) as c:
        resp = c.post("/v1/chat/completions", json={"messages": USER, "stream": True})
    assert resp.status_code == 200
    payloads = [json.loads(line[6:]) for line in resp.text.split("\n") if line.startswith("data: {")]
    assert payloads[-1]["error"]["type"] == "server_error"
    assert "[DONE]" not in resp.text


def test_embeddings_float_and_base64(serve):
    lm = FakeLM()
    srv = serve(lm)
    texts = ["a cat", "a dog", "a cat"]
    with httpx.Client(base_url=srv.url) as c:
        floats = c.post("/v1/embeddings", json={"input": texts, "model": "fake-lm"}).json()
        b64 = c.post("/v1/embeddings", json={"input": texts, "encoding_format": "base64"}).json()
        one = c.post("/v1/embeddings", json={"input": "a cat"}).json()
    expected = lm.embed(texts)
    got = np.array([d["embedding"] for d in floats["data"]], dtype=np.float32)
    np.testing.assert_array_equal(got, expected)
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in b64["data"]])
    np.testing.assert_array_equal(decoded, expected)
    assert [d["index"] for d in floats["data"]] == [0, 1, 2]
    assert floats["usage"] == {"prompt_tokens": 15, "total_tokens": 15}
    np.testing.assert_array_equal(np.array(one["data"][0]["embedding"], dtype=np.float32), expected[0])


def test_translation_runs(serve):
    mt = FakeTranslator()
    srv = serve(mt)
    with httpx.Client(base_url=srv.url) as c:
        out = c.post("/v1/translations", json={"input": ["a b c", "hello world"], "beam": 3}).json()
        single = c.post("/v1/translations", json={"input": "x y", "model": "fake-mt", "max_len": 7}).json()
        assert c.get("/v1/models").json()["data"][0]["lmforge"]["kind"] == "translation"
        assert_error(c.post("/v1/chat/completions", json={"messages": USER}), 400, "unsupported_for_model")
        assert_error(c.post("/v1/embeddings", json={"input": "x"}), 400, "unsupported_for_model")
        assert_error(c.post("/v1/translations", json={"input": ["x"], "beam": 0}), 400, "invalid_value", "beam")
    assert [d["text"] for d in out["data"]] == ["c b a", "world hello"]
    assert single["data"] == [{"object": "translation", "index": 0, "text": "y x"}]
    assert mt.calls == [{"texts": ["a b c", "hello world"], "beam": 3, "max_len": None},
                        {"texts": ["x y"], "beam": 5, "max_len": 7}]


def test_the_page_is_self_contained(serve):
    srv = serve(FakeLM())
    resp = httpx.get(srv.url + "/")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in resp.headers["content-security-policy"]
    html = resp.text
    # Nothing is fetched from elsewhere: no absolute URLs, no external scripts, styles or fonts.
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html, re.I)
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", html, re.I)
    assert "@import" not in html and "url(" not in html
    for element in ('id="input"', 'id="send"', 'id="reset"', 'id="temperature"', 'id="top_p"', 'id="top_k"',
                    'id="max_tokens"', "/v1/chat/completions"):
        assert element in html


def test_message_content_parts_and_developer_role(serve):
    lm = FakeLM()
    srv = serve(lm)
    parts = [{"role": "developer", "content": "be brief"},
             {"role": "user", "content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "there"}]}]
    with httpx.Client(base_url=srv.url) as c:
        out = c.post("/v1/chat/completions", json={"messages": parts, "max_tokens": 30}).json()
        assert_error(c.post("/v1/chat/completions", json={"messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}), 400)
    expected_prompt = render_chat([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}])
    assert lm.calls[0]["prompt"] == expected_prompt
    assert out["choices"][0]["message"]["content"] == reply_for(expected_prompt)
