"""A lean asyncio HTTP/1.1 client for streamed POSTs, the load generator of bench_serve.py.

The benchmark's 32 clients run on the same two cores as the server, so every millisecond of client CPU is taken
from the server being measured. ``httpx`` spends most of a streamed request's client time in its own layers
(connection pool, header models, decoders, ``anyio`` streams); load generators such as wrk or vegeta are lean C
or Go for that reason. This client does what the measurement needs and no more: one keep-alive connection per
client, a plain request, the status line and headers, the chunked body (or a ``Content-Length`` body for
errors) split into lines. Callers still parse every server-sent event as JSON.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Optional

__all__ = ["Connection"]


class Connection:
    """One HTTP/1.1 keep-alive connection to ``host:port`` (reopened when the server closes it)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: Optional[asyncio.StreamReader] = None
        self.writer: Optional[asyncio.StreamWriter] = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
        self.reader = self.writer = None

    async def post_lines(self, path: str, body: bytes) -> tuple[int, AsyncIterator[bytes]]:
        """Sends ``POST path`` with a JSON ``body``; returns the status and an iterator over the body's lines
        (without their ``\\n``), which must be consumed before the next request."""
        if self.writer is None:
            await self.open()
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        status = int(status_line.split(b" ", 2)[1])
        chunked, length, close = False, 0, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"transfer-encoding" and value == b"chunked":
                chunked = True
            elif name == b"content-length":
                length = int(value)
            elif name == b"connection" and value == b"close":
                close = True
        return status, self._lines(chunked, length, close)

    async def _lines(self, chunked: bool, length: int, close: bool) -> AsyncIterator[bytes]:
        reader, tail = self.reader, b""
        if chunked:
            while True:
                size = int((await reader.readline()).split(b";")[0], 16)
                if size == 0:
                    await reader.readline()  # the empty trailer
                    break
                data = tail + (await reader.readexactly(size + 2))[:-2]
                *lines, tail = data.split(b"\n")
                for line in lines:
                    yield line
        else:
            tail = await reader.readexactly(length)
            *lines, tail = tail.split(b"\n")
            for line in lines:
                yield line
        if tail:
            yield tail
        if close:
            await self.close()
