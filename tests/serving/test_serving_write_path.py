"""The server's write path: coalesced socket writes, headers sent with the first event, errors before the first
event answered with their own status, and FastAPI's OpenTelemetry hook off unless asked for (issue 15)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from typing import Any

import httpx
import pytest
from serving_fakes import FakeLM, LiveServer, reply_for, render_chat

from lmforge.errors import LMForgeError
from lmforge.serving.transport import CoalescingTransport, http_protocol

USER = [{"role": "user", "content": "hello there"}]


class _Recorder(asyncio.Protocol):
    """The protocol of the writing end: records flow-control calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_writing(self) -> None:
        self.calls.append("pause")

    def resume_writing(self) -> None:
        self.calls.append("resume")


async def _pair() -> tuple[CoalescingTransport, Any, _Recorder, socket.socket]:
    """A coalescing transport over one end of a socket pair; the other end, blocking, for the test to read."""
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    proto = _Recorder()
    transport, _ = await loop.connect_accepted_socket(lambda: proto, ours)
    return CoalescingTransport(transport, loop), transport, proto, theirs


def _read_all(sock: socket.socket, n: int, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    out = b""
    while len(out) < n:
        data = sock.recv(1 << 20)
        if not data:
            break
        out += data
    return out


def test_writes_of_one_iteration_leave_as_one_complete_and_in_order():
    async def scenario() -> tuple[list[bytes], bytes, bytes]:
        wrapped, real, _, theirs = await _pair()
        sent: list[bytes] = []
        write = real.write
        real.write = lambda data: (sent.append(bytes(data)), write(data))  # count the socket transport's writes
        pieces = [b"HTTP/1.1 200 OK\r\n\r\n", bytearray(b"first "), memoryview(b"second "), b"", b"third"]
        for piece in pieces:
            wrapped.write(piece)
        pieces[1][:] = b"XXXXXX"  # a caller reusing its buffer after write() must not change what is sent
        assert sent == [] and wrapped.get_write_buffer_size() == 37  # nothing sent within the iteration
        await asyncio.sleep(0)
        wrapped.writelines([b"later ", b"ones"])
        await asyncio.sleep(0)
        first = _read_all(theirs, 37 + 10)
        wrapped.write(b"closing")
        wrapped.close()  # sends what is buffered, then closes
        await asyncio.sleep(0.05)  # the socket transport closes the socket on the loop's next turn
        rest = _read_all(theirs, 1 << 20)
        theirs.close()
        return sent, first, rest

    sent, first, rest = asyncio.run(scenario())
    assert sent == [b"HTTP/1.1 200 OK\r\n\r\nfirst second third", b"later ones", b"closing"]
    assert first == b"HTTP/1.1 200 OK\r\n\r\nfirst second thirdlater ones"
    assert rest == b"closing"  # then EOF: the read stopped at an empty recv


def test_writes_after_the_peer_left_are_dropped_quietly(caplog):
    async def scenario() -> bool:
        wrapped, real, _, theirs = await _pair()
        theirs.close()
        for _ in range(20):  # the socket transport logs "socket.send() raised exception." from the 5th on
            wrapped.write(b"x" * 1000)
            await asyncio.sleep(0.01)
        return wrapped.is_closing() and real.is_closing()

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        assert asyncio.run(scenario())
    assert not [r for r in caplog.records if "socket.send" in r.getMessage()]


def test_flow_control_pauses_and_resumes_the_protocol_and_keeps_every_byte():
    async def scenario() -> tuple[list[str], bytes, bytes]:
        wrapped, _, proto, theirs = await _pair()
        wrapped.set_write_buffer_limits(high=1 << 16)  # the socket transport's own limits, through the wrapper
        payload = bytes(range(256)) * 16384  # 4 MiB: more than the socket buffers hold
        wrapped.write(payload[: 1 << 21])
        wrapped.write(payload[1 << 21:])
        assert proto.calls == []  # nothing reached the socket transport yet
        await asyncio.sleep(0)
        paused = list(proto.calls)
        got = await asyncio.get_running_loop().run_in_executor(None, _read_all, theirs, len(payload))
        for _ in range(100):
            if proto.calls[-1:] == ["resume"]:
                break
            await asyncio.sleep(0.01)
        wrapped.close()
        theirs.close()
        return paused + proto.calls[len(paused):], got, payload

    calls, got, payload = asyncio.run(scenario())
    assert calls == ["pause", "resume"]
    assert got == payload


def test_abort_drops_what_is_buffered():
    async def scenario() -> bytes:
        wrapped, _, _, theirs = await _pair()
        wrapped.write(b"never sent")
        wrapped.abort()
        await asyncio.sleep(0.05)
        return _read_all(theirs, 1)

    assert asyncio.run(scenario()) == b""


def _raw_stream(url: str, body: dict, then: Any = None) -> list[bytes]:
    """POSTs ``body`` on a raw socket and returns what each ``recv`` got until the chunked body ended."""
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
        if then is not None:
            then(sock)
        sock.settimeout(10)
        reads: list[bytes] = []
        while not b"".join(reads).endswith(b"\r\n0\r\n\r\n"):
            reads.append(sock.recv(1 << 16))
            assert reads[-1], "the server closed the connection"
        return reads


def test_a_stream_sends_its_headers_with_the_first_event_and_ends_its_body_with_the_last(serve):
    """Tokens 0.1 s apart (each its own write): the first read holds the status line, the headers, the role
    chunk and the first token; the last holds the last event, [DONE] and the end of the chunked body; and no
    byte arrives before the first token is made."""
    lm = FakeLM(delay=0.1)
    srv = serve(lm)

    def nothing_before_the_first_token(sock: socket.socket) -> None:
        sock.settimeout(0.05)
        with pytest.raises(socket.timeout):
            sock.recv(1 << 16)

    reads = _raw_stream(srv.url, {"messages": USER, "max_tokens": 4, "stream": True},
                        nothing_before_the_first_token)
    first, last = reads[0], reads[-1]
    assert first.startswith(b"HTTP/1.1 200 OK\r\n") and b"text/event-stream" in first
    events = [json.loads(line[6:]) for line in first.split(b"\r\n\r\n", 1)[1].split(b"\n") if line.startswith(b"data: {")]
    assert [e["choices"][0]["delta"] for e in events] == [
        {"role": "assistant", "content": ""}, {"content": reply_for(render_chat(USER))[0]}]
    assert last.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n") and b'"finish_reason": "length"' in last
    assert len(reads) >= 3  # the tokens between went out on their own


def test_a_client_leaving_before_the_first_event_stops_its_generation(serve):
    """No byte was sent yet (the headers wait for the first event), and the generation still stops."""
    import threading

    lm = FakeLM()
    lm.gate = threading.Event()  # the first token waits for it
    srv = serve(lm)
    data = json.dumps({"messages": USER, "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
        deadline = time.monotonic() + 5
        while not lm.active:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    time.sleep(0.2)  # the server notices the disconnect
    lm.gate.set()
    deadline = time.monotonic() + 5
    while lm.closed < 1 or httpx.get(srv.url + "/health").json()["active"]:
        assert time.monotonic() < deadline, "the generation went on after the client left"
        time.sleep(0.01)
    assert lm.tokens_generated <= 2


@pytest.mark.parametrize("failing_at,status,kind", [(0, 400, "invalid_request_error"), (1, 500, "server_error")])
def test_a_stream_failing_before_its_first_event_gets_its_own_status(serve, failing_at, status, kind):
    """Nothing was sent yet, so the error is an HTTP status with OpenAI's error object, not an event."""

    class Failing(FakeLM):
        def stream_chat(self, messages, **kw):
            if failing_at == 0:
                raise LMForgeError("the prompt is too long for this model; shorten it")
            raise RuntimeError("boom")
            yield  # a generator, as the facade's

    resp = httpx.post(serve(Failing()).url + "/v1/chat/completions", json={"messages": USER, "stream": True})
    assert resp.status_code == status and resp.headers["content-type"] == "application/json"
    assert resp.json()["error"]["type"] == kind


def test_the_cli_serves_through_the_coalescing_protocol_frozen_heap_and_telemetry_as_asked(tiny_run_dirs, monkeypatch):
    import uvicorn

    import lmforge.serving.app as app_module
    from lmforge.cli.main import main

    import gc

    seen: dict[str, Any] = {}
    create = app_module.create_app
    monkeypatch.setattr(app_module, "create_app", lambda *a, **kw: (seen.update(kw), create(*a, **kw))[1])

    def run(app: Any, **kw: Any) -> None:
        seen.update(http=kw["http"], frozen=gc.get_freeze_count())
        app.state.server.backend.shutdown()  # the engine's thread; uvicorn's lifespan would stop it

    monkeypatch.setattr(uvicorn, "run", run)
    try:
        for flag, wanted in (([], None), (["--otel"], True), (["--no-otel"], False)):
            gc.unfreeze()
            assert main(["serve", str(tiny_run_dirs["lstm"]), "--engine-thread", *flag]) == 0
            assert seen["telemetry"] is wanted and seen["http"] is http_protocol()
            assert seen["frozen"] > 10000  # what was loaded is out of the collector's way while serving
    finally:
        gc.unfreeze()


class _Spans:
    """An OpenTelemetry tracer provider (the API package only) that records the names of the spans started."""

    def __init__(self) -> None:
        from opentelemetry import trace

        names = self.names = []

        class Tracer(trace.NoOpTracer):
            def start_span(self, name: str, *args: Any, **kwargs: Any) -> Any:
                names.append(name)
                return super().start_span(name, *args, **kwargs)

        class Provider(trace.TracerProvider):
            def get_tracer(self, *args: Any, **kwargs: Any) -> Any:
                return Tracer()

        self.provider = Provider()


@pytest.mark.parametrize("flag,env,installed,traced", [
    (None, False, False, False), (None, True, False, True), (None, False, True, True), (False, True, True, False),
    (True, False, False, True)])
def test_fastapi_opentelemetry_runs_only_when_asked_for(monkeypatch, flag, env, installed, traced):
    """Off by default (lmforge has /metrics): a provider installed after the app was made then records nothing.
    On with ``telemetry=True``, with OTEL_* variables, or with a provider installed before the app is made."""
    import inspect
    import os

    from fastapi import FastAPI

    from lmforge.serving.app import create_app

    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        pytest.skip("this FastAPI has no native OpenTelemetry")
    from opentelemetry import trace  # FastAPI's dependency since it has native OpenTelemetry

    for name in [n for n in os.environ if n.startswith(("OTEL_", "FASTAPI_OTEL_"))]:
        monkeypatch.delenv(name)
    if env:
        monkeypatch.setenv("OTEL_SERVICE_NAME", "lmforge-test")
    spans = _Spans()
    if installed:
        monkeypatch.setattr(trace, "get_tracer_provider", lambda: spans.provider)
    app = create_app(FakeLM(), telemetry=flag)
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: spans.provider)
    with LiveServer(app) as srv:
        assert httpx.get(srv.url + "/v1/models").status_code == 200
        time.sleep(0.05)
    assert bool(spans.names) is traced, spans.names


def test_tokens_made_before_an_error_go_out_before_the_error_event():
    """Two tokens and an error waiting together: the tokens are sent (merged), then the error event ends the
    stream; an error with nothing sent before it is raised for the app's handlers (its own status)."""
    from lmforge.inference.engine import Event
    from lmforge.serving.generation import Generation
    from lmforge.serving.metrics import Metrics
    from lmforge.serving.responses import APIError, event_stream

    def render(e: Any) -> list[bytes]:
        return [f"[{e.text}]".encode()]

    async def scenario(first_is_error: bool) -> list[tuple[bytes, bool]]:
        gen = Generation(1, Metrics({}))
        if not first_is_error:
            gen.put(Event(0, "a", [1], [], None, 1, 2))
            gen.put(Event(0, "b", [2], [], None, 2, 2))
        gen.put(Event(0, "", [], [], "error", 2, 2, RuntimeError("boom")))
        resp = event_stream(gen, render, [b"<head>"], lambda: [b"<usage>"])
        return [chunk async for chunk in resp.chunks]

    chunks = asyncio.run(scenario(False))
    assert chunks[0] == (b"<head>[ab]", False)
    assert chunks[1][1] is True and json.loads(chunks[1][0][6:])["error"]["type"] == "server_error"
    assert len(chunks) == 2
    with pytest.raises(APIError) as info:
        asyncio.run(scenario(True))
    assert info.value.status == 500
