"""How the routes reach the model: through the batching engine, or one request at a time (``--no-batching``).

Both backends give a route the same thing, a :class:`Generation`: an async iterator of
:class:`~lmforge.inference.engine.Event` s (text pieces of each of the request's ``n`` choices, the last one of a
choice with ``finish_reason``) that the route formats as JSON or server-sent events, and ``cancel()``, which a
client disconnect calls to stop the generation and free its slot.

* :class:`BatchBackend` submits to a :class:`~lmforge.inference.engine.BatchEngine` (from
  :meth:`lmforge.api.LM.batch_engine`); other model work (scoring, embeddings) runs on the engine's thread
  between two steps, so one thread owns the model. With ``process=True`` (what ``lmforge serve`` does) the
  engine runs in a child process (:class:`~lmforge.inference.engine_proc.EngineProcess`) and the other model
  work on one worker thread of the server process.
* :class:`SerialBackend` is the older path: each request runs the facade's ``stream``/``stream_chat`` in a
  worker thread behind a fair lock, one model step at a time (kept for comparison and for engines that are
  not an ``LM``, such as a translation run). It offers no token log-probabilities or logit bias.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Iterator, Optional, Union

from lmforge.inference.engine import Event, GenerationRequest
from lmforge.serving.generation import Generation, coalesce
from lmforge.serving.metrics import Metrics
from lmforge.serving.responses import APIError
from lmforge.serving.runtime import QueueFull, Runner

__all__ = ["BatchBackend", "Generation", "SerialBackend", "coalesce"]

Prompt = Union[str, list[int]]

log = logging.getLogger(__name__)


def _shifted(deliver: Callable[[Event], None], offset: int) -> Callable[[Event], None]:
    """``deliver`` for the events of one prompt of several, whose choices start at ``offset``."""

    def sink(event: Event) -> None:
        event.index += offset
        deliver(event)

    return sink


class BatchBackend:
    """Generation through the continuously batched engine of an :class:`lmforge.api.LM`."""

    batching = True

    def __init__(self, lm: Any, metrics: Metrics, max_batch: int, max_queue: int, process: bool = False,
                 event_interval: float = 0.0) -> None:
        self.lm = lm
        self.metrics = metrics
        self.engine = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None  # the loop reading the engine process's pipe
        if process:
            try:  # its events are read by the event loop itself (see _attach): no reader thread
                self.engine = lm.batch_engine(max_batch=max_batch, max_queue=max_queue, process=True, reader=False,
                                              event_interval=event_interval)
            except Exception as err:  # noqa: BLE001 - any failure to start the child: serve from this process
                log.warning("the engine process did not start (%s); running the engine in this process", err)
        if self.engine is None:
            self.engine = lm.batch_engine(max_batch=max_batch, max_queue=max_queue)
        lm.chat_request([{"role": "user", "content": "warm-up"}])  # loads the chat code before the first request

    @property
    def queued(self) -> int:
        return self.engine.queued

    @property
    def active(self) -> int:
        return self.engine.active

    def shutdown(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self.engine.fileno())
        self.engine.stop()

    def _attach(self) -> None:
        """With the engine in a child process: reads its pipe on the running event loop (once per loop), so the
        events reach the streams without a thread handing them over."""
        if not hasattr(self.engine, "pump"):
            return
        loop = asyncio.get_running_loop()
        if loop is self._loop:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self.engine.fileno())
        self._loop = loop
        fd = self.engine.fileno()

        def pump() -> None:
            if not self.engine.pump():  # the child is gone: every stream got its error event
                loop.remove_reader(fd)

        loop.add_reader(fd, pump)

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            return list(self.lm.tokenizer.encode(prompt)) or [int(self.lm.tokenizer.eos_id)]
        return list(prompt)

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Runs ``fn()`` on the engine thread."""
        return await asyncio.wrap_future(self.engine.call(fn))

    def _submit(self, ids: list[int], params: Any, n: int, logprobs: Optional[int], bias: dict[int, float],
                gen: Generation, offset: int = 0) -> Any:
        self._attach()
        # the engine process's events are read on the event loop (see _attach): straight into the generation
        deliver = gen.put if hasattr(self.engine, "pump") else gen.sink
        sink = _shifted(deliver, offset) if offset else deliver

        try:
            return self.engine.submit(GenerationRequest(ids, params, sink, n, logprobs, bias))
        except OverflowError:
            raise QueueFull from None

    async def complete(self, prompts: list[Prompt], sampling: dict, n: int, logprobs: Optional[int],
                       bias: dict[int, float]) -> Generation:
        """Completes each prompt ``n`` times; choice ``c`` of prompt ``p`` has index ``p * n + c``."""
        gen = Generation(len(prompts) * n, self.metrics, n)
        params = self.lm.sampling_params(**sampling)
        handles = []
        for p, prompt in enumerate(prompts):
            handles.append(self._submit(self.prompt_ids(prompt), params, n, logprobs, bias, gen, p * n))
        gen._cancel = lambda: [h.cancel() for h in handles]  # type: ignore[func-returns-value,misc]
        return gen

    async def chat(self, messages: list[dict], sampling: dict, n: int, logprobs: Optional[int],
                   bias: dict[int, float]) -> Generation:
        ids, params = self.lm.chat_request(messages, **sampling)
        gen = Generation(n, self.metrics)
        gen._cancel = self._submit(ids, params, n, logprobs, bias, gen).cancel
        return gen

    async def score(self, ids: list[int], top: int) -> list[Any]:
        """Log-probabilities of the prompt tokens (``None`` first), computed on the engine thread."""
        return await self.call(lambda: self.lm.token_logprobs(ids, top))

    def clean_reply(self, text: str) -> str:
        return self.lm.clean_reply(text)


class SerialBackend:
    """One request at a time through the facade's streaming methods (the path before the batching engine)."""

    batching = False

    def __init__(self, engine: Any, metrics: Metrics, max_concurrency: int, max_queue: int,
                 serialize: bool = True) -> None:
        self.lm = engine
        self.metrics = metrics
        self.runner = Runner(max_concurrency, max_queue, serialize=serialize)

    @property
    def queued(self) -> int:
        return self.runner.waiting

    @property
    def active(self) -> int:
        return self.runner.active

    def shutdown(self) -> None:
        self.runner.shutdown()

    async def call(self, fn: Callable[[], Any]) -> Any:
        return await self.runner.call(fn)

    @staticmethod
    def _refuse(logprobs: Optional[int], bias: dict[int, float]) -> None:
        for wanted, field in ((logprobs is not None, "logprobs"), (bool(bias), "logit_bias")):
            if wanted:
                raise APIError(400, f"{field} needs the batching engine; this server runs with --no-batching",
                               param=field, code="unsupported_parameter")

    async def _run(self, jobs: list[tuple[Callable[[], Iterator[Any]], Callable[[], int]]], n: int) -> Generation:
        """Runs ``jobs`` (start a stream, count its prompt's tokens), one after the other, as one generation."""
        gen = Generation(len(jobs), self.metrics, n)

        def make_iter() -> Iterator[Event]:
            for i, (start, prompt_tokens) in enumerate(jobs):
                stream, counted = start(), 0
                try:
                    for chunk in stream:
                        counted = counted or int(getattr(chunk, "prompt_tokens", 0) or 0) or prompt_tokens()
                        yield Event(i, chunk.text, list(getattr(chunk, "token_ids", []) or []), [],
                                    chunk.finish_reason, int(getattr(chunk, "completion_tokens", 0) or 0), counted)
                finally:
                    stream.close()

        handle = await self.runner.stream(make_iter)

        async def pump() -> None:
            try:
                async for event in handle:
                    gen.put(event)
            except Exception as err:  # noqa: BLE001 - handed to the route as an error event
                gen.put(Event(0, "", [], [], "error", 0, 0, err))

        task = asyncio.ensure_future(pump())
        gen._cancel = lambda: (handle.cancel(), task.cancel())  # type: ignore[func-returns-value]
        return gen

    async def complete(self, prompts: list[Prompt], sampling: dict, n: int, logprobs: Optional[int],
                       bias: dict[int, float]) -> Generation:
        self._refuse(logprobs, bias)

        def count(prompt: Prompt) -> int:
            return int(self.lm.count_tokens(prompt)) if isinstance(prompt, str) else len(prompt)

        jobs = [(lambda p=p, kw=kw: self.lm.stream(p, **kw), lambda p=p: count(p))
                for p in prompts for kw in _choices(sampling, n)]
        return await self._run(jobs, n)

    async def chat(self, messages: list[dict], sampling: dict, n: int, logprobs: Optional[int],
                   bias: dict[int, float]) -> Generation:
        self._refuse(logprobs, bias)
        counter = getattr(self.lm, "count_chat_tokens", None)

        def count() -> int:
            if counter is not None:
                return int(counter(messages))
            return sum(int(self.lm.count_tokens(m["content"])) for m in messages)

        jobs = [(lambda kw=kw: self.lm.stream_chat(messages, **kw), count) for kw in _choices(sampling, n)]
        return await self._run(jobs, n)

    async def score(self, ids: list[int], top: int) -> list[Any]:
        scorer = getattr(self.lm, "token_logprobs", None)
        if scorer is None:
            raise APIError(400, "echo with logprobs needs a language model run", param="echo",
                           code="unsupported_parameter")
        return await self.runner.call(lambda: scorer(ids, top))

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        tok = getattr(self.lm, "tokenizer", None)
        if tok is None or not isinstance(prompt, str):
            return list(prompt) if not isinstance(prompt, str) else []
        return list(tok.encode(prompt)) or [int(tok.eos_id)]

    def clean_reply(self, text: str) -> str:
        cleaner = getattr(self.lm, "clean_reply", None)
        return cleaner(text) if cleaner is not None else text


def _choices(sampling: dict, n: int) -> list[dict]:
    """Per-choice sampling options: choice ``i`` of a seeded request uses ``seed + i`` (as the engine does)."""
    out = []
    for i in range(n):
        kw = dict(sampling)
        if kw.get("seed") is not None:
            kw["seed"] = kw["seed"] + i
        out.append(kw)
    return out
