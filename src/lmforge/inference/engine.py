"""A continuously batched generation engine: many requests share every decoding step.

Continuous (iteration-level) batching as in Orca (Yu et al., "Orca: A Distributed Serving System for
Transformer-Based Generative Models", OSDI 2022): the batch is re-formed at every decoding step. A new request
joins at the next step after its prompt is prefilled, and a finished one leaves at once, instead of the batch
waiting for its longest member. The sequences live in slots of one batched decoding state
(:mod:`lmforge.inference.slots`: a KV cache with per-row columns for the Transformer, ``(h, c)`` rows for the
LSTM), so sequences of different lengths share a batch without recomputation. Where the slots can decode any set
of rows (the C step's), a sequence keeps its row from joining to leaving; otherwise the rows stay packed.

One background thread owns the model. Each iteration it runs queued jobs (scoring, embeddings), admits waiting
requests into free slots, prefills at most ``prefill_chunk`` prompt tokens (512; a long prompt is prefilled in
chunks over several iterations, so running streams wait at most one chunk between two tokens: chunked
prefill), then advances every running sequence by one token. Each sequence keeps its own sampling settings,
``torch.Generator`` (seeded per request), stop strings, ``max_new_tokens`` and logit bias; what it produces
goes to the request's ``sink`` callback as :class:`Event` s.

Greedy output does not depend on the batch: the first token comes from the sequence's own batch-1 prefill, and
later steps differ from a lone run only in float rounding of masked attention and batched matrix products
(tested: token ids equal, logits within 1e-4).
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import heapq
import logging
import threading
import weakref
from typing import Any, Callable, Optional

import torch

from lmforge.inference.engine_prefill import PrefillSteps
from lmforge.inference.engine_seq import Event, GenerationRequest, Sequence, TokenLogprob, choose_plain
from lmforge.inference.slots import make_slots

__all__ = ["BatchEngine", "Event", "GenerationRequest", "RequestHandle", "TokenLogprob"]

log = logging.getLogger(__name__)

# Engines whose thread runs. Python 3.11 ends a daemon thread that wants the GIL back during interpreter shutdown
# with pthread_exit, whose forced unwinding through PyTorch's C++ frames (a noexcept GIL guard) calls
# std::terminate: a process that exits while an engine is inside a step aborts ("terminate called without an
# active exception", exit code 134). atexit handlers run before that point, so each engine is stopped there.
_LIVE: "weakref.WeakSet[BatchEngine]" = weakref.WeakSet()


@atexit.register
def _stop_live_engines() -> None:
    for engine in list(_LIVE):
        engine.stop()


class RequestHandle:
    """What :meth:`BatchEngine.submit` returns: ``cancel()`` stops the request's sequences and frees their slots."""

    def __init__(self, engine: "BatchEngine", request: GenerationRequest) -> None:
        self._engine = engine
        self.request = request
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        self._engine._wake()


class BatchEngine(PrefillSteps):
    """Serves generation requests for one causal LM with continuous batching (module docstring).

    Args:
        model: a Transformer or LSTM language model (eval mode is set while the engine runs).
        tokenizer: its tokenizer (for text output and the end-of-sequence token).
        max_batch: the most sequences decoded together (slots).
        prefill_chunk: the most prompt tokens prefilled per iteration (between two decoding steps).
        max_queue: the most requests waiting for a slot; :meth:`submit` raises ``OverflowError`` beyond it.
        deliver: if given, called once per iteration with its ``(sink, event)`` pairs instead of calling each
            sink (:class:`~lmforge.inference.engine_proc.EngineProcess` sends them through a pipe this way).
        stepwise_max: the longest prompt fed one token per decoding step beside running sequences, where the
            slots allow it (the LSTM's; see :meth:`_join_stepwise`); 0 never does.

    Example:
        >>> eng = BatchEngine(model, tok).start()                                     # doctest: +SKIP
        >>> eng.submit(GenerationRequest(ids, SamplingParams(temperature=0), sink=print))  # doctest: +SKIP
    """

    def __init__(self, model: Any, tokenizer: Any, max_batch: int = 32, prefill_chunk: int = 512,
                 max_queue: int = 256,
                 deliver: Optional[Callable[[list[tuple[Callable[[Event], None], Event]]], None]] = None,
                 stepwise_max: int = 256) -> None:
        if max_batch < 1 or prefill_chunk < 1:
            raise ValueError("max_batch and prefill_chunk must be >= 1")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.prefill_chunk = prefill_chunk
        self.max_queue = max_queue
        self.deliver = deliver
        self.slots = make_slots(model, max_batch)
        self.device = next(model.parameters()).device
        self._cond = threading.Condition()
        self._pending: collections.deque[RequestHandle] = collections.deque()
        self._jobs: collections.deque[tuple[Callable[[], Any], concurrent.futures.Future]] = collections.deque()
        self._prefilling: list[Sequence] = []
        # the sequences that decode. Slots whose rows can decode wherever they are (``sparse``: the C step's
        # KVSlots) keep a sequence in the row it joined at, and a leaving one frees its row for the next to join;
        # otherwise _running[i] occupies row i, and the last rows move into the holes a leaving one makes
        self._running: list[Sequence] = []
        self._sparse = bool(getattr(self.slots, "sparse", False))
        self._direct = bool(getattr(self.slots, "direct_feed", False))  # prompts straight into their rows
        self._free_rows = list(range(max_batch))  # a heap: the lowest free row first (sparse slots)
        self._feeding = 0  # running sequences still fed their prompt one token per step (_join_stepwise)
        self.stepwise_max = stepwise_max
        self._stop = False
        self._thread: Optional[threading.Thread] = None
        self.steps = 0  # decoding steps taken (for tests and metrics)
        # the events of one iteration, handed to the sinks together at its end: a consumer on another thread
        # (the server's event loop) is woken once per step, not in the middle of the step's Python work
        self.outbox: list[tuple[Callable[[Event], None], Event]] = []

    # ------------------------------------------------------------------ public, any thread
    @property
    def queued(self) -> int:
        """Requests waiting for a slot."""
        return len(self._pending)

    @property
    def active(self) -> int:
        """Sequences decoding or being prefilled."""
        return len(self._running) + len(self._prefilling)

    def start(self) -> "BatchEngine":
        """Starts the engine thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="lmforge-engine", daemon=True)
            _LIVE.add(self)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stops the engine thread; running requests end without a final event."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(10)
        _LIVE.discard(self)

    def submit(self, request: GenerationRequest) -> RequestHandle:
        """Queues a request; its sequences join the batch when slots are free.

        Raises:
            OverflowError: ``max_queue`` requests are already waiting.
        """
        handle = RequestHandle(self, request)
        with self._cond:
            if len(self._pending) >= self.max_queue:
                raise OverflowError("the engine's queue is full")
            self._pending.append(handle)
            self._cond.notify_all()
        return handle

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Runs ``fn()`` on the engine thread between two steps (model work outside generation)."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            self._jobs.append((fn, fut))
            self._cond.notify_all()
        return fut

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # ------------------------------------------------------------------ the engine thread
    def _warm_up(self) -> None:
        """One prefill and one decoding step on a throwaway row, so that the first request does not pay for
        torch's lazy initialisation (a second or more on a CPU)."""
        eos = int(getattr(self.tokenizer, "eos_id", 0) or 0)
        _, scratch = self.slots.feed(self.slots.scratch(), [[eos, eos]])
        self.slots.insert([0], scratch, [0])
        self.slots.decode(torch.tensor([eos], device=self.device))
        self.slots.reset()

    def _loop(self) -> None:
        was_training = bool(getattr(self.model, "training", False))
        self.model.eval()
        try:
            with torch.inference_mode():
                self._warm_up()
                while self._iteration():
                    pass
        finally:
            if was_training:
                self.model.train()

    def _iteration(self) -> bool:
        with self._cond:
            while not (self._stop or self._jobs or self._pending or self._prefilling or self._running):
                self._cond.wait()
            if self._stop:
                return False
            jobs = list(self._jobs)
            self._jobs.clear()
        for fn, fut in jobs:
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as err:  # noqa: BLE001 - handed to the caller
                    fut.set_exception(err)
        try:
            self._drop_cancelled()
            self._admit()
            self._prefill()
            if self._running:
                self._decode()
        except Exception as err:  # noqa: BLE001 - fail the sequences in flight, keep serving
            log.exception("the batching engine failed a step")
            for seq in self._running + self._prefilling:
                seq.fail(err)
            self._running.clear()
            self._free_rows = list(range(self.max_batch))
            self._prefilling.clear()
        finally:
            self._send()
        return True

    def _send(self) -> None:
        """Hands the iteration's events to their sinks (a failing sink must not stop the others)."""
        out, self.outbox[:] = list(self.outbox), []
        if self.deliver is not None:
            if out:
                try:
                    self.deliver(out)
                except Exception:  # noqa: BLE001 - the consumer's failure, not the engine's
                    log.exception("delivering the events of an iteration failed")
            return
        for sink, event in out:
            try:
                sink(event)
            except Exception:  # noqa: BLE001 - a consumer's bug, not the engine's
                log.exception("a request's sink failed")

    def _drop_cancelled(self) -> None:
        with self._cond:
            self._pending = collections.deque(h for h in self._pending if not h.cancelled)
        self._prefilling = [s for s in self._prefilling if not s.handle.cancelled]
        self._leave([s for s in self._running if s.handle.cancelled])

    def _admit(self) -> None:
        """Moves waiting requests into the prefill list while their sequences fit in the free slots."""
        with self._cond:
            while self._pending:
                handle = self._pending[0]
                if self.active + handle.request.n > self.max_batch:
                    break
                self._pending.popleft()
                self._prefilling.extend(Sequence.for_request(handle, self, i) for i in range(handle.request.n))

    @staticmethod
    def _take(seq: Sequence, logits: torch.Tensor, row: int, tok: Optional[int] = None) -> bool:
        """``seq.take`` that fails only this sequence if its sampling settings break (never the batch)."""
        try:
            return seq.take(logits, row, tok)
        except Exception as err:  # noqa: BLE001 - reported to the request
            log.warning("a sequence failed: %s", err)
            seq.fail(err)
            return False

    def _refill(self, seqs: list[Sequence]) -> None:
        """Takes sequences whose rows hold a whole context out of the batch, to re-prefill their latest tokens."""
        if not seqs:
            return
        self._leave(seqs)
        for seq in seqs:
            seq.start_refill()
        self._prefilling[:0] = seqs

    def _claim_row(self) -> int:
        """The row a joining sequence takes: the lowest free one (sparse slots), else the next after the others."""
        return heapq.heappop(self._free_rows) if self._sparse else len(self._running)

    def _leave(self, seqs: list[Sequence]) -> None:
        """Frees the slots of ``seqs``. Sparse slots just take their rows back; otherwise the running sequences in
        rows past the new count move into the freed rows below it (one copy per cache tensor for all of them)."""
        if not seqs:
            return
        leaving = set(map(id, seqs))
        keep = [s for s in self._running if id(s) not in leaving]
        if self._sparse:
            for s in seqs:
                heapq.heappush(self._free_rows, s.row)
                s.row = None
            self._running = keep
            return
        m = len(keep)
        holes = sorted(s.row for s in seqs if s.row < m)
        movers = [s for s in keep if s.row >= m]
        if movers:
            self.slots.move([s.row for s in movers], holes)
            for s, row in zip(movers, holes):
                s.row = row
        for s in seqs:
            s.row = None
        self._running = [None] * m  # type: ignore[list-item]
        for s in keep:
            self._running[s.row] = s

    def _decode(self) -> None:
        running = self._running
        sampling = running
        if self._sparse:  # each sequence in its own row, wherever that is
            logits = self.slots.decode_rows([s.next_input for s in running], [s.row for s in running])
        elif self._feeding:  # rows still taking their prompt (_join_stepwise): no logits, no sampling
            tokens = torch.as_tensor([s.next_input for s in running], dtype=torch.long, device=self.device)
            sampling = [s for s in running if not s.to_prefill]
            logits = self.slots.decode(tokens, [s.row for s in sampling])
            for seq in running:
                if seq.to_prefill:
                    seq.next_input = seq.to_prefill.pop(0)
            self._feeding = len(running) - len(sampling)
        else:
            logits = self.slots.decode(torch.as_tensor([s.next_input for s in running], dtype=torch.long,
                                                       device=self.device))
        self.steps += 1
        chosen = choose_plain(sampling, logits)
        done, full = [], []
        slots_full = self.slots.full
        for i, (seq, tok) in enumerate(zip(sampling, chosen)):
            if not self._take(seq, logits, i, tok):
                done.append(seq)
            elif slots_full(seq.row):  # context full: re-prefill from the latest tokens
                full.append(seq)
        self._leave(done)
        self._refill(full)
