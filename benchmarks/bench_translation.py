"""Multi30k English -> German: train a seq2seq Transformer and/or LSTM for a fixed time, then score test2016.

Usage:
    python benchmarks/bench_translation.py [--family transformer lstm] [--minutes 20] [--beam 5]
        [--data ../shared/data/multi30k] [--out runs/bench_translation] [--device auto] [--vocab-size 8000]
        [--max-tokens 4096] [--threads N] [key=value ...]

Each model trains through ``train_translation`` (the code behind ``lmforge train --task translate``) with a
joint byte-level BPE vocabulary, label smoothing 0.1 and a cosine schedule fitted to the time budget
(``train.time_budget``: training seconds, periodic evaluation excluded). The run is then scored on the
1,000-sentence test2016 set with ``evaluate_translation`` (the code behind ``lmforge eval RUN --src --ref``):
sacreBLEU BLEU and chrF on detokenised output, with beam search. ``key=value`` overrides apply to every run
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

# Settings chosen for a small CPU budget (override with key=value; GPU runs can afford the larger presets).
MODELS = {
    "transformer": {"family": "seq2seq_transformer", "d_model": 256, "num_heads": 4, "num_encoder_layers": 3,
                    "num_decoder_layers": 3, "d_ff": 1024, "dropout": 0.1, "share_embeddings": True},
    "lstm": {"family": "seq2seq_lstm", "emb_dim": 256, "hidden_dim": 256, "num_layers": 1, "dropout": 0.2,
             "attention": "general", "bidirectional_encoder": True, "tie_output": False},
}
LR = {"transformer": 2e-3, "lstm": 3e-3}


def _cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")),
                    platform.processor())
    except OSError:
        return platform.processor()


def run_one(family: str, args: argparse.Namespace) -> dict:
    """Trains one family for ``args.minutes`` and scores it on test2016; returns the figures."""
    from lmforge.workflows.translate_run import evaluate_translation, train_translation

    data = Path(args.data)
    out = Path(args.out) / family
    cfg = {
        "task": "translate", "out_dir": str(out), "model": MODELS[family],
        "tokenizer": {"kind": "bpe", "vocab_size": args.vocab_size},
        "data": {"src": str(data / "train.en"), "tgt": str(data / "train.de"), "val_src": str(data / "val.en"),
                 "val_tgt": str(data / "val.de"), "max_tokens": args.max_tokens, "max_len": 128, "joint_vocab": True},
        "train": {"time_budget": args.minutes * 60, "lr": LR[family], "warmup_steps": args.warmup,
                  "schedule": "cosine", "min_lr_ratio": 0.05, "label_smoothing": 0.1, "weight_decay": 0.01,
                  "beta2": 0.98, "eval_interval": args.eval_interval, "eval_iters": 5, "device": args.device,
                  "seed": 1},
    }
    cfg = apply_overrides(cfg, parse_overrides(args.overrides))
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
        "beam": args.beam, "decode_s": round(time.perf_counter() - t1, 1), "bleu_signature": figs["bleu_signature"],
        "device": summary.get("device"), "run_dir": str(out),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", nargs="+", default=["transformer", "lstm"], choices=sorted(MODELS))
    p.add_argument("--minutes", type=float, default=20.0, help="training time per model")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--out", default="runs/bench_translation")
    p.add_argument("--device", default="auto")
    p.add_argument("--vocab-size", type=int, default=6000)
    p.add_argument("--max-tokens", type=int, default=2048)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--eval-interval", type=int, default=100)
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
    print("| model | parameters | steps | epochs | train s | val loss | val BLEU (greedy) | test BLEU (beam %d) | test chrF | decode s |" % args.beam)
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['family']} | {r['parameters']:,} | {r['steps']} | {r['epochs']} | {r['train_time_s']:.0f} | {r['val_loss']:.3f} | "
              f"{r['val_bleu_greedy']:.2f} | {r['test_bleu']:.2f} | {r['test_chrf']:.2f} | {r['decode_s']:.0f} |")


if __name__ == "__main__":
    main()
