"""Forward + backward training throughput (tokens/s) of the model presets, on CPU and (when present) CUDA.

Usage:
    python benchmarks/bench_models.py [--presets transformer-small lstm-small] [--device cpu|cuda|all]
                                      [--batch-size N] [--block-size T] [--vocab-size 5000] [--steps 3]
                                      [--warmup 1] [--repeats 2] [--amp]

Each step is a forward pass with targets, ``loss.backward()`` and zeroing the gradients (no optimizer step,
so the figure is the model's own cost). Tokens/s = batch x context x steps / wall time, after ``--warmup``
untimed steps; the best of ``--repeats`` timed runs is reported (on CPU also tokens per CPU-second of this
process, steadier than wall time on a shared machine). Defaults: batch 16 x context 128 on CPU,
batch 64 x context 256 on CUDA, a 5,000-token vocabulary and float32 (``--amp`` uses bfloat16 autocast on CUDA).
Prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from lmforge.config import RunConfig, get_preset
from lmforge.evaluation.metrics import machine_info
from lmforge.models import build_model
from lmforge.models.run_folder import count_parameters


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(preset: str, device: torch.device, batch: int, block: int, vocab: int, steps: int, warmup: int,
          repeats: int, amp: bool) -> dict:
    """Times ``steps`` forward+backward passes of ``preset``; returns the figures."""
    cfg = RunConfig.parse(get_preset(preset)).model.model_copy(update={"vocab_size": vocab})
    if hasattr(cfg, "block_size") and cfg.family == "transformer" and cfg.block_size < block:
        cfg = cfg.model_copy(update={"block_size": block})
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randint(0, vocab, (batch, block), generator=gen).to(device)
    y = torch.randint(0, vocab, (batch, block), generator=gen).to(device)
    use_amp = amp and device.type == "cuda"

    def one_step() -> None:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            _, loss = model(x, y)
        loss.backward()
        model.zero_grad(set_to_none=True)

    for _ in range(warmup):
        one_step()
    _sync(device)
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            one_step()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return {
        "preset": preset,
        "params": count_parameters(model),
        "device": str(device),
        "batch": batch,
        "block": block,
        "dtype": "bf16 autocast" if use_amp else "fp32",
        "tokens_per_s": batch * block * steps / best,
        "ms_per_step": 1000 * best / steps,
        # CPU seconds used by this process (all threads): on a shared, busy machine tokens per CPU-second is the
        # steadier figure; multiplied by the thread count it estimates the throughput of an idle machine.
        "tokens_per_cpu_s": batch * block * steps / best_cpu if best_cpu > 0 else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["transformer-small", "lstm-small"])
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--block-size", type=int, default=None)
    parser.add_argument("--vocab-size", type=int, default=5000)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast on CUDA")
    args = parser.parse_args()

    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    for dev in devices:
        device = torch.device(dev)
        info = machine_info(device)
        batch = args.batch_size or (16 if dev == "cpu" else 64)
        block = args.block_size or (128 if dev == "cpu" else 256)
        where = info["gpu"]["name"] if info["gpu"] else f"{info['cpu']}, {info['torch_threads']} torch threads"
        load = f", load average {os.getloadavg()[0]:.1f}" if dev == "cpu" and hasattr(os, "getloadavg") else ""
        print(f"\n{dev}: {where}{load}; torch {info['torch']}; batch {batch} x context {block}, vocab {args.vocab_size}, "
              f"{args.steps} steps after {args.warmup} warm-up, best of {args.repeats}\n")
        print("| preset | parameters | dtype | tokens/s (fwd+bwd) | ms/step | tokens per CPU-second |")
        print("|---|---:|---|---:|---:|---:|")
        for preset in args.presets:
            r = bench(preset, device, batch, block, args.vocab_size, args.steps, args.warmup, args.repeats, args.amp)
            cpu_s = f"{r['tokens_per_cpu_s']:,.0f}" if dev == "cpu" else "n/a"
            print(f"| {r['preset']} | {r['params'] / 1e6:.2f}M | {r['dtype']} | {r['tokens_per_s']:,.0f} | "
                  f"{r['ms_per_step']:.1f} | {cpu_s} |", flush=True)


if __name__ == "__main__":
    main()
