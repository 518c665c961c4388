"""Load test of ``lmforge serve``: many concurrent clients making streamed chat requests.

Starts ``lmforge serve`` as a subprocess on a free loopback port (the real command, so the server and the
clients do not share a Python interpreter), then runs ``--clients`` asyncio clients that each make
``--requests`` streamed ``/v1/chat/completions`` requests one after another. Every request must end with
``data: [DONE]`` and a 200 status; the script exits non-zero otherwise.

Reported: successes, time to first token (first content delta; p50/p99), request latency (p50/p99), and
tokens/s (generated tokens, from the streamed ``usage``, divided by the wall time of the whole run).

Without ``--run`` it writes an untrained model of ``--preset`` (a char tokenizer on the bundled Tiny
Shakespeare) with the run-folder writer: speed does not depend on training, and an untrained model rarely
stops early, so each request generates close to ``--max-tokens`` tokens.

    python benchmarks/bench_serve.py                      # 32 clients x 20 requests, transformer-tiny
    python benchmarks/bench_serve.py --run runs/latest --clients 8 --requests 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


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


async def one_request(client, body: dict) -> dict:
    start = time.perf_counter()
    first = None
    tokens = 0
    done = False
    async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            return {"ok": False, "status": resp.status_code, "error": (await resp.aread()).decode()[:200]}
        async for line in resp.aiter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
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


async def client_loop(url: str, index: int, requests: int, max_tokens: int, results: list) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(600.0)) as client:
        for r in range(requests):
            body = {"messages": [{"role": "user", "content": f"Client {index}, request {r}: speak."}],
                    "max_tokens": max_tokens, "temperature": 0.8, "seed": index * 1000 + r, "stream": True,
                    "stream_options": {"include_usage": True}}
            try:
                results.append(await one_request(client, body))
            except Exception as err:  # noqa: BLE001 - a failed request is counted, not fatal
                results.append({"ok": False, "status": None, "error": repr(err)})


async def run_load(url: str, clients: int, requests: int, max_tokens: int) -> tuple[list, float]:
    results: list = []
    start = time.perf_counter()
    await asyncio.gather(*(client_loop(url, i, requests, max_tokens, results) for i in range(clients)))
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", help="a run folder to serve (default: an untrained --preset model)")
    ap.add_argument("--preset", default="transformer-tiny")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=20, help="requests per client, one after another")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-concurrency", type=int, default=8)
    ap.add_argument("--max-queue", type=int, default=64)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run) if args.run else write_untrained_run(args.preset, Path(tmp) / f"untrained-{args.preset}")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "lmforge", "serve", str(run), "--port", str(port), "--log-level", "warning",
               "--max-concurrency", str(args.max_concurrency), "--max-queue", str(args.max_queue)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        try:
            wait_healthy(url, proc)
            load_before = os.getloadavg()[0]
            results, wall = asyncio.run(run_load(url, args.clients, args.requests, args.max_tokens))
            load_after = os.getloadavg()[0]
        finally:
            proc.terminate()
            proc.wait(30)

    ok = [r for r in results if r["ok"]]
    failed = [r for r in results if not r["ok"]]
    tokens = sum(r["tokens"] for r in ok)
    ttft = [r["ttft"] for r in ok]
    latency = [r["latency"] for r in ok]
    print(f"model: {run.name if args.run else 'untrained ' + args.preset} | clients {args.clients} x requests "
          f"{args.requests} | max_tokens {args.max_tokens} | --max-concurrency {args.max_concurrency}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {load_before:.1f} before / {load_after:.1f} after")
    print(f"succeeded: {len(ok)}/{len(results)}")
    if ok:
        print(f"time to first token: p50 {percentile(ttft, 50) * 1000:.0f} ms, p99 {percentile(ttft, 99) * 1000:.0f} ms,"
              f" mean {statistics.mean(ttft) * 1000:.0f} ms")
        print(f"request latency:     p50 {percentile(latency, 50):.2f} s, p99 {percentile(latency, 99):.2f} s")
        print(f"generated tokens: {tokens} in {wall:.1f} s = {tokens / wall:.1f} tokens/s "
              f"({len(ok) / wall:.2f} requests/s)")
    for r in failed[:5]:
        print("failed:", r)
    return 0 if not failed and len(results) == args.clients * args.requests else 1


if __name__ == "__main__":
    raise SystemExit(main())
