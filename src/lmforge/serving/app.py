"""An OpenAI-compatible HTTP API and a web chat page for one lmforge run (FastAPI).

Routes (one module per family in :mod:`lmforge.serving.routes`): ``GET /v1/models``, ``POST /v1/completions``,
``POST /v1/chat/completions`` (``stream: true`` gives server-sent events in OpenAI's chunk format ending with
``data: [DONE]``), ``POST /v1/embeddings``, ``POST /v1/translations`` (lmforge's own, for translation runs),
vLLM's ``POST /tokenize``, ``POST /detokenize`` and ``GET /tokenizer_info``, ``GET /metrics`` (Prometheus),
``GET /health`` and the chat page at ``/``.

This package only adapts HTTP to the :mod:`lmforge.api` facade; it holds no model logic. A language model is
served by a continuously batched engine (:meth:`lmforge.api.LM.batch_engine`); ``batching=False`` keeps the
older path, one model step at a time in worker threads (:mod:`lmforge.serving.runtime`). Errors come back as
OpenAI's error object ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status.

Example:
    >>> from lmforge.serving.app import create_app          # doctest: +SKIP
    >>> app = create_app("runs/shakespeare", api_key="s3cret")
    >>> import uvicorn; uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
from importlib import resources
from pathlib import Path
from typing import Any, AsyncIterator, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lmforge.errors import LMForgeError
from lmforge.serving.backend import BatchBackend, SerialBackend
from lmforge.serving.metrics import Metrics, MetricsMiddleware
from lmforge.serving.middleware import GuardMiddleware
from lmforge.serving.openapi import install_openapi
from lmforge.serving.responses import APIError, validation_error
from lmforge.serving.routes import ROUTERS
from lmforge.serving.routes.page import PUBLIC_PATHS
from lmforge.serving.runtime import QueueFull
from lmforge.serving.schemas import error_body, now
from lmforge.serving.state import ServerState
from lmforge.api import load

__all__ = ["create_app", "APIError", "telemetry_wanted"]

log = logging.getLogger(__name__)


def _load(engine_or_run: Any) -> Any:
    if isinstance(engine_or_run, (str, Path)):
        return load(engine_or_run)
    return engine_or_run


def _install_errors(app: FastAPI, srv: ServerState) -> None:
    """Every error becomes OpenAI's error object with the right status (400 for invalid requests)."""

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
        resp = APIError(429, f"the server is busy ({srv.backend.active} running, {srv.backend.queued} waiting); "
                        "retry shortly", "rate_limit_error", code="queue_full").response()
        resp.headers["Retry-After"] = "1"
        return resp

    @app.exception_handler(Exception)
    async def _crash(_req: Request, err: Exception) -> JSONResponse:
        log.exception("unhandled error while serving a request")
        return JSONResponse(error_body("internal server error", "server_error"), status_code=500)


def _facts(engine: Any, engine_or_run: Any) -> tuple[str, str, Optional[int], Optional[int]]:
    is_translator = hasattr(engine, "translate") and not hasattr(engine, "stream_chat")
    name = str(getattr(engine, "name", None) or (Path(engine_or_run).name if isinstance(engine_or_run, (str, Path))
                                                  else "lmforge"))
    context = getattr(engine, "max_context", None)
    context = int(context) if isinstance(context, (int, float)) and 0 < context < float("inf") else None
    vocab = getattr(getattr(engine, "tokenizer", None), "vocab_size", None)
    return name, "translation" if is_translator else "lm", context, int(vocab) if vocab else None


_UNSET_PROVIDERS = frozenset({"ProxyTracerProvider", "NoOpTracerProvider", "_ProxyMeterProvider", "NoOpMeterProvider",
                              "ProxyLoggerProvider", "NoOpLoggerProvider"})


def _providers_installed() -> bool:
    """Whether this process installed an OpenTelemetry tracer, meter or logger provider (in code)."""
    try:
        from opentelemetry import _logs, metrics, trace  # optional: FastAPI's own dependency since 0.165
    except ImportError:
        return False
    providers = (trace.get_tracer_provider(), metrics.get_meter_provider(), _logs.get_logger_provider())
    return any(type(p).__name__ not in _UNSET_PROVIDERS for p in providers)


def telemetry_wanted(flag: Optional[bool] = None) -> bool:
    """Whether FastAPI's own OpenTelemetry instrumentation runs: ``flag`` when given, else only when
    OpenTelemetry is set up by the time the app is made: an ``OTEL_*`` variable (as ``opentelemetry-instrument``
    and OTLP exporters are configured) or ``FASTAPI_OTEL_AUTO_CONFIGURE``, or a provider installed in code."""
    if flag is not None:
        return flag
    return any(name.startswith(("OTEL_", "FASTAPI_OTEL_")) for name in os.environ) or _providers_installed()


def _telemetry_kwargs(wanted: bool) -> dict[str, Any]:
    """``FastAPI(...)`` arguments turning its native OpenTelemetry off when not ``wanted``: otherwise it checks
    the global providers on every request (a few percent of the server's CPU under load, issue 15), even with
    no provider configured. FastAPI versions before the ``telemetry`` argument have no such check."""
    if wanted or "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}}


def create_app(engine_or_run: Any, api_key: Optional[str] = None, max_concurrency: int = 8,
               max_queue: int = 64, max_body_bytes: int = 1 << 20, default_max_tokens: int = 256,
               body_timeout_s: float = 30.0, batching: bool = True, max_batch: int = 32,
               serialize: bool = True, engine_process: bool = False, stream_interval: float = 0.0,
               telemetry: Optional[bool] = None) -> FastAPI:
    """Builds the server for one run.

    Args:
        engine_or_run: a run folder (loaded with :func:`lmforge.api.load`) or an already loaded ``LM`` /
            ``Translator`` (anything with the same methods).
        api_key: when set, every route but ``/health`` and ``/`` needs ``Authorization: Bearer KEY``.
        max_concurrency: without batching, model calls running at once (each in its own worker thread).
        max_queue: requests allowed to wait for a free slot; one more gets 429.
        max_body_bytes: the largest request body accepted (413 above it).
        default_max_tokens: tokens generated when a request gives no ``max_tokens`` (capped by the context).
        body_timeout_s: the most seconds a client may take to send its request body (408 after it).
        batching: serve a language model through the continuously batched engine (an ``LM`` only; other
            engines always take the one-at-a-time path).
        max_batch: with batching, the most sequences decoded together.
        serialize: without batching, one lock around every model step (see
            :class:`~lmforge.serving.runtime.Runner`).
        engine_process: with batching, run the engine in a child process
            (:class:`~lmforge.inference.engine_proc.EngineProcess`), away from the event loop's GIL; what
            ``lmforge serve`` does. Off by default here: a child costs seconds to start.
        stream_interval: the least seconds between two writes of a stream after its first (the tokens made
            meanwhile go out together; a choice that finishes is written at once). 0 writes every event. With
            ``engine_process`` the engine's child merges each running choice's events over the same interval
            before they cross the pipe (first and last events go at once).
        telemetry: FastAPI's native OpenTelemetry spans, metrics and logs (FastAPI 0.165 and later); ``None``
            (the default) turns them on only when OpenTelemetry is set up when the app is made (``OTEL_*``
            environment variables or a provider installed, :func:`telemetry_wanted`); pass ``True`` for providers
            installed later. The server's own counters are at ``/metrics`` either way.

    Returns:
        A FastAPI app; run it with ``uvicorn.run(app, host="127.0.0.1", port=8000)``.
    """
    engine = _load(engine_or_run)
    name, kind, context, vocab = _facts(engine, engine_or_run)
    metrics = Metrics({})
    if batching and kind == "lm" and hasattr(engine, "batch_engine") and hasattr(engine, "model"):
        backend: Any = BatchBackend(engine, metrics, max_batch, max_queue, engine_process, stream_interval)
    else:
        backend = SerialBackend(engine, metrics, max_concurrency, max_queue, serialize)
    metrics.gauges.update({
        "queue_depth": ("Requests waiting for a free slot.", lambda: backend.queued),
        "active_sequences": ("Sequences being generated (or requests running, without batching).",
                             lambda: backend.active)})
    page = resources.files("lmforge.serving").joinpath("static/index.html").read_text(encoding="utf-8")
    if stream_interval < 0:
        raise ValueError(f"stream_interval must be 0 or more, got {stream_interval}")
    srv = ServerState(engine, backend, metrics, name, kind, context, vocab, now(), default_max_tokens, page,
                      stream_interval)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        backend.shutdown()

    app = FastAPI(title="lmforge", version="1", lifespan=lifespan, docs_url="/docs", redoc_url=None,
                  **_telemetry_kwargs(telemetry_wanted(telemetry)))
    app.state.server, app.state.engine, app.state.model_name = srv, engine, name
    _install_errors(app, srv)
    for router in ROUTERS:
        app.include_router(router)
    install_openapi(app, kind, context, vocab)
    app.add_middleware(GuardMiddleware, api_key=api_key, public_paths=PUBLIC_PATHS, max_body_bytes=max_body_bytes,
                       body_timeout_s=body_timeout_s)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
