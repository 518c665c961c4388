"""One request's generation as the routes see it: the engine's events, in order, on the event loop.

:class:`Generation` receives :class:`~lmforge.inference.engine.Event` s from a backend (``sink`` from any
thread, ``put`` on the loop's) and hands them to a route: ``async for`` (a complete answer), or ``wait`` /
``take`` (a stream, which takes every event waiting at once and may wait for more, see
:func:`lmforge.serving.responses.event_stream`). Waiting costs one future, and with a timeout one timer,
instead of an ``asyncio.Queue`` and an ``asyncio.wait_for`` task per write: under load the server streams to
dozens of clients and each of these costs CPU on every write (issue 15).
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
import weakref
from typing import AsyncIterator, Callable, Optional

from lmforge.inference.engine import Event
from lmforge.inference.engine_seq import coalesce
from lmforge.serving.metrics import Metrics

__all__ = ["Generation", "coalesce"]


class _Mailbox:
    """Hands events from the engine thread to the event loop with one wake-up for all that arrived together
    (a decoding step yields one event per running sequence), instead of one wake-up per event."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.lock = threading.Lock()
        self.items: list[tuple[Generation, Event]] = []
        self.scheduled = False

    def post(self, gen: "Generation", event: Event) -> None:
        with self.lock:
            self.items.append((gen, event))
            if self.scheduled:
                return
            self.scheduled = True
        self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self.lock:
            items, self.items, self.scheduled = self.items, [], False
        for gen, event in items:
            gen.put(event)


_MAILBOXES: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Mailbox]" = weakref.WeakKeyDictionary()


def _wake(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Generation:
    """The events of one request's ``n`` choices, as they come; records time to first token and token counts.

    Attributes:
        pending: events received and not taken yet, in order.
        finishing: how many of them end a choice.
        aborted: set by :meth:`abort` (the client left): a waiting consumer wakes and stops.
    """

    def __init__(self, n: int, metrics: Metrics, per_prompt: int = 0) -> None:
        self.n = n
        self.per_prompt = per_prompt or n  # choices per prompt (a completions request may hold several prompts)
        self.pending: collections.deque[Event] = collections.deque()
        self.finishing = 0
        self.aborted = False
        self.loop = asyncio.get_running_loop()
        if self.loop not in _MAILBOXES:
            _MAILBOXES[self.loop] = _Mailbox(self.loop)
        self.mailbox = _MAILBOXES[self.loop]
        self.loop_thread = threading.get_ident()
        self.metrics = metrics
        self.started = time.monotonic()
        self.first = False
        self.done = 0  # choices finished
        self.prompts: dict[int, int] = {}
        self.completion: dict[int, int] = {}
        self._cancel: Callable[[], None] = lambda: None
        self._waiter: Optional[asyncio.Future] = None
        self._urgent = False  # the waiter wakes only for an event that ends a choice
        self._closed = False

    def sink(self, event: Event) -> None:
        """Called from the producing thread (the event loop's own, when it reads the engine's pipe itself)."""
        if threading.get_ident() == self.loop_thread:
            self.put(event)
            return
        try:
            self.mailbox.post(self, event)
        except RuntimeError:  # the event loop is gone (shutting down)
            self.cancel()

    def put(self, event: Event) -> None:
        """Adds ``event`` (on the event loop's thread) and wakes a consumer waiting for it."""
        self.pending.append(event)
        ends = event.finish_reason is not None
        self.finishing += ends
        waiter = self._waiter
        if waiter is not None and (ends or not self._urgent) and not waiter.done():
            waiter.set_result(None)

    def cancel(self) -> None:
        self._cancel()

    def abort(self) -> None:
        """The client went away: cancels the generation and wakes a waiting consumer, which then stops."""
        self.aborted = True
        self.cancel()
        if self._waiter is not None:
            _wake(self._waiter)

    def close(self) -> None:
        """Ends the generation (cancelling what still runs) and books its tokens; idempotent."""
        if self._closed:
            return
        self._closed = True
        self.cancel()
        self.metrics.tokens(self.prompt_tokens, self.completion_tokens)

    async def wait(self, timeout: Optional[float] = None, urgent: bool = False) -> None:
        """Returns once an event is pending (with ``urgent``, one that ends a choice), the generation is
        aborted, or ``timeout`` seconds have passed."""
        if self.aborted or (self.finishing if urgent else self.pending):
            return
        waiter = self._waiter = self.loop.create_future()
        self._urgent = urgent
        timer = self.loop.call_later(timeout, _wake, waiter) if timeout is not None else None
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _book(self, event: Event) -> Event:
        """Books one event taken (time to first token, token counts, choices finished); raises its error."""
        self.finishing -= event.finish_reason is not None
        if event.error is not None:
            raise event.error
        if not self.first and (event.token_ids or event.text):
            self.first = True
            self.metrics.first_token(time.monotonic() - self.started)
        self.prompts[event.index // self.per_prompt] = event.prompt_tokens
        self.completion[event.index] = event.completion_tokens
        self.done += event.finish_reason is not None
        return event

    def take(self) -> list[Event]:
        """The events pending, taken in order (up to the last choice's end); an error is raised once the events
        before it were taken (so a stream sends what was generated, then reports the error)."""
        out: list[Event] = []
        while self.pending and self.done < self.n:
            if out and self.pending[0].error is not None:
                break
            out.append(self._book(self.pending.popleft()))
        return out

    def coalesced(self, events: list[Event]) -> list[Event]:
        """``events`` (taken in order) merged into one event per choice (see :func:`coalesce`)."""
        return events if len(events) == 1 else coalesce(events)

    async def __aiter__(self) -> AsyncIterator[Event]:
        try:
            while self.done < self.n and not self.aborted:
                if not self.pending:
                    await self.wait()
                    continue
                yield self._book(self.pending.popleft())
        finally:
            self.close()

    @property
    def completion_tokens(self) -> int:
        return sum(self.completion.values())

    @property
    def prompt_tokens(self) -> int:
        return sum(self.prompts.values())
