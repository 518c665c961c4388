"""An OpenAI-compatible HTTP API and a web chat page for one lmforge run (FastAPI).

Routes: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (``stream: true`` gives
server-sent events in OpenAI's chunk format ending with ``data: [DONE]``), ``POST /v1/embeddings``,
``POST /v1/translations`` (lmforge's own, for translation runs), ``GET /health`` and the chat page at ``/``.

This module only adapts HTTP to the :mod:`lmforge.api` facade (``LM`` / ``Translator``); it holds no model
logic. Model calls run in worker threads (:mod:`lmforge.serving.runtime`); errors come back as OpenAI's error
object ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status.

Example:
    >>> from lmforge.serving.app import create_app          # doctest: +SKIP
    >>> app = create_app("runs/shakespeare", api_key="s3cret")
    >>> import uvicorn; uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import base64
import contextlib
import logging
from importlib import resources
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmforge.errors import LMForgeError
from lmforge.serving.middleware import GuardMiddleware
from lmforge.serving.responses import APIError, SSEResponse, sse, validation_error
from lmforge.serving.runtime import QueueFull, Runner
from lmforge.serving.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    TranslationRequest,
    error_body,
    new_id,
    now,
)

__all__ = ["create_app", "APIError"]

log = logging.getLogger(__name__)

PUBLIC_PATHS = ("/", "/health", "/index.html")
_PAGE_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
             "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'")


def _load(engine_or_run: Any) -> Any:
    if isinstance(engine_or_run, (str, Path)):
        from lmforge.api import load

        return load(engine_or_run)
    return engine_or_run


def create_app(engine_or_run: Any, api_key: Optional[str] = None, max_concurrency: int = 8,
               max_queue: int = 64, max_body_bytes: int = 1 << 20, default_max_tokens: int = 256,
               serialize: bool = True, body_timeout_s: float = 30.0) -> FastAPI:
    """Builds the server for one run.

    Args:
        engine_or_run: a run folder (loaded with :func:`lmforge.api.load`) or an already loaded ``LM`` /
            ``Translator`` (anything with the same methods).
        api_key: when set, every route but ``/health`` and ``/`` needs ``Authorization: Bearer KEY``.
        max_concurrency: model calls running at once (each in its own worker thread).
        max_queue: requests allowed to wait for a free slot; one more gets 429.
        max_body_bytes: the largest request body accepted (413 above it).
        default_max_tokens: tokens generated when a request gives no ``max_tokens`` (capped by the context).
        serialize: one lock around every model step (see :class:`~lmforge.serving.runtime.Runner`).
        body_timeout_s: the most seconds a client may take to send its request body (408 after it).

    Returns:
        A FastAPI app; run it with ``uvicorn.run(app, host="127.0.0.1", port=8000)``.
    """
    engine = _load(engine_or_run)
    runner = Runner(max_concurrency, max_queue, serialize=serialize)
    is_translator = hasattr(engine, "translate") and not hasattr(engine, "stream_chat")
    kind = "translation" if is_translator else "lm"
    name = str(getattr(engine, "name", None) or (Path(engine_or_run).name if isinstance(engine_or_run, (str, Path))
                                                  else "lmforge"))
    context = getattr(engine, "max_context", None)
    context = int(context) if isinstance(context, (int, float)) and 0 < context < float("inf") else None
    created = now()
    page = resources.files("lmforge.serving").joinpath("static/index.html").read_text(encoding="utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        runner.shutdown()

    app = FastAPI(title="lmforge", version="1", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.engine, app.state.runner, app.state.model_name = engine, runner, name

    # ----- errors -----
    @app.exception_handler(APIError)
    async def _api_error(_req: Request, err: APIError) -> JSONResponse:
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, err: RequestValidationError) -> JSONResponse:
        return validation_error(err).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(req: Request, err: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code)
        message = str(err.detail)
        if code:
            message = f"{message}: {req.method} {req.url.path}; the routes are listed at /docs"
        return JSONResponse(error_body(message, "invalid_request_error", None, code),
                            status_code=err.status_code, headers=getattr(err, "headers", None))

    @app.exception_handler(LMForgeError)
    async def _user_error(_req: Request, err: LMForgeError) -> JSONResponse:
        return APIError(400, str(err), code="invalid_request").response()

    @app.exception_handler(QueueFull)
    async def _busy(_req: Request, _err: QueueFull) -> JSONResponse:
        resp = APIError(429, f"the server is busy ({runner.admission.slots} running, {runner.admission.queue_size} "
                        "waiting); retry shortly", "rate_limit_error", code="queue_full").response()
        resp.headers["Retry-After"] = "1"
        return resp

    @app.exception_handler(Exception)
    async def _crash(_req: Request, err: Exception) -> JSONResponse:
        log.exception("unhandled error while serving a request")
        return JSONResponse(error_body("internal server error", "server_error"), status_code=500)

    # ----- checks shared by the routes -----
    def check_model(model: Optional[str]) -> None:
        if model is not None and model != name:
            raise APIError(404, f"the model {model!r} does not exist; this server serves {name!r}",
                           param="model", code="model_not_found")

    def need(wanted: str, route: str) -> None:
        if kind != wanted:
            other = "/v1/translations" if kind == "translation" else "/v1/chat/completions or /v1/completions"
            raise APIError(400, f"{route} needs a {'language model' if wanted == 'lm' else 'translation'} run, "
                           f"but {name!r} is a {'translation' if kind == 'translation' else 'language'} model; "
                           f"use {other}", code="unsupported_for_model")

    def max_new(req: Any) -> int:
        asked = getattr(req, "max_completion_tokens", None) or req.max_tokens
        if asked is not None and context is not None and asked > context:
            raise APIError(400, f"max_tokens={asked} is above the model's context of {context} tokens; "
                           f"ask for at most {context}", param="max_tokens", code="context_length_exceeded")
        if asked is not None:
            return asked
        return min(default_max_tokens, context) if context else default_max_tokens

    def per_choice(req: Any, max_tokens: int) -> list[dict[str, Any]]:
        base = req.sampling(max_tokens)
        out = []
        for i in range(req.n):
            kwargs = dict(base)
            if req.seed is not None:
                kwargs["seed"] = req.seed + i  # distinct yet reproducible choices
            out.append(kwargs)
        return out

    def stream_response(make_iter: Callable[[], Iterator[Any]], render: Callable[[Any], list[bytes]],
                        finish: Callable[[], list[bytes]]) -> Any:
        async def start() -> SSEResponse:
            handle = await runner.stream(make_iter)

            async def body() -> AsyncIterator[bytes]:
                try:
                    async for item in handle:
                        for event in render(item):
                            yield event
                    for event in finish():
                        yield event
                    yield b"data: [DONE]\n\n"
                except (LMForgeError, ValueError) as err:
                    yield sse(error_body(str(err), "invalid_request_error"))
                except Exception:  # noqa: BLE001 - reported in the stream; headers are already sent
                    log.exception("generation failed mid-stream")
                    yield sse(error_body("internal server error during generation", "server_error"))

            return SSEResponse(body(), on_close=handle.cancel)

        return start()

    # ----- routes -----
    @app.get("/", include_in_schema=False)
    @app.get("/index.html", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": _PAGE_CSP, "X-Content-Type-Options": "nosniff"})

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": name, "kind": kind, "active": runner.active, "queued": runner.waiting}

    def model_card() -> dict:
        return {"id": name, "object": "model", "created": created, "owned_by": "lmforge",
                "lmforge": {"kind": kind, "max_context": context}}

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str) -> dict:
        check_model(model_id)
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest) -> Any:
        check_model(req.model)
        need("lm", "/v1/chat/completions")
        messages = [m.as_dict() for m in req.messages]
        choices = per_choice(req, max_new(req))
        rid, stamp = new_id("chatcmpl"), now()
        head = {"id": rid, "object": "chat.completion", "created": stamp, "model": name}

        if not req.stream:
            results = await runner.call(lambda: [engine.chat(messages, **kw) for kw in choices])
            prompt = int(results[0].prompt_tokens)
            done = sum(int(r.completion_tokens) for r in results)
            return {**head, "choices": [
                {"index": i, "message": {"role": "assistant", "content": r.text}, "logprobs": None,
                 "finish_reason": r.finish_reason} for i, r in enumerate(results)],
                "usage": {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}}

        state = {"prompt": None, "tokens": [0] * req.n}
        chunk_head = {**head, "object": "chat.completion.chunk"}

        def make_iter() -> Iterator[tuple[int, Any]]:
            for i, kw in enumerate(choices):
                yield i, None  # announces the choice: the role delta
                stream = engine.stream_chat(messages, **kw)
                try:
                    for chunk in stream:
                        # the generator's own count of the templated prompt, as the non-streamed reply gives
                        state["prompt"] = state["prompt"] or getattr(chunk, "prompt_tokens", None)
                        yield i, chunk
                finally:
                    stream.close()
            if req.include_usage and not state["prompt"]:
                state["prompt"] = _chat_prompt_tokens(engine, messages)

        def render(item: tuple[int, Any]) -> list[bytes]:
            i, chunk = item
            if chunk is None:
                return [sse({**chunk_head, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                        "logprobs": None, "finish_reason": None}]})]
            state["tokens"][i] = int(getattr(chunk, "completion_tokens", 0) or 0)
            out = []
            if chunk.text:
                out.append(sse({**chunk_head, "choices": [{"index": i, "delta": {"content": chunk.text},
                                                           "logprobs": None, "finish_reason": None}]}))
            if chunk.finish_reason:
                out.append(sse({**chunk_head, "choices": [{"index": i, "delta": {}, "logprobs": None,
                                                           "finish_reason": chunk.finish_reason}]}))
            return out

        def finish() -> list[bytes]:
            if not req.include_usage:
                return []
            prompt, done = int(state["prompt"] or 0), sum(state["tokens"])
            return [sse({**chunk_head, "choices": [], "usage": {
                "prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}})]

        return await stream_response(make_iter, render, finish)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest) -> Any:
        check_model(req.model)
        need("lm", "/v1/completions")
        prompts = req.prompts()
        choices = per_choice(req, max_new(req))
        rid, stamp = new_id("cmpl"), now()
        head = {"id": rid, "object": "text_completion", "created": stamp, "model": name}

        def prompt_tokens() -> int:
            return sum(int(engine.count_tokens(p)) for p in prompts)

        if not req.stream:
            def work() -> tuple[list[Any], int]:
                runs = [engine.complete(prompts, **kw) for kw in choices]  # runs[choice][prompt]
                return [runs[c][p] for p in range(len(prompts)) for c in range(req.n)], prompt_tokens()

            results, prompt = await runner.call(work)
            done = sum(int(r.completion_tokens) for r in results)
            return {**head, "choices": [
                {"index": i, "text": r.text, "logprobs": None, "finish_reason": r.finish_reason}
                for i, r in enumerate(results)],
                "usage": {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}}

        state = {"prompt": 0, "tokens": {}}

        def make_iter() -> Iterator[tuple[int, Any]]:
            for p, text in enumerate(prompts):
                for c, kw in enumerate(choices):
                    stream = engine.stream(text, **kw)
                    try:
                        yield from ((p * req.n + c, chunk) for chunk in stream)
                    finally:
                        stream.close()
            if req.include_usage:
                state["prompt"] = prompt_tokens()

        def render(item: tuple[int, Any]) -> list[bytes]:
            i, chunk = item
            state["tokens"][i] = int(getattr(chunk, "completion_tokens", 0) or 0)
            if not chunk.text and not chunk.finish_reason:
                return []
            return [sse({**head, "choices": [{"index": i, "text": chunk.text, "logprobs": None,
                                               "finish_reason": chunk.finish_reason or None}]})]

        def finish() -> list[bytes]:
            if not req.include_usage:
                return []
            prompt, done = state["prompt"], sum(state["tokens"].values())
            return [sse({**head, "choices": [], "usage": {
                "prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}})]

        return await stream_response(make_iter, render, finish)

    @app.post("/v1/embeddings")
    async def embeddings(req: EmbeddingRequest) -> dict:
        check_model(req.model)
        need("lm", "/v1/embeddings")
        texts = list(req.input)

        def work() -> tuple[Any, int]:
            return engine.embed(texts), sum(int(engine.count_tokens(t)) for t in texts)

        vectors, tokens = await runner.call(work)
        data = []
        for i, vec in enumerate(vectors):
            if req.encoding_format == "base64":
                import numpy as np

                value: Any = base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode()
            else:
                value = [float(x) for x in vec]
            data.append({"object": "embedding", "index": i, "embedding": value})
        return {"object": "list", "data": data, "model": name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @app.post("/v1/translations")
    async def translations(req: TranslationRequest) -> dict:
        check_model(req.model)
        need("translation", "/v1/translations")
        texts = list(req.input)
        outputs = await runner.call(lambda: engine.translate(texts, beam=req.beam, max_len=req.max_len))
        return {"object": "list", "model": name,
                "data": [{"object": "translation", "index": i, "text": t} for i, t in enumerate(outputs)]}

    app.add_middleware(GuardMiddleware, api_key=api_key, public_paths=PUBLIC_PATHS, max_body_bytes=max_body_bytes,
                       body_timeout_s=body_timeout_s)
    return app


def _chat_prompt_tokens(engine: Any, messages: list[dict]) -> int:
    """Tokens in the rendered chat prompt, for an engine whose streamed chunks do not carry ``prompt_tokens``:
    from the engine when it can count them, else the message contents alone."""
    counter = getattr(engine, "count_chat_tokens", None)
    if counter is not None:
        return int(counter(messages))
    return sum(int(engine.count_tokens(m["content"])) for m in messages)
