"""HTTP plumbing shared by the server's routes: OpenAI-style errors and server-sent events.

:class:`APIError` carries a status and OpenAI's error object; :func:`validation_error` turns a request that
failed validation into one, naming the offending field the way OpenAI does (``messages[0].role``);
:class:`SSEResponse` streams ``data: ...`` events and always runs a close hook, so a generation is cancelled
even when its client left before the first byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from typing import Any, AsyncIterator, Callable, Optional

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from lmforge.errors import LMForgeError
from lmforge.serving.schemas import UNSUPPORTED_FIELDS, error_body

__all__ = ["APIError", "validation_error", "sse", "SSEResponse", "event_stream"]

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


def sse(obj: Any) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


class SSEResponse(StreamingResponse):
    """A streamed response that always runs ``on_close`` (cancelling the generation), even when the client
    left before the first byte was sent."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def event_stream(gen: Any, render: Callable[[Any], list[bytes]], head: list[bytes],
                 finish: Callable[[], list[bytes]], interval: float = 0.0) -> SSEResponse:
    """Server-sent events of a generation: ``head``, then ``render(event)`` for each event, then ``finish()`` and
    ``data: [DONE]``. An error after the headers went out becomes an error event; closing the response (the
    client left) cancels the generation.

    Writes are few: ``head`` goes out with the first event, the closing chunks with the last, and the events
    waiting when a write is made are merged per choice (a stream that lags behind the engine gets several
    tokens per event; OpenAI clients accept deltas of any length). With ``interval`` (seconds), a stream also
    writes at most once per interval after its first event, and at once when a choice finishes (``gen.finishing``):
    each write (a system call that wakes the client) costs more CPU than rendering the tokens it carries."""

    async def body() -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        opening, last, closed = list(head), None, False
        try:
            async for event in gen:
                events = [event, *gen.ready()]
                if interval > 0 and last is not None and not any(e.finish_reason for e in events):
                    wait = last + interval - loop.time()
                    if wait > 0:  # until the interval is over, or a choice finishes
                        with contextlib.suppress(asyncio.TimeoutError):
                            await asyncio.wait_for(gen.finishing.wait(), wait)
                        events += gen.ready()
                pending = opening + [chunk for merged in gen.coalesced(events) for chunk in render(merged)]
                opening = []
                if gen.done >= gen.n:  # the last event: the closing chunks go in the same write
                    pending += [*finish(), b"data: [DONE]\n\n"]
                    closed = True
                if pending:
                    yield b"".join(pending)
                    last = loop.time()
            if not closed:
                yield b"".join([*opening, *finish(), b"data: [DONE]\n\n"])
        except (LMForgeError, ValueError) as err:
            yield sse(error_body(str(err), "invalid_request_error"))
        except Exception:  # noqa: BLE001 - reported in the stream; headers are already sent
            log.exception("generation failed mid-stream")
            yield sse(error_body("internal server error during generation", "server_error"))

    return SSEResponse(body(), on_close=gen.cancel)
