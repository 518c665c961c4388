"""Import and LoRA benchmarks (BENCHMARKS.md, "Interop"): a 124M-parameter GPT-2-shaped random model built by
transformers from GPT2Config() and saved under a temporary folder (never committed).

1. ``lmforge import`` time and peak memory, against ``transformers``' ``from_pretrained`` of the same folder,
   interleaved (float32 and bfloat16 checkpoints).
2. LoRA vs full fine-tuning of the imported model with ``lmforge train --init-from`` (continued pre-training):
   trainable parameters, peak memory and tokens/s, a few steps each, interleaved.

Every measurement runs in its own process; peak memory is that process's maximum resident set size.

    PYTHONPATH=src python benchmarks/bench_interop.py [--rounds 2] [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def child(code: str, env: dict | None = None) -> tuple[float, float, str]:
    """Runs ``code`` in a fresh interpreter: (wall seconds, peak RSS MiB of that process, stdout)."""
    start = time.perf_counter()
    wrapped = code + "\nimport resource, sys; print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    out = subprocess.run([PY, "-c", wrapped], capture_output=True, text=True, env={**os.environ, **(env or {})})
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    wall = time.perf_counter() - start
    peak = next(int(line.split()[1]) for line in out.stdout.splitlines() if line.startswith("PEAK")) / 1024
    return wall, peak, out.stdout


def build(folder: Path, dtype: str) -> None:
    child(f"""
import sys, torch, transformers
sys.path.insert(0, {str(ROOT / 'tests' / 'interop')!r})
from hf_fixtures import build_tokenizer
torch.manual_seed(0)
m = transformers.GPT2LMHeadModel(transformers.GPT2Config())
print(sum(p.numel() for p in m.parameters()))
m.to(getattr(torch, {dtype!r})).save_pretrained({str(folder)!r})
build_tokenizer(__import__('pathlib').Path({str(folder)!r}))
""")


def bench_import(tmp: Path, rounds: int) -> list[dict]:
    rows = []
    baseline = child("import torch, lmforge.interop.hf_import, transformers")[1]
    for dtype in ("float32", "bfloat16"):
        folder = tmp / f"gpt2-{dtype}"
        build(folder, dtype)
        for r in range(rounds):
            out = tmp / f"run-{dtype}-{r}"
            _, peak, text = child(f"""
import time
t = time.perf_counter()
from lmforge.interop.hf_import import import_hf
s = import_hf({str(folder)!r}, {str(out)!r})
print('T', time.perf_counter() - t, s['parameters'])
""")
            t_lm = float(next(line.split()[1] for line in text.splitlines() if line.startswith("T")))
            _, peak_hf, text = child(f"""
import time, torch
t = time.perf_counter()
import transformers
m = transformers.AutoModelForCausalLM.from_pretrained({str(folder)!r}, dtype=getattr(torch, {dtype!r}))
print('T', time.perf_counter() - t)
""")
            t_hf = float(next(line.split()[1] for line in text.splitlines() if line.startswith("T")))
            rows.append({"dtype": dtype, "round": r, "lmforge_import_s": t_lm, "lmforge_peak_mib": peak,
                         "transformers_load_s": t_hf, "transformers_peak_mib": peak_hf, "baseline_mib": baseline,
                         "checkpoint_mib": sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 2**20})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def bench_lora(tmp: Path, rounds: int, steps: int) -> list[dict]:
    run = tmp / "run-float32-0"
    text = tmp / "text.txt"
    text.write_text("the cat sat on the mat. what is my name? you are zorp.\n" * 400)
    rows = []
    for r in range(rounds):
        for mode, extra in (("full", []), ("lora r=8", ["--lora-rank", "8"])):
            out = tmp / f"ft-{r}-{mode.split()[0]}"
            args = ["train", "--init-from", str(run), "--data", str(text), "--out", str(out), "--max-steps", str(steps),
                    "--batch-size", "4", "--json", "--quiet", "data.block_size=128", "train.eval_interval=100000",
                    "train.eval_iters=1", "train.sample_tokens=0", "train.warmup_steps=0", *extra]
            _, peak, stdout = child(f"from lmforge.cli.main import main; main({args!r})")
            s = json.loads(stdout[: stdout.rindex("PEAK")])
            rows.append({"mode": mode, "round": r, "trainable": s["trainable_parameters"], "parameters": s["parameters"],
                         "peak_mib": peak, "tokens_per_s": s["train_tokens_per_s"], "steps": s["steps"]})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(), flush=True)
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-interop-", dir="/tmp") as tmp:
        bench_import(Path(tmp), args.rounds)
        bench_lora(Path(tmp), args.rounds, args.steps)
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
