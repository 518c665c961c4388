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


class BatchEngine:
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

    def _join_stepwise(self) -> None:
        """Where the slots allow it (the LSTM's), a waiting prompt of at most ``stepwise_max`` tokens joins the
        running batch at once and is fed one token per decoding step, riding along with the sequences that
        decode; its first token is sampled after its last prompt token. A prefill of one prompt alone costs
        about as much per token as a whole batch's decoding step (each recurrent step reads every weight), so
        on a busy engine a prompt's tokens cost a few extra batch rows instead (the prefill piggybacks on the
        decode batch as in SARATHI, arXiv:2308.16369). With nothing decoding, prompts still prefill together
        in one call (:meth:`_prefill`); so do the choices of an ``n > 1`` request, which share one prefill."""
        if not (self._running and getattr(self.slots, "stepwise", False)):
            return
        joining = [s for s in self._prefilling if s.request.n == 1 and s.scratch is None
                   and 0 < len(s.to_prefill) <= self.stepwise_max]
        if not joining:
            return
        members = set(map(id, joining))
        self._prefilling = [s for s in self._prefilling if id(s) not in members]
        for seq in joining:
            seq.row = self._claim_row()
            self._running.append(seq)
            seq.next_input = seq.to_prefill.pop(0)
        self.slots.clear([s.row for s in joining])
        self._feeding += len(joining)

    def _prefill(self) -> None:
        """Prefills up to ``prefill_chunk`` prompt tokens. The fresh prompts that fit are fed as one batch (the
        re-prefills of sequences that filled their context, requests that came together), left-padded where
        the slots allow prompts of different lengths (the Transformer's and the LSTM's do), else those of the
        head's length; a prompt longer than the budget is fed in chunks over several iterations (one that only
        overflows what is left of it waits for the next iteration, whole). Sequences whose prompt is done
        take their first token and join the batch; the choices of one request share one prefill."""
        self._join_stepwise()
        budget = self.prefill_chunk
        ragged = bool(getattr(self.slots, "ragged", False))
        while self._prefilling and budget > 0:
            head = self._prefilling[0]
            size = len(head.to_prefill)
            if head.scratch is None and size <= budget:
                reps: list[Sequence] = []
                for s in self._prefilling:
                    n = len(s.to_prefill)
                    if s.scratch is None and (ragged or n == size) and n <= budget \
                            and not any(s.shares_prefill_with(r) for r in reps):
                        reps.append(s)
                        budget -= n
                if self._direct:  # straight into the rows they will decode in
                    rows = [self._claim_row() for _ in reps]
                    self._prefilled(reps, self.slots.feed_rows([r.to_prefill for r in reps], rows), None, rows)
                    continue
                logits, scratch = self.slots.feed(self.slots.scratch(len(reps)), [r.to_prefill for r in reps])
                self._prefilled(reps, logits, scratch)
                continue
            if head.scratch is None and size <= self.prefill_chunk:
                break  # it fits whole in the next iteration's budget: no need to cut it in two
            if head.scratch is None:
                head.scratch = self.slots.scratch()
            chunk = head.to_prefill[:budget]
            logits, head.scratch = self.slots.feed(head.scratch, [chunk])
            head.to_prefill = head.to_prefill[len(chunk):]
            budget -= len(chunk)
            if head.to_prefill:
                break
            self._prefilled([head], logits, head.scratch)

    def _prefilled(self, reps: list[Sequence], logits: torch.Tensor, scratch: Any,
                   rows: Optional[list[int]] = None) -> None:
        """The prompt of ``reps[i]`` is in row ``i`` of ``scratch`` (its last logits ``logits[i]``), or already in
        slot row ``rows[i]``: it and the choices sharing its prefill take their first token together
        (:func:`choose_plain`) and join the batch. Their rows are copied into the slots in one go; from
        ``rows``, the first choice to join keeps the row, the others get a copy of it, and a row nobody joins is
        free again."""
        joining, srows = [], []
        members: set[int] = set()
        for i, rep in enumerate(reps):
            for s in self._prefilling:
                if id(s) not in members and s.shares_prefill_with(rep):
                    members.add(id(s))
                    joining.append(s)
                    srows.append(i)
        self._prefilling = [s for s in self._prefilling if id(s) not in members]
        rows_logits = logits[srows] if srows != list(range(len(reps))) else logits
        chosen = choose_plain(joining, rows_logits)
        joined, used = [], []
        keeper: list[Optional[int]] = [None] * len(reps)  # from rows: the row the first choice to join kept
        copy_src, copy_dst = [], []
        for k, (seq, tok) in enumerate(zip(joining, chosen)):
            seq.to_prefill, seq.scratch = [], None
            if not self._take(seq, rows_logits, k, tok):
                continue  # finished on its first token (or the first after a re-prefill)
            i = srows[k]
            if rows is not None and keeper[i] is None:
                seq.row = keeper[i] = rows[i]
            else:
                seq.row = self._claim_row()
                if rows is None:
                    used.append(i)
                else:
                    copy_src.append(keeper[i])
                    copy_dst.append(seq.row)
            self._running.append(seq)
            joined.append(seq)
        if rows is None:
            if joined:
                self.slots.insert([s.row for s in joined], scratch, used)
        else:
            if copy_dst:
                self.slots.move(copy_src, copy_dst)
            for i, row in enumerate(rows):
                if keeper[i] is None:  # every choice of this prefill finished on its first token
                    heapq.heappush(self._free_rows, row)
        # a prompt as long as the context: no room for the token just chosen
        self._refill([s for s in joined if self.slots.full(s.row)])

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
