"""``lmforge serve RUN``: an OpenAI-compatible HTTP API and a web chat page for a trained run."""

from __future__ import annotations

import argparse
import gc
import ipaddress
import logging
import os

from lmforge.cli.generate import add_compile_arg, apply_compile
from lmforge.errors import LMForgeError

DESCRIPTION = (
    "Serve a run over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, /v1/embeddings, "
    "/v1/translations, /v1/models, /tokenize, /detokenize, /tokenizer_info, /metrics, /health) with a web chat "
    "page at /; concurrent requests share decoding steps (continuous batching) unless --no-batching. Binds to 127.0.0.1 unless --host says "
    "otherwise. Needs the [serve] extra: pip install 'lmforge[serve]'."
)

__all__ = ["DESCRIPTION", "configure", "run"]

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="a run folder (from `lmforge train`)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1, this machine only; 0.0.0.0 = every interface)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument("--api-key", default=os.environ.get("LMFORGE_API_KEY"),
                        help="require 'Authorization: Bearer KEY' on every route but /health and / "
                             "(default: $LMFORGE_API_KEY, else no key)")
    parser.add_argument("--max-batch", type=int, default=32, metavar="N",
                        help="sequences decoded together by the batching engine (default 32)")
    parser.add_argument("--no-batching", action="store_true",
                        help="serve one model step at a time in worker threads (the path before continuous "
                             "batching; for comparison)")
    parser.add_argument("--engine-thread", action="store_true",
                        help="run the batching engine in a thread of the server process instead of a process of "
                             "its own (then the engine and the HTTP event loop share one GIL: slower, but one "
                             "process and a faster start)")
    parser.add_argument("--max-concurrency", type=int, default=8, metavar="N",
                        help="with --no-batching: generations running at once, taking turns token by token "
                             "(default 8)")
    parser.add_argument("--max-queue", type=int, default=64, metavar="N",
                        help="requests waiting for a free slot before the server answers 429 (default 64)")
    parser.add_argument("--max-body-kb", type=int, default=1024, metavar="KB",
                        help="largest request body accepted, in KiB (default 1024)")
    parser.add_argument("--stream-interval-ms", type=float, default=20.0, metavar="MS",
                        help="the least milliseconds between two writes of one stream after its first token; the "
                             "tokens made meanwhile go out in one event, which saves CPU with many streams (default "
                             "20; 0 writes every token as it comes)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads for torch (default: torch's choice; 1 can be much faster on a busy "
                             "machine, where a multi-threaded step waits for descheduled threads)")
    parser.add_argument("--otel", action=argparse.BooleanOptionalAction, default=None,
                        help="FastAPI's OpenTelemetry spans, metrics and logs for each request (default: on only "
                             "when OpenTelemetry is set up: OTEL_* environment variables, or providers installed "
                             "as opentelemetry-instrument does; lmforge's own counters are at /metrics)")
    add_compile_arg(parser)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    if args.max_concurrency < 1:
        raise LMForgeError(f"--max-concurrency must be at least 1, got {args.max_concurrency}")
    if args.max_batch < 1:
        raise LMForgeError(f"--max-batch must be at least 1, got {args.max_batch}")
    if args.threads is not None and args.threads < 1:
        raise LMForgeError(f"--threads must be at least 1, got {args.threads}")
    if args.stream_interval_ms < 0:
        raise LMForgeError(f"--stream-interval-ms must be 0 or more, got {args.stream_interval_ms:g}")
    if args.max_queue < 0:
        raise LMForgeError(f"--max-queue must be 0 or more, got {args.max_queue}")
    if not 0 <= args.port <= 65535:
        raise LMForgeError(f"--port must be between 0 and 65535, got {args.port}")
    try:
        import uvicorn

        from lmforge.serving.app import create_app
        from lmforge.serving.transport import http_protocol
    except ImportError as err:
        raise LMForgeError(f"serving needs FastAPI and uvicorn ({err.name} is missing); "
                           "install them with: pip install 'lmforge[serve]'") from None
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if not _is_loopback(args.host) and not args.api_key:
        log.warning("serving on %s without --api-key: anyone who can reach this address can use the model",
                    args.host)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    engine: object = args.run
    if args.compile or args.quantize:
        from lmforge.api import load

        engine = load(args.run)
        apply_compile(engine, args)
    app = create_app(engine, api_key=args.api_key, max_concurrency=args.max_concurrency,
                     max_queue=args.max_queue, max_body_bytes=args.max_body_kb * 1024,
                     batching=not args.no_batching, max_batch=args.max_batch,
                     engine_process=not args.engine_thread, stream_interval=args.stream_interval_ms / 1000,
                     telemetry=args.otel)
    print(f"lmforge: serving {app.state.model_name} on http://{args.host}:{args.port}/ (chat page) and "
          f"http://{args.host}:{args.port}/v1 (API); Ctrl+C stops", flush=True)
    # What is loaded by now (torch, the model, the app) lives as long as the server: frozen out of the garbage
    # collector's full collections, which would scan all of it (0.1-0.15 s each for a small model, a stall of
    # every stream, and ~6% of the server's CPU under load; issue 15).
    gc.collect()
    gc.freeze()
    # On Ctrl+C, streams still running get 5 s to finish; then their generations are cancelled. The writes of a
    # connection within one event-loop iteration leave as one (lmforge.serving.transport).
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5,
                http=http_protocol())
    return 0
