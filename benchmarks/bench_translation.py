"""Multi30k English -> German: train a seq2seq Transformer and/or LSTM for a fixed time, then score test2016.

Usage:
    python benchmarks/bench_translation.py [--family transformer lstm] [--minutes 20] [--beam 5]
        [--data ../shared/data/multi30k] [--out runs/bench_translation] [--device auto] [--vocab-size N]
        [--max-tokens N] [--threads N] [key=value ...]

Each model trains through ``train_translation`` (the code behind ``lmforge train --task translate``) with the
library's budget-aware default (:func:`lmforge.config.translate_defaults.choose_translation_preset`: on a CPU
the ``translate-cpu`` presets, a joint 6,000-token byte-level BPE, 2,048-token batches, label smoothing 0.1 and
a cosine schedule fitted to the time budget), plus Multi30k's own validation files. The run is then scored on
the 1,000-sentence test2016 set with ``evaluate_translation`` (the code behind ``lmforge eval RUN --src --ref``):
sacreBLEU BLEU, chrF and TER on detokenised output, with beam search. ``key=value`` overrides apply to every run
(e.g. ``model.d_model=512``). Multi30k is read from the shared data folder and never copied into the package.
Prints one JSON line per model and a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import torch

from lmforge.config import RunConfig, apply_overrides, parse_overrides

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "multi30k"

FAMILIES = ("transformer", "lstm")


def _cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")),
                    platform.processor())
    except OSError:
        return platform.processor()


def run_one(family: str, args: argparse.Namespace) -> dict:
    """Trains one family for ``args.minutes`` and scores it on test2016; returns the figures."""
    from lmforge.config.translate_defaults import choose_translation_preset
    from lmforge.utils.cpu_load import machine_load
    from lmforge.workflows.translate_run import evaluate_translation, train_translation

    data = Path(args.data)
    out = Path(args.out) / family
    choice = choose_translation_preset(args.minutes * 60, device=args.device, family=family, load=machine_load())
    print(choice.reason, flush=True)
    if choice.threads and not args.threads:  # as `lmforge train` does on a busy CPU
        torch.set_num_threads(choice.threads)
    sets = {"out_dir": str(out), "data.src": str(data / "train.en"), "data.tgt": str(data / "train.de"),
            "data.val_src": str(data / "val.en"), "data.val_tgt": str(data / "val.de"), "train.device": args.device}
    for key, value in (("tokenizer.vocab_size", args.vocab_size), ("data.max_tokens", args.max_tokens),
                       ("train.warmup_steps", args.warmup), ("train.eval_interval", args.eval_interval)):
        if value is not None:
            sets[key] = value
    cfg = apply_overrides(apply_overrides(choice.config, sets), parse_overrides(args.overrides))
    config = RunConfig.parse(cfg, source="bench_translation")
    t0 = time.perf_counter()
    summary = train_translation(config)
    t_train = time.perf_counter() - t0
    t1 = time.perf_counter()
    figs = evaluate_translation(out, data / "test.en", data / "test.de", beam=args.beam, device=args.device,
                                batch_size=64)
    return {
        "family": family, "parameters": summary["parameters"], "steps": summary["steps"],
        "train_time_s": summary["train_time"], "wall_train_s": round(t_train, 1),
        "epochs": round(summary["tokens_seen"] / summary["train_target_tokens"], 2),
        "train_pairs": summary["train_pairs"],
        "tokens_seen": summary["tokens_seen"], "val_loss": summary.get("val_loss"),
        "val_bleu_greedy": summary.get("val_bleu"), "test_bleu": figs["bleu"], "test_chrf": figs["chrf"],
        "test_ter": figs["ter"], "preset": choice.preset, "tokens_per_s": summary.get("train_tokens_per_s"),
        "beam": args.beam, "decode_s": round(time.perf_counter() - t1, 1), "bleu_signature": figs["bleu_signature"],
        "device": summary.get("device"), "run_dir": str(out),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    p.add_argument("--minutes", type=float, default=20.0, help="training time per model")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--out", default="runs/bench_translation")
    p.add_argument("--device", default="auto")
    p.add_argument("--vocab-size", type=int, help="default: the chosen preset's")
    p.add_argument("--max-tokens", type=int, help="default: the chosen preset's")
    p.add_argument("--warmup", type=int, help="default: the chosen preset's")
    p.add_argument("--eval-interval", type=int, help="default: the chosen preset's")
    p.add_argument("--threads", type=int)
    p.add_argument("overrides", nargs="*", help="key=value settings applied to every run")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    machine = torch.cuda.get_device_name(0) if args.device == "cuda" else f"{_cpu_name()}, {torch.get_num_threads()} threads"
    rows = []
    for family in args.family:
        res = run_one(family, args)
        res["machine"] = machine
        print(json.dumps(res), flush=True)
        rows.append(res)
    print(f"\nmachine: {machine}; torch {torch.__version__}; {args.minutes:g} min of training per model\n")
    print("| model | preset | parameters | steps | epochs | train s | val loss | val BLEU (greedy) | test BLEU (beam %d) "
          "| test chrF | test TER | decode s |" % args.beam)
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['family']} | {r['preset']} | {r['parameters']:,} | {r['steps']} | {r['epochs']} | {r['train_time_s']:.0f} | "
              f"{r['val_loss']:.3f} | {r['val_bleu_greedy']:.2f} | {r['test_bleu']:.2f} | {r['test_chrf']:.2f} | "
              f"{r['test_ter']:.2f} | {r['decode_s']:.0f} |")


if __name__ == "__main__":
    main()
