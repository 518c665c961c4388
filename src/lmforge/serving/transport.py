"""Fewer send system calls per response: uvicorn's HTTP protocol over a transport that coalesces writes.

uvicorn writes each piece of a response with its own ``transport.write``: the status line and headers, each
body chunk, and the end of a chunked body. Every write of a socket transport is a ``send`` system call that
wakes the client, and under many streaming clients these calls are the largest single cost of the server
process (issue 15: ~18% of its CPU). :class:`CoalescingTransport` keeps the writes made to one connection
during one event-loop iteration and sends them as one, at the start of the next iteration
(``loop.call_soon``): a streamed response's headers go out with its first event, and its last event with the
end of the body, and no byte waits longer than the rest of the iteration that wrote it.

Flow control stays the socket transport's: it sees each coalesced write and pauses or resumes the protocol as
before. ``close`` and ``write_eof`` send what is buffered first; ``abort`` drops it; bytes written after the
peer went away are dropped, as the socket transport would drop them.

Example:
    >>> import uvicorn                                       # doctest: +SKIP
    >>> uvicorn.run(app, http=http_protocol())
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, Iterable

__all__ = ["CoalescingTransport", "http_protocol"]


class CoalescingTransport:
    """Wraps a write transport: the writes made within one event-loop iteration leave in one write.

    Args:
        transport: the connection's transport (anything with ``write``, ``close``, ``is_closing``...); what this
            class does not define is its.
        loop: the event loop the writes are made on.
    """

    def __init__(self, transport: asyncio.WriteTransport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self._loop = loop
        self._buffer: list[bytes] = []

    def write(self, data: Any) -> None:
        if not data:
            return
        if not self._buffer:
            self._loop.call_soon(self.flush)
        self._buffer.append(data if isinstance(data, bytes) else bytes(data))  # the caller may reuse its buffer

    def writelines(self, lines: Iterable[Any]) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        """Sends what was written since the last flush, as one write (dropped if the connection is gone)."""
        buffer, self._buffer = self._buffer, []
        if not buffer or self.transport.is_closing():
            return
        self.transport.write(buffer[0] if len(buffer) == 1 else b"".join(buffer))

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def write_eof(self) -> None:
        self.flush()
        self.transport.write_eof()

    def abort(self) -> None:
        self._buffer = []
        self.transport.abort()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def get_write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() + sum(len(b) for b in self._buffer)

    def __getattr__(self, name: str) -> Any:  # get_extra_info, pause_reading, set_protocol, ...
        return getattr(self.transport, name)


@functools.lru_cache(maxsize=None)
def http_protocol(base: Any = None) -> type:
    """uvicorn's HTTP protocol class (``base``, default: the one uvicorn picks, httptools if installed, else
    h11) with every connection's transport wrapped in a :class:`CoalescingTransport`; pass it as
    ``uvicorn.run(..., http=...)``."""
    if base is None:
        from uvicorn.protocols.http.auto import AutoHTTPProtocol  # the [serve] extra

        base = AutoHTTPProtocol

    class CoalescingHTTPProtocol(base):  # type: ignore[misc,valid-type]
        def connection_made(self, transport: Any) -> None:
            super().connection_made(CoalescingTransport(transport, asyncio.get_running_loop()))

    CoalescingHTTPProtocol.__qualname__ = CoalescingHTTPProtocol.__name__ = f"Coalescing{base.__name__}"
    return CoalescingHTTPProtocol
