"""The server's front door, as one plain ASGI middleware: the API key check and the request-body guard.

* With an API key, every path except the public ones (``/health`` and the page) needs
  ``Authorization: Bearer KEY``; the key is compared with :func:`hmac.compare_digest` (constant time).
* A request body is read completely before the app sees it, with a size limit (413, checked against the
  ``Content-Length`` header first, then against the bytes really received, so chunked uploads are bounded too)
  and a time limit (408), so a slow or lying client cannot tie up the server or hang the connection.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from typing import Any, Awaitable, Callable, Iterable, Optional

from lmforge.serving.schemas import error_body

__all__ = ["GuardMiddleware"]

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


async def send_error(send: Send, status: int, message: str, type_: str, code: Optional[str] = None,
                     headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """Sends a complete JSON error response in OpenAI's format."""
    body = json.dumps(error_body(message, type_, None, code)).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    *headers],
    })
    await send({"type": "http.response.body", "body": body})


async def _receive_until(receive: Receive, deadline: float, loop: asyncio.AbstractEventLoop) -> Message:
    """``await receive()``, raising :class:`asyncio.TimeoutError` at ``deadline`` (loop time). On Python 3.11+
    a timer on the running task, not the task per call that ``asyncio.wait_for`` makes."""
    if hasattr(asyncio, "timeout_at"):
        async with asyncio.timeout_at(deadline):
            return await receive()
    return await asyncio.wait_for(receive(), timeout=max(0.0, deadline - loop.time()))  # pragma: no cover


class GuardMiddleware:
    """Checks the API key and bounds the request body before the wrapped app runs.

    Args:
        app: the ASGI app to protect.
        api_key: the key clients must send, or None for no check.
        public_paths: paths served without a key.
        max_body_bytes: the largest request body accepted (413 above it).
        body_timeout_s: the most seconds a client may take to send its body (408 after it).
    """

    def __init__(self, app: Callable, api_key: Optional[str], public_paths: Iterable[str],
                 max_body_bytes: int, body_timeout_s: float) -> None:
        self.app = app
        self._key = api_key.encode() if api_key else None
        self.public_paths = frozenset(public_paths)
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s

    def _authorized(self, scope: Scope) -> bool:
        if self._key is None or scope["path"] in self.public_paths:
            return True
        header = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                header = value
                break
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer":
            token = b""
        return hmac.compare_digest(token.strip(), self._key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self._authorized(scope):
            await send_error(send, 401, "invalid or missing API key; send it as 'Authorization: Bearer KEY'",
                             "authentication_error", "invalid_api_key",
                             headers=[(b"www-authenticate", b"Bearer")])
            return
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = None
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await send_error(send, 400, "the Content-Length header is not a number",
                                     "invalid_request_error", "invalid_content_length")
                    return
        limit = self.max_body_bytes
        too_large = f"the request body is larger than the server's limit of {limit} bytes; send less"
        if declared is not None and declared > limit:
            await send_error(send, 413, too_large, "invalid_request_error", "request_too_large")
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_s
        while more:
            try:
                message = await _receive_until(receive, deadline, loop)
            except asyncio.TimeoutError:
                await send_error(send, 408, f"the request body did not arrive within {self.body_timeout_s:g} s",
                                 "invalid_request_error", "request_timeout")
                return
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await send_error(send, 413, too_large, "invalid_request_error", "request_too_large")
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls wait for the client to disconnect

        await self.app(scope, replay, send)
