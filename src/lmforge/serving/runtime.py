"""Running model calls off the event loop: admission control, worker threads and the stream bridge.

* :class:`Admission` lets at most ``slots`` model calls run at once and at most ``queue_size`` more wait (first
  come, first served); a request beyond that is refused at once (the server answers 429).
* :class:`Runner` runs each admitted call in its own worker thread. A slot is given back only when the thread
  has really finished, so ``slots`` bounds the threads doing model work even after clients leave.
* Streams: a worker thread pulls chunks from the engine's iterator and hands them to the event loop; between
  two chunks it checks a cancel flag, which the server sets when the client goes away, so a disconnected
  client's generation stops after at most one more token and its iterator is closed.
* Each generation owns its decoding state (KV cache or LSTM state) inside its own iterator; with
  ``serialize=True`` (the default) one lock also guards the model, so only one thread runs a model step at a
  time. The lock is handed over in arrival order (:class:`FairLock`), so concurrent streams take turns token
  by token, which keeps time-to-first-token fair.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Callable, Iterator, Optional

__all__ = ["Admission", "FairLock", "QueueFull", "Runner", "StreamHandle"]

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """Every slot is busy and the waiting queue is full."""


class Admission:
    """A first-come, first-served gate with ``slots`` places and a bounded waiting queue.

    Args:
        slots: the most calls admitted at once (>= 1).
        queue_size: the most calls waiting for a slot (>= 0); one more raises :class:`QueueFull`.
    """

    def __init__(self, slots: int, queue_size: int) -> None:
        if slots < 1 or queue_size < 0:
            raise ValueError("slots must be >= 1 and queue_size >= 0")
        self.slots = slots
        self.queue_size = queue_size
        self.active = 0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    @property
    def waiting(self) -> int:
        return sum(1 for f in self._waiters if not f.done())

    async def acquire(self) -> None:
        """Takes a slot, waiting in line if all are busy; raises :class:`QueueFull` if the line is full."""
        if self.active < self.slots and not self.waiting:
            self.active += 1
            return
        if self.waiting >= self.queue_size:
            raise QueueFull
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed over as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            raise

    def release(self) -> None:
        """Gives a slot back, handing it straight to the first caller still waiting."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.active -= 1


class FairLock:
    """A mutex handed to waiting threads in arrival order.

    ``threading.Lock`` is not fair: a thread that releases it and asks again at once (the next token of the
    same stream) usually wins, which starves the other streams and ruins their time to first token. Handing
    the lock over first come, first served makes concurrent streams take turns token by token.
    """

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._waiters: collections.deque[threading.Event] = collections.deque()
        self._held = False

    def acquire(self) -> None:
        with self._guard:
            if not self._held:
                self._held = True
                return
            turn = threading.Event()
            self._waiters.append(turn)
        turn.wait()  # release() hands the lock straight to us

    def release(self) -> None:
        with self._guard:
            if self._waiters:
                self._waiters.popleft().set()
            else:
                self._held = False

    def __enter__(self) -> "FairLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


_END = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class StreamHandle:
    """The consumer side of one streamed generation; iterate it with ``async for``; ``cancel()`` stops it."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.finished = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()

    async def __aiter__(self) -> AsyncIterator[Any]:
        try:
            while True:
                item = await self.queue.get()
                if item is _END:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:
            self.cancel()


class Runner:
    """Runs model calls in worker threads behind an :class:`Admission` gate.

    Args:
        slots: concurrent model calls (``--max-concurrency``).
        queue_size: calls allowed to wait for a slot; beyond that :class:`QueueFull`.
        serialize: hold one lock around every model call / stream step (guards models that are not
            thread-safe; on a small CPU it costs little, as the steps would compete for the same cores).
    """

    def __init__(self, slots: int, queue_size: int, serialize: bool = True) -> None:
        self.admission = Admission(slots, queue_size)
        self._executor = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="lmforge-serve")
        self._lock: Any = FairLock() if serialize else contextlib.nullcontext()

    @property
    def active(self) -> int:
        return self.admission.active

    @property
    def waiting(self) -> int:
        return self.admission.waiting

    def shutdown(self) -> None:
        """Stops accepting work; running threads finish their current step."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _submit(self, fn: Callable[[], Any]) -> asyncio.Future:
        """Runs ``fn`` in a worker; the (already acquired) slot is released when the thread finishes."""
        loop = asyncio.get_running_loop()
        try:
            fut = loop.run_in_executor(self._executor, fn)
        except BaseException:
            self.admission.release()
            raise
        fut.add_done_callback(lambda _f: self.admission.release())
        return fut

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Waits for a slot, then runs ``fn(*args)`` in a worker thread under the model lock.

        Raises:
            QueueFull: all slots are busy and the queue is full.
        """
        await self.admission.acquire()

        def locked() -> Any:
            with self._lock:
                return fn(*args)

        return await asyncio.shield(self._submit(locked))

    async def stream(self, make_iter: Callable[[], Iterator[Any]]) -> StreamHandle:
        """Waits for a slot, then starts pulling ``make_iter()`` in a worker thread, one locked step at a time.

        Returns:
            A :class:`StreamHandle` to iterate; its ``cancel()`` (also called when the iteration is closed)
            makes the worker close the iterator after the step in progress.

        Raises:
            QueueFull: all slots are busy and the queue is full.
        """
        await self.admission.acquire()
        loop = asyncio.get_running_loop()
        handle = StreamHandle()

        def emit(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(handle.queue.put_nowait, item)
            except RuntimeError:  # the event loop is gone (server shutting down)
                handle.cancel()

        def produce() -> None:
            iterator: Optional[Iterator[Any]] = None
            try:
                iterator = make_iter()
                while not handle.cancelled.is_set():
                    with self._lock:
                        item = next(iterator, _END)
                    if item is _END:
                        break
                    emit(item)
            except BaseException as err:  # reported to the consumer, which turns it into an error event
                emit(_Failure(err))
            finally:
                if iterator is not None and hasattr(iterator, "close"):
                    try:
                        with self._lock:
                            iterator.close()
                    except Exception:  # pragma: no cover - a failing close must not hide the real outcome
                        log.exception("closing a generation failed")
                handle.finished.set()
                emit(_END)

        self._submit(produce)
        return handle
