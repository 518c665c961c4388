"""The batching engine in a process of its own, so that a server's Python and the engine's do not share a GIL.

:class:`EngineProcess` offers a server what :class:`~lmforge.inference.engine.BatchEngine` offers (``submit``,
``call``, ``queued``, ``active``, ``stop``), but the engine loop runs in a child process, as vLLM's V1 engine
core does: the server process keeps its event loop, the tokenizer and the chat templates; requests go to the
engine process, and each engine iteration's events come back in one message through a pipe.

Why: on a CPU, every decoding step of the engine runs Python between its tensor operations, and so does the
event loop that streams the results. In one process they take turns holding the GIL, and each waits for the
other (measured on 2 cores: the same engine served ~35-40% more tokens/s to 32 streaming clients from its own
process; BENCHMARKS.md, issue 15).

* The child is started with ``spawn`` (a fork after torch has used OpenMP threads can hang in the child). It
  rebuilds the model from its config and a copy of its weights (the state dict crosses in shared memory,
  quantized layers included), and uses the same number of torch threads.
* Admission is decided here, in the server process, exactly as the engine decides it (first come, first served;
  a request waits while the sequences ahead of it fill ``max_batch``), so a full queue is refused at once.
* ``call(fn)`` runs ``fn`` in this process on one worker thread, on this process's copy of the model
  (scoring, embeddings): a closure cannot cross into the child.
* If the child dies, every request in flight ends with an error event and later submissions are refused.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import logging
import multiprocessing as mp
import pickle
import signal
import threading
import time
from typing import Any, Callable, Optional

import torch

from lmforge.inference.engine import BatchEngine
from lmforge.inference.engine_seq import Event, GenerationRequest, coalesce
from lmforge.models import build_model
from lmforge.models.quantized import quantization_of, quantize_model

__all__ = ["EngineProcess"]

log = logging.getLogger(__name__)


class _Remote:
    """A sink in the child: its request's id (the events of an iteration are sent together, see ``_serve``)."""

    def __init__(self, rid: int) -> None:
        self.rid = rid

    def __call__(self, event: Event) -> None:  # never called: BatchEngine hands the batch to ``deliver``
        raise AssertionError("a remote sink is delivered in batches")


def _portable(rid: int, e: Event) -> tuple:
    """``e`` as a plain tuple (a tenth of the pickling cost of the dataclass: one message per step carries one
    per running sequence), with an error the pipe can carry (its own type when it pickles, else a
    RuntimeError); :class:`Event` ``(*t[1:])`` rebuilds it."""
    error = e.error
    if error is not None:
        try:
            pickle.dumps(error)
        except Exception:  # noqa: BLE001 - any pickling failure
            error = RuntimeError(f"{type(error).__name__}: {error}")
    return rid, e.index, e.text, e.token_ids, e.logprobs, e.finish_reason, e.completion_tokens, e.prompt_tokens, error


def _build(spec: dict) -> Any:
    model = build_model(spec["config"])
    if spec["quantization"]:
        quantize_model(model, spec["quantization"]["bits"], spec["quantization"]["group_size"])
    model.load_state_dict(spec["state"])
    return model.to(spec["device"]).eval()


class _Outbox:
    """The child's events on their way to the pipe, one message per engine iteration at most.

    With ``interval`` 0 every iteration's events cross at once. With ``interval`` > 0 (seconds; a server that
    writes a stream at most once per interval anyway) the text of a running choice is held and merged: what a
    choice makes over one interval crosses as one event, not one per token, so the server handles a few events
    per request instead of one per token. A choice's first event and its last (finished, failed) cross at once,
    with whatever that choice held before: time to first token and the end of a stream are not delayed.
    """

    def __init__(self, conn: Any, interval: float) -> None:
        self.conn, self.interval = conn, interval
        self.held: dict[tuple[int, int], list[Event]] = {}  # (request id, choice) -> its events not sent yet
        self.started: dict[int, set[int]] = {}  # request id -> its choices that sent something
        self.cancelled: collections.deque[int] = collections.deque()  # appended by the pipe's thread
        self.last = time.monotonic()

    def add(self, steps: int, batch: list[tuple[Any, Event]]) -> None:
        if self.interval <= 0:
            self.conn.send(("events", steps, [_portable(sink.rid, event) for sink, event in batch]))
            return
        while self.cancelled:
            self.forget(self.cancelled.popleft())
        urgent: list[tuple[int, int]] = []
        for sink, e in batch:
            key = (sink.rid, e.index)
            seen = self.started.setdefault(sink.rid, set())
            if e.index not in seen or e.finish_reason is not None:
                urgent.append(key)
            seen.add(e.index)
            self.held.setdefault(key, []).append(e)
        now = time.monotonic()
        if now - self.last >= self.interval:
            urgent = list(self.held)
            self.last = now
        if urgent:  # each choice's held events merged into one, as a lagging stream merges them (coalesce)
            self.conn.send(("events", steps, [_portable(key[0], coalesce(self.held.pop(key))[0])
                                              for key in dict.fromkeys(urgent)]))

    def forget(self, rid: int) -> None:
        """Request ``rid`` is over (called on the engine's thread)."""
        self.started.pop(rid, None)
        for key in [k for k in self.held if k[0] == rid]:
            del self.held[key]


def _serve(spec: dict, tokenizer: Any, options: dict, conn: Any) -> None:
    """The child process: builds the model, runs the engine, and serves the pipe until told to stop (or until
    the pipe closes). Ctrl+C reaches the whole process group: the server process decides when to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(options.pop("threads"))
    outbox = _Outbox(conn, options.pop("event_interval"))
    try:
        model = _build(spec)
    except Exception as err:  # noqa: BLE001 - reported to the parent, which refuses to start
        conn.send(("failed", f"{type(err).__name__}: {err}"))
        return
    del spec
    handles: dict[int, Any] = {}
    left: dict[int, int] = {}  # choices of each request not finished yet

    def deliver(batch: list[tuple[Any, Event]]) -> None:
        outbox.add(engine.steps, batch)
        for sink, event in batch:  # a finished request is forgotten here: no message from the server needed
            n = left.get(sink.rid) if event.finish_reason is not None else None
            if n is not None and n > 1:
                left[sink.rid] = n - 1
            elif n is not None:
                left.pop(sink.rid, None)
                handles.pop(sink.rid, None)
                outbox.forget(sink.rid)

    engine = BatchEngine(model, tokenizer, deliver=deliver, **options).start()
    conn.send(("ready", None))
    try:
        while True:
            msg = conn.recv()
            if msg[0] == "submit":
                rid, ids, params, n, logprobs, bias = msg[1:]
                left[rid] = n
                handles[rid] = engine.submit(GenerationRequest(ids, params, _Remote(rid), n, logprobs, bias))
            elif msg[0] == "cancel":
                handle = handles.pop(msg[1], None)
                left.pop(msg[1], None)
                if handle is not None:
                    handle.cancel()
                    outbox.cancelled.append(msg[1])
            else:
                break
    except (EOFError, OSError):  # the server process went away
        pass
    finally:
        engine.stop()


class _Handle:
    """What :meth:`EngineProcess.submit` returns: ``cancel()`` stops the request in the engine process."""

    def __init__(self, engine: "EngineProcess", rid: int) -> None:
        self._engine, self.rid = engine, rid

    def cancel(self) -> None:
        self._engine._cancel(self.rid)


class EngineProcess:
    """A :class:`~lmforge.inference.engine.BatchEngine` for ``model`` running in a child process (module
    docstring); the same arguments, plus ``threads`` (torch threads in the child; default: this process's) and
    ``reader``: with ``True`` a thread of this process receives the events and calls the sinks; with ``False``
    the owner calls :meth:`pump` whenever :meth:`fileno` is readable (an event loop's ``add_reader``), so the
    sinks run on its thread and no second thread competes with it for the GIL.

    Raises:
        RuntimeError: the child could not build the model (the message says why).
    """

    def __init__(self, model: Any, tokenizer: Any, max_batch: int = 32, prefill_chunk: int = 512,
                 max_queue: int = 256, threads: Optional[int] = None, start_timeout: float = 300.0,
                 reader: bool = True, event_interval: float = 0.0) -> None:
        self.model, self.max_batch, self.max_queue = model, max_batch, max_queue
        spec = {"config": model.config, "quantization": quantization_of(model),
                "device": str(next(model.parameters()).device),
                "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}  # moved to shared memory
        options = {"max_batch": max_batch, "prefill_chunk": prefill_chunk, "max_queue": 1 << 30,
                   "threads": threads or torch.get_num_threads(), "event_interval": event_interval}
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(spec, tokenizer, options, child), name="lmforge-engine",
                                 daemon=True)
        self._proc.start()
        child.close()
        del spec
        if not self._conn.poll(start_timeout):
            self._proc.kill()
            raise RuntimeError(f"the engine process did not start within {start_timeout:.0f} s")
        kind, detail = self._conn.recv()
        if kind != "ready":
            self._proc.join(10)
            raise RuntimeError(f"the engine process could not load the model: {detail}")
        self._lock = threading.Lock()  # guards the pipe's sending end and the bookkeeping below
        self._ids = itertools.count()
        self._sinks: dict[int, Callable[[Event], None]] = {}
        self._left: dict[int, set[int]] = {}  # choices of each request not finished yet
        self._order: collections.OrderedDict[int, int] = collections.OrderedDict()  # unfinished: rid -> n
        self._dead: Optional[str] = None
        self.steps = 0  # the engine's decoding steps, as of the last events received
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lmforge-calls")
        if reader:
            threading.Thread(target=self._read, name="lmforge-engine-reader", daemon=True).start()

    # ------------------------------------------------------------------ what a server uses
    def _counts(self) -> tuple[int, int]:
        """(sequences with a slot, requests waiting), as the engine admits: in order while ``max_batch`` allows."""
        active, queued, full = 0, 0, False
        for n in self._order.values():
            if not full and active + n <= self.max_batch:
                active += n
            else:
                full = True
                queued += 1
        return active, queued

    @property
    def queued(self) -> int:
        """Requests waiting for a slot (as of the last events received)."""
        with self._lock:
            return self._counts()[1]

    @property
    def active(self) -> int:
        """Sequences decoding or being prefilled (as of the last events received)."""
        with self._lock:
            return self._counts()[0]

    def submit(self, request: GenerationRequest) -> _Handle:
        """Sends a request to the engine process.

        Raises:
            OverflowError: ``max_queue`` requests are already waiting.
            RuntimeError: the engine process has exited.
        """
        with self._lock:
            if self._dead:
                raise RuntimeError(self._dead)
            if self._counts()[1] >= self.max_queue:
                raise OverflowError("the engine's queue is full")
            rid = next(self._ids)  # booked before sending: a reader thread may get its events before we return
            self._sinks[rid], self._left[rid], self._order[rid] = request.sink, set(range(request.n)), request.n
            try:
                self._conn.send(("submit", rid, list(request.prompt_ids), request.params, request.n,
                                 request.logprobs, dict(request.logit_bias)))
            except OSError:  # the child is gone (its pipe's reader notices too)
                for book in (self._sinks, self._left, self._order):
                    book.pop(rid, None)
                self._dead = "the engine process has exited"
                raise RuntimeError(self._dead) from None
        return _Handle(self, rid)

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Runs ``fn()`` in this process, one call at a time (model work outside generation)."""
        return self._pool.submit(fn)

    def stop(self) -> None:
        """Stops the engine process; running requests end without a final event."""
        self._send(("stop",))
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        self._conn.close()
        self._pool.shutdown(wait=False)

    # ------------------------------------------------------------------ internals
    def _cancel(self, rid: int) -> None:
        """Forgets request ``rid`` here (its slot counts as free at once) and stops it in the engine process."""
        with self._lock:
            if rid not in self._sinks:
                return  # finished already (a server cancels every generation when its response closes)
            for book in (self._sinks, self._left, self._order):
                book.pop(rid, None)
        self._send(("cancel", rid))

    def _send(self, msg: tuple) -> None:
        with self._lock:
            if self._dead is None:
                try:
                    self._conn.send(msg)
                except OSError:
                    pass  # the reader notices the exit

    def fileno(self) -> int:
        """The pipe the engine's events arrive on (readable when :meth:`pump` has a message to take)."""
        return self._conn.fileno()

    def pump(self) -> bool:
        """Takes one message of events from the pipe (waiting for it) and hands them to their sinks on this
        thread; ``False`` once the engine process is gone (every request in flight then got an error event)."""
        try:
            kind, self.steps, batch = self._conn.recv()
        except (EOFError, OSError):
            self._fail_all()
            return False
        except Exception:  # noqa: BLE001 - a message that does not unpickle: the pipe can no longer be trusted
            log.exception("a message from the engine process could not be read")
            self._proc.kill()
            self._fail_all()
            return False
        sinks = self._sinks
        for item in batch:
            rid, event = item[0], Event(*item[1:])
            sink = sinks.get(rid)
            if sink is None:  # cancelled meanwhile
                continue
            if event.finish_reason is not None:
                with self._lock:
                    self._finished(rid, event.index)
            try:
                sink(event)
            except Exception:  # noqa: BLE001 - a consumer's bug, not the engine's
                log.exception("a request's sink failed")
        return True

    def _read(self) -> None:
        """The reader thread: hands each iteration's events to their sinks (as the engine thread would)."""
        while self.pump():
            pass

    def _finished(self, rid: int, index: int) -> None:
        left = self._left.get(rid)
        if left is None:  # cancelled meanwhile
            return
        left.discard(index)
        if not left:  # the child forgets it too (see _serve)
            del self._sinks[rid], self._left[rid], self._order[rid]

    def _fail_all(self) -> None:
        """The child is gone: every choice still running ends with an error event."""
        with self._lock:
            if self._dead is not None and not self._sinks:
                return
            self._dead = "the engine process has exited"
            pending = [(self._sinks[rid], sorted(self._left[rid])) for rid in list(self._sinks)]
            self._sinks.clear()
            self._left.clear()
            self._order.clear()
        for sink, indexes in pending:
            for i in indexes:
                try:
                    sink(Event(i, "", [], [], "error", 0, 0, RuntimeError("the engine process exited")))
                except Exception:  # noqa: BLE001
                    log.exception("a request's sink failed")
