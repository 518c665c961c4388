"""Training speed and quality: `lmforge train`'s default preset on Tiny Shakespeare under a time budget.

Usage:
    python benchmarks/bench_train.py                      # the shakespeare-char preset, 120 s budget
    python benchmarks/bench_train.py --time-budget 60 model.d_model=192 train.lr=3e-3
    python benchmarks/bench_train.py --throughput         # ms per training step only (no quality)

Prints one JSON line per run: validation loss (full validation split), bits per char, steps, tokens/s, wall
time, and the 1-minute load average before and after (other processes on the machine slow training down).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except Exception:
        return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="dotted config overrides")
    ap.add_argument("--preset", default="shakespeare-char")
    ap.add_argument("--time-budget", type=float, default=None, help="default: the preset's")
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--throughput", action="store_true", help="time 30 training steps instead of a full run")
    args = ap.parse_args()

    import torch

    from lmforge.config import RunConfig, get_preset
    from lmforge.workflows.lm_run import train_lm

    if args.threads:
        torch.set_num_threads(args.threads)
    data = get_preset(args.preset)
    cfg = RunConfig.parse(data)
    sets: dict = {"out_dir": tempfile.mkdtemp(prefix="bench_train_")}
    if args.time_budget is not None:
        sets["train.time_budget"] = args.time_budget
    if args.max_steps is not None:
        sets["train.max_steps"] = args.max_steps
    if args.throughput:
        sets.update({"train.max_steps": 30, "train.time_budget": None, "train.eval_interval": 10_000})
    from lmforge.config import parse_overrides

    cfg = cfg.with_overrides({**sets, **parse_overrides(args.overrides)})
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    summary = train_lm(cfg, sample_prompt=None)
    wall = time.perf_counter() - t0
    out = {
        "preset": args.preset, "overrides": args.overrides, "threads": torch.get_num_threads(),
        "val_loss": round(summary["val_loss"], 4), "val_bits_per_char": round(summary["val_bits_per_char"], 4),
        "best_periodic_val_loss": summary.get("best_val_loss"), "steps": summary["steps"],
        "train_time_s": summary["train_time"], "ms_per_step": round(1000 * summary["train_time"] / max(1, summary["steps"]), 2),
        "train_tokens_per_s": round(summary["train_tokens_per_s"]), "parameters": summary["parameters"],
        "wall_s": round(wall, 1), "load_before": round(load0, 2), "load_after": round(os.getloadavg()[0], 2),
        "cpu": _cpu(), "cores": os.cpu_count(), "torch": torch.__version__,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
