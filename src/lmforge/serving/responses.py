"""HTTP plumbing shared by the server's routes: OpenAI-style errors and server-sent events.

:class:`APIError` carries a status and OpenAI's error object; :func:`validation_error` turns a request that
failed validation into one, naming the offending field the way OpenAI does (``messages[0].role``);
:class:`SSEResponse` streams ``data: ...`` events (headers with the first, the end of the body with the last) and
always runs a close hook, so a generation is cancelled even when its client left before the first byte;
:func:`event_stream` streams a generation through it, and :class:`ChunkHead` encodes the head its events share
once per response.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any, AsyncIterator, Callable, Optional

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from lmforge.errors import LMForgeError
from lmforge.serving.schemas import UNSUPPORTED_FIELDS, error_body

__all__ = ["APIError", "ChunkHead", "validation_error", "sse", "SSEResponse", "event_stream"]

log = logging.getLogger(__name__)

# Values outside a Literal that clients do send, with the reason lmforge refuses them.
_UNSUPPORTED_VALUES = {
    "response_format.type": "lmforge generates free text only; it cannot constrain output to JSON "
                            "(json_object / json_schema); send {\"type\": \"text\"} or leave it out",
}


class APIError(Exception):
    """An error answered with ``status`` and OpenAI's error object."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(self.message, self.type, self.param, self.code), status_code=self.status)


# pydantic names the member of a union that failed ('str', 'list[constrained-int]'...): not a field
_UNION_TAG = re.compile(r"^(str|int|float|bool|constrained-\w+|[\w-]+\[.*\])$")


def _param(loc: tuple) -> Optional[str]:
    """('body', 'messages', 0, 'content') -> 'messages[0].content' (union member tags left out)."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(part, str) and _UNION_TAG.match(part):
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


def validation_error(err: RequestValidationError) -> APIError:
    first = err.errors()[0] if err.errors() else {"type": "", "loc": (), "msg": "invalid request"}
    kind, param = first.get("type", ""), _param(tuple(first.get("loc", ())))
    if kind == "json_invalid":
        return APIError(400, f"the request body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})",
                        code="invalid_json")
    if kind == "extra_forbidden" and param in UNSUPPORTED_FIELDS:
        return APIError(400, f"'{param}' is not supported by lmforge: {UNSUPPORTED_FIELDS[param]}", param=param,
                        code="unsupported_parameter")
    if kind == "literal_error" and param in _UNSUPPORTED_VALUES:
        return APIError(400, f"unsupported value for '{param}': {_UNSUPPORTED_VALUES[param]}", param=param,
                        code="unsupported_parameter")
    if kind == "extra_forbidden":
        return APIError(400, f"unrecognized request argument supplied: {param}", param=param,
                        code="unknown_parameter")
    if kind == "missing":
        return APIError(400, f"missing required parameter: {param}" if param else "the request body is missing",
                        param=param, code="missing_required_parameter")
    if param is None:
        return APIError(400, "the request body must be a JSON object sent with Content-Type: application/json",
                        code="invalid_body")
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return APIError(400, f"invalid value for '{param}': {msg}", param=param, code="invalid_value")


_encode = json.JSONEncoder(ensure_ascii=False).encode  # one encoder (json.dumps builds one per call with options)
_DONE = b"data: [DONE]\n\n"


def sse(obj: Any) -> bytes:
    return f"data: {_encode(obj)}\n\n".encode()


class ChunkHead:
    """The server-sent events of one response share their head (``id``, ``object``, ``created``, ``model``):
    it is encoded once, and each event encodes only its ``choices`` (and ``usage``). The bytes equal
    ``sse({**head, "choices": choices})``."""

    def __init__(self, head: dict[str, Any]) -> None:
        text = _encode({**head, "choices": 0})  # ends with '"choices": 0}'
        self._prefix = ("data: " + text[:-2]).encode()

    def choices(self, choices: list[dict[str, Any]]) -> bytes:
        return self._prefix + _encode(choices).encode() + b"}\n\n"

    def usage(self, usage: dict[str, Any]) -> bytes:
        return self._prefix + b'[], "usage": ' + _encode(usage).encode() + b"}\n\n"


Chunks = AsyncIterator[tuple[bytes, bool]]


class SSEResponse(Response):
    """Server-sent events from ``chunks`` (each with whether it is the last), in as few writes as HTTP allows.

    The status line and headers go out with the first chunk, not before: an error before any event can still be
    answered with its own status (the chunks raise it, the app's exception handlers answer), and the server
    writes the headers and the first event together. The last chunk ends the body in the same message. While it
    streams, the client leaving calls ``on_disconnect`` (one small task waits for it: no task group); and
    ``on_close`` always runs, even when the client left before the response started.
    """

    media_type = "text/event-stream"

    def __init__(self, chunks: Chunks, on_close: Callable[[], None], on_disconnect: Callable[[], None]) -> None:
        self.chunks = chunks
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close, self._on_disconnect = on_close, on_disconnect

    async def _listen(self, receive: Any) -> None:
        try:
            while (await receive())["type"] != "http.disconnect":
                pass
        except Exception:  # noqa: BLE001 - a server whose receive fails has no disconnect to report
            log.debug("listening for a disconnect failed", exc_info=True)
            return
        self._on_disconnect()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        listener = asyncio.ensure_future(self._listen(receive))
        started = ended = False
        try:
            async for chunk, last in self.chunks:
                if not started:
                    started = True
                    await send({"type": "http.response.start", "status": self.status_code,
                                "headers": self.raw_headers})
                await send({"type": "http.response.body", "body": chunk, "more_body": not last})
                ended = last
                if last:
                    break
        finally:
            listener.cancel()
            await self.chunks.aclose()  # type: ignore[attr-defined]
            self._on_close()
        if not ended and not listener.done():  # the chunks stopped early; close the body
            if not started:
                await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            await send({"type": "http.response.body", "body": b"", "more_body": False})


def _before_first_byte(err: Exception) -> Exception:
    """The exception that answers a stream failing before its first event (the app's handlers give it its
    status): the user's mistake as is (400), anything else as a logged 500."""
    if isinstance(err, LMForgeError):
        return err
    if isinstance(err, ValueError):
        return APIError(400, str(err), code="invalid_request")
    log.exception("generation failed before its first event")
    return APIError(500, "internal server error during generation", "server_error")


def event_stream(gen: Any, render: Callable[[Any], list[bytes]], head: list[bytes],
                 finish: Callable[[], list[bytes]], interval: float = 0.0) -> SSEResponse:
    """Server-sent events of a generation (a :class:`~lmforge.serving.generation.Generation`): ``head``, then
    ``render(event)`` for each event, then ``finish()`` and ``data: [DONE]``. An error before the first event
    gets its own status (400 or 500, with OpenAI's error object); after it, an error event ends the stream.
    Closing the response (the client left) cancels the generation.

    Writes are few: ``head`` goes out with the first event (and the headers), the closing chunks with the last,
    and the events waiting when a write is made are merged per choice (a stream that lags behind the engine
    gets several tokens per event; OpenAI clients accept deltas of any length). With ``interval`` (seconds), a
    stream also writes at most once per interval after its first event, and at once when a choice finishes:
    each write (a system call that wakes the client) costs more CPU than rendering the tokens it carries."""

    async def chunks() -> Chunks:
        loop = asyncio.get_running_loop()
        opening, last, sent = list(head), None, False
        try:
            while True:
                await gen.wait()
                if interval > 0 and last is not None and not gen.finishing:
                    wait = last + interval - loop.time()
                    if wait > 0:  # until the interval is over, or a choice finishes
                        await gen.wait(wait, urgent=True)
                if gen.aborted:
                    return
                pending = opening + [chunk for merged in gen.coalesced(gen.take()) for chunk in render(merged)]
                opening = []
                closing = gen.done >= gen.n
                if closing:  # the last event: the closing chunks go in the same write
                    pending += [*finish(), _DONE]
                if pending:
                    sent = True
                    yield b"".join(pending), closing
                    last = loop.time()
                if closing:
                    return
        except Exception as err:  # noqa: BLE001 - answered with a status, or reported in the stream
            if not sent:
                raise _before_first_byte(err) from None
            if isinstance(err, (LMForgeError, ValueError)):
                yield sse(error_body(str(err), "invalid_request_error")), True
            else:
                log.exception("generation failed mid-stream")
                yield sse(error_body("internal server error during generation", "server_error")), True
        finally:
            gen.close()

    return SSEResponse(chunks(), on_close=gen.close, on_disconnect=gen.abort)
