"""Load test of ``lmforge serve``: continuous batching against ``--no-batching`` and offline batch generation.

In one run, for one model: ``--clients`` asyncio clients each make ``--requests`` streamed
``/v1/chat/completions`` requests one after another, against ``lmforge serve`` (the batching engine) and then
against ``lmforge serve --no-batching`` (one model step at a time), and the same chat prompts are generated
offline with ``LM.complete`` in batches of ``--clients`` (the ceiling the server is measured against). With
``--rounds 2`` the three are interleaved twice. Each server is the real command in a subprocess on a free
loopback port, so the server and the clients do not share a Python interpreter. Every request must end with
``data: [DONE]`` and a 200 status; the script exits non-zero otherwise. Each server gets one short warm-up
request before the measured load.

Reported per mode: successes, time to first token (first content delta; p50/p99), request latency (p50/p99),
and tokens/s (generated tokens, from the streamed ``usage``, divided by the wall time of the whole run); then
the ratios batching / no-batching and batching / offline.

Without ``--run`` it writes an untrained model of ``--preset`` (a char tokenizer on the bundled Tiny
Shakespeare) with the run-folder writer: speed does not depend on training, and an untrained model rarely
stops early, so each request generates close to ``--max-tokens`` tokens.

    python benchmarks/bench_serve.py --run /tmp/serve_run          # the default trained Transformer (0.8M)
    python benchmarks/bench_serve.py --preset lstm-small           # an (untrained) LSTM of about its size (1.1M)
    python benchmarks/bench_serve.py --preset lstm-tiny            # a 0.1M LSTM: the server's work per token
                                                                   # costs more than the model's
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sse_client import Connection


def write_untrained_run(preset: str, out_dir: Path) -> Path:
    import torch

    from lmforge.config import RunConfig
    from lmforge.config.presets import get_preset
    from lmforge.data import default_corpus_path
    from lmforge.models import build_model
    from lmforge.tokenizers import train_tokenizer
    from lmforge.training.checkpoint import save_run

    tokenizer = train_tokenizer("char", [default_corpus_path().read_text(encoding="utf-8")])
    model_cfg = {**get_preset(preset)["model"], "vocab_size": tokenizer.vocab_size}
    cfg = RunConfig.model_validate({"model": model_cfg, "tokenizer": {"kind": "char"}, "out_dir": str(out_dir)})
    torch.manual_seed(0)
    return save_run(out_dir, cfg, build_model(cfg.model), tokenizer)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


async def sse_lines(resp) -> Any:
    """The lines of a streamed response, split from its raw bytes (httpx's ``aiter_lines`` decodes and splits
    through three more layers; on two shared cores the clients' CPU time is taken from the server's)."""
    tail = b""
    async for data in resp.aiter_raw():
        lines = (tail + data).split(b"\n")
        tail = lines.pop()
        for line in lines:
            yield line
    if tail:
        yield tail


async def one_request(client, body: dict) -> dict:
    """One streamed chat request on ``client`` (a :class:`sse_client.Connection`, or an ``httpx.AsyncClient``
    with ``--client httpx``); every event is parsed as JSON, and the request counts only if it ends with
    ``data: [DONE]``."""
    start = time.perf_counter()
    first = None
    tokens = 0
    done = False
    async with _stream(client, body) as (status, lines):
        if status != 200:
            return {"ok": False, "status": status, "error": b"".join([x async for x in lines]).decode()[:200]}
        async for line in lines:
            if line == b"data: [DONE]":
                done = True
            elif line.startswith(b"data: "):
                event = json.loads(line[6:])
                if "error" in event:
                    return {"ok": False, "status": 200, "error": event["error"]["message"]}
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
                for choice in event.get("choices", []):
                    if first is None and choice["delta"].get("content"):
                        first = time.perf_counter() - start
    total = time.perf_counter() - start
    return {"ok": done, "status": 200, "ttft": first if first is not None else total, "latency": total,
            "tokens": tokens}


@contextlib.asynccontextmanager
async def _stream(client, body: dict):
    """(status, async iterator over the body's lines) of a streamed ``POST /v1/chat/completions``."""
    if isinstance(client, Connection):
        status, lines = await client.post_lines("/v1/chat/completions", json.dumps(body).encode())
        yield status, lines
        return
    async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        yield resp.status_code, sse_lines(resp)


async def client_loop(client, index: int, requests: int, max_tokens: int, results: list) -> None:
    try:
        for r in range(requests):
            body = chat_body(index, r, max_tokens)
            try:
                results.append(await one_request(client, body))
            except Exception as err:  # noqa: BLE001 - a failed request is counted, not fatal
                results.append({"ok": False, "status": None, "error": repr(err)})
                if isinstance(client, Connection):
                    await client.close()  # a broken connection: the next request opens a new one
    finally:
        await (client.close() if isinstance(client, Connection) else client.aclose())


async def run_load(url: str, clients: int, requests: int, max_tokens: int, kind: str = "raw") -> tuple[list, float]:
    """``clients`` clients, each with its own connection, make ``requests`` streamed requests one after another.
    The clients are built (and, for the raw client, connected) before the clock starts: an ``httpx.AsyncClient``
    loads a TLS context (tens of ms of CPU each, unused on plain http) that is no part of what the server does."""
    results: list = []
    if kind == "httpx":
        import httpx

        pool = [httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(600.0)) for _ in range(clients)]
    else:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        pool = [Connection(host, int(port)) for _ in range(clients)]
        await asyncio.gather(*(c.open() for c in pool))
    start = time.perf_counter()
    await asyncio.gather(*(client_loop(c, i, requests, max_tokens, results) for i, c in enumerate(pool)))
    return results, time.perf_counter() - start


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not become healthy in time")


def chat_body(index: int, r: int, max_tokens: int) -> dict:
    return {"messages": [{"role": "user", "content": f"Client {index}, request {r}: speak."}],
            "max_tokens": max_tokens, "temperature": 0.8, "seed": index * 1000 + r, "stream": True,
            "stream_options": {"include_usage": True}}


def serve_and_load(run: Path, args: argparse.Namespace, extra: list[str]) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "lmforge", "serve", str(run), "--port", str(port), "--log-level", "warning",
           "--max-concurrency", str(args.max_concurrency), "--max-queue", str(args.max_queue), *extra]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    try:
        wait_healthy(url, proc)
        asyncio.run(run_load(url, 1, 1, 2, args.client))  # one warm-up request (first-call costs of the request path)
        results, wall = asyncio.run(run_load(url, args.clients, args.requests, args.max_tokens, args.client))
    finally:
        proc.terminate()
        proc.wait(30)
    ok = [r for r in results if r["ok"]]
    tokens = sum(r["tokens"] for r in ok)
    return {"results": results, "ok": ok, "wall": wall, "tokens": tokens, "tps": tokens / wall}


def offline(run: Path, args: argparse.Namespace, clock: Any = time.perf_counter) -> dict:
    """The same chat prompts generated with ``LM.complete`` in batches of ``--clients`` (``wall``: how much
    ``clock`` advanced meanwhile)."""
    import torch

    from lmforge.api import load

    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load(run, device="cpu")
    bodies = [chat_body(i, r, args.max_tokens) for r in range(args.requests) for i in range(args.clients)]
    prompts, params = [], None
    for b in bodies:
        ids, params = lm.chat_request(b["messages"], max_new_tokens=args.max_tokens, temperature=0.8)
        prompts.append(ids)
    lm.complete(prompts[:2], max_new_tokens=2)  # warm-up
    start = clock()
    tokens = 0
    for i in range(0, len(prompts), args.clients):
        done = lm.complete(prompts[i:i + args.clients], max_new_tokens=args.max_tokens, temperature=0.8, seed=i,
                           stop=list(params.stop), stop_token_ids=list(params.stop_token_ids))
        tokens += sum(d.completion_tokens for d in done)
    wall = clock() - start
    return {"tokens": tokens, "wall": wall, "tps": tokens / wall}


def in_process(run: Path, args: argparse.Namespace) -> dict:
    """The batching engine alone, without HTTP: the same chat requests submitted to ``LM.batch_engine()`` at
    once (``--clients`` decode together, the rest wait for a slot), each with its own seed."""
    import torch

    from lmforge.api import load

    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load(run, device="cpu")
    engine = lm.batch_engine(max_batch=args.clients, max_queue=10**6)
    tokens, wall = engine_load(lm, engine, args)
    engine.stop()
    return {"tokens": tokens, "wall": wall, "tps": tokens / wall}


def engine_load(lm: Any, engine: Any, args: argparse.Namespace, clock: Any = time.perf_counter) -> tuple[int, float]:
    """Submits the benchmark's chat requests to ``engine`` at once and waits for all of them: (generated tokens,
    how much ``clock`` advanced from the first submission to the last event)."""
    import threading

    from lmforge.inference.engine import GenerationRequest

    bodies = [chat_body(i, r, args.max_tokens) for r in range(args.requests) for i in range(args.clients)]
    left, counted, done = [len(bodies)], [0], threading.Event()

    def sink(event: Any) -> None:
        if event.finish_reason:
            counted[0] += event.completion_tokens
            left[0] -= 1
            if not left[0]:
                done.set()

    requests = []
    for b in bodies:
        ids, params = lm.chat_request(b["messages"], max_new_tokens=args.max_tokens, temperature=0.8, seed=b["seed"])
        requests.append(GenerationRequest(ids, params, sink))
    start = clock()
    for req in requests:
        engine.submit(req)
    done.wait(3600)
    return counted[0], clock() - start


def report(name: str, m: dict, expected: int) -> bool:
    ok, results = m["ok"], m["results"]
    ttft = [r["ttft"] for r in ok]
    latency = [r["latency"] for r in ok]
    print(f"  {name}: succeeded {len(ok)}/{len(results)}; {m['tokens']} tokens in {m['wall']:.1f} s = "
          f"{m['tps']:.0f} tokens/s")
    if ok:
        print(f"    time to first token p50 {percentile(ttft, 50) * 1000:.0f} ms, p99 {percentile(ttft, 99) * 1000:.0f} ms;"
              f" request latency p50 {percentile(latency, 50):.2f} s, p99 {percentile(latency, 99):.2f} s")
    for r in [r for r in results if not r["ok"]][:5]:
        print("    failed:", r)
    return len(ok) == len(results) == expected


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", help="a run folder to serve (default: an untrained --preset model)")
    ap.add_argument("--preset", default="transformer-tiny")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=5, help="requests per client, one after another")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-concurrency", type=int, default=8, help="for --no-batching")
    ap.add_argument("--max-queue", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds of the three modes")
    ap.add_argument("--threads", type=int, default=None, help="torch threads in every mode (default: torch's)")
    ap.add_argument("--client", choices=["raw", "httpx"], default="raw",
                    help="the load generator: a lean asyncio HTTP/1.1 client (sse_client.py), or httpx")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run) if args.run else write_untrained_run(args.preset, Path(tmp) / f"untrained-{args.preset}")
        print(f"model: {run.name if args.run else 'untrained ' + args.preset} | clients {args.clients} x requests "
              f"{args.requests} | max_tokens {args.max_tokens} | no-batching --max-concurrency {args.max_concurrency} | "
              f"torch threads {args.threads or 'default'} | client {args.client}")
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f} at the start")
        expected = args.clients * args.requests
        good = True
        for rnd in range(args.rounds):
            batched = serve_and_load(run, args, [])
            serial = serve_and_load(run, args, ["--no-batching"])
            ceiling = offline(run, args)
            alone = in_process(run, args)
            print(f"round {rnd + 1} (load average {os.getloadavg()[0]:.1f}):")
            good &= report("batching   ", batched, expected)
            good &= report("no-batching", serial, expected)
            print(f"  offline LM.complete at batch {args.clients}: {ceiling['tokens']} tokens in "
                  f"{ceiling['wall']:.1f} s = {ceiling['tps']:.0f} tokens/s")
            print(f"  the engine in-process (no HTTP, all requests submitted at once): {alone['tokens']} tokens in "
                  f"{alone['wall']:.1f} s = {alone['tps']:.0f} tokens/s = {alone['tps'] / ceiling['tps']:.2f}x offline")
            print(f"  batching / no-batching = {batched['tps'] / serial['tps']:.2f}x (goal >= 4); "
                  f"batching / offline = {batched['tps'] / ceiling['tps']:.2f}x (goal >= 0.6)")
    return 0 if good else 1


if __name__ == "__main__":
    raise SystemExit(main())
