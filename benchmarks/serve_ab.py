"""Interleaved A/B of ``lmforge serve`` (batching) between source trees, with CPU time per process.

For each tree (``label=path/to/src``, put first on ``PYTHONPATH``), in alternating order, ``--pairs`` times:
bench_serve's load (``--clients`` streaming chat clients x ``--requests`` requests x ``--max-tokens`` tokens)
against a real ``lmforge serve --threads 1`` of ``RUN``, recording tokens/s and the CPU seconds of the server
process, of its engine child and of the clients (this process); then offline ``LM.complete`` of the same
prompts at batch ``--clients`` in a fresh process of the same tree. On a machine shared with other jobs the
wall-clock figures are noisy; CPU microseconds per token are steadier, and the ratios of medians are the
figures to quote.

    python benchmarks/serve_ab.py /tmp/lstm_run main=/work/main/src branch=$PWD/src --pairs 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_serve as bs  # noqa: E402


def _cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def served(run: Path, src: str, args: argparse.Namespace) -> dict:
    env = {**os.environ, "PYTHONPATH": src}
    port = bs.free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "lmforge", "serve", str(run), "--port", str(port), "--log-level", "warning",
           "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env=env)
    try:
        bs.wait_healthy(url, proc)
        asyncio.run(bs.run_load(url, 1, 1, 2))
        out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        kids = [int(k) for k in out]
        s0, k0, c0 = _cpu(proc.pid), sum(_cpu(k) for k in kids), time.process_time()
        results, wall = asyncio.run(bs.run_load(url, args.clients, args.requests, args.max_tokens))
        s1, k1, c1 = _cpu(proc.pid), sum(_cpu(k) for k in kids), time.process_time()
    finally:
        proc.terminate()
        proc.wait(30)
    tokens = sum(r["tokens"] for r in results if r["ok"])
    return {"tps": tokens / wall, "tokens": tokens, "ok": sum(r["ok"] for r in results), "n": len(results),
            "server": s1 - s0, "engine": k1 - k0, "client": c1 - c0}


def offline(run: Path, src: str, args: argparse.Namespace) -> float:
    code = ("import sys, json, argparse; sys.path.insert(0, %r); import bench_serve as bs; from pathlib import Path; "
            "a = argparse.Namespace(threads=1, clients=%d, requests=%d, max_tokens=%d); "
            "print(json.dumps(bs.offline(Path(%r), a)))"
            % (str(Path(__file__).resolve().parent), args.clients, args.requests, args.max_tokens, str(run)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": src})
    return float(json.loads(out.stdout.strip().splitlines()[-1])["tps"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("trees", nargs="+", help="label=path/to/src")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()
    trees = [t.split("=", 1) for t in args.trees]
    print(f"load average at the start: {os.getloadavg()[0]:.2f} (1 min), {os.getloadavg()[1]:.2f} (5 min)")
    acc: dict[str, list[dict]] = {name: [] for name, _ in trees}
    for p in range(args.pairs):
        for name, src in (trees if p % 2 == 0 else trees[::-1]):
            r = served(args.run, src, args)
            r["offline"] = offline(args.run, src, args)
            acc[name].append(r)
            per = {k: 1e6 * r[k] / r["tokens"] for k in ("server", "engine", "client")}
            print(f"{name:8s} served {r['tps']:6.0f} tok/s ({r['ok']}/{r['n']} ok)  offline {r['offline']:6.0f} tok/s  "
                  f"CPU us/token: server {per['server']:.0f}, engine {per['engine']:.0f}, client {per['client']:.0f}  "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
    med: dict[str, dict[str, float]] = {}
    for name, rs in acc.items():
        tokens = sum(r["tokens"] for r in rs)
        med[name] = {"served": statistics.median(r["tps"] for r in rs),
                     "offline": statistics.median(r["offline"] for r in rs),
                     **{k: 1e6 * sum(r[k] for r in rs) / tokens for k in ("server", "engine", "client")}}
        m = med[name]
        print(f"{name:8s} median served {m['served']:.0f} tok/s, offline {m['offline']:.0f} tok/s, served/offline "
              f"{m['served'] / m['offline']:.2f}; CPU us/token server {m['server']:.0f}, engine {m['engine']:.0f}, "
              f"client {m['client']:.0f}")
    if len(med) == 2:
        (a, ma), (b, mb) = med.items()
        ratio = {k: mb[k] / ma[k] for k in mb}
        print(f"{b}/{a}: served tok/s x{ratio['served']:.2f}, offline x{ratio['offline']:.2f}, server CPU/token "
              f"x{ratio['server']:.2f}, engine CPU/token x{ratio['engine']:.2f}, client CPU/token x{ratio['client']:.2f}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (1 min), {os.getloadavg()[1]:.2f} (5 min)")
    return 0 if all(r["ok"] == r["n"] for rs in acc.values() for r in rs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
