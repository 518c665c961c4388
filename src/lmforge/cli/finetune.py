"""``lmforge finetune RUN --data conversations.jsonl --out DIR``: chat fine-tuning into a new run folder."""

from __future__ import annotations

import argparse
import json

from lmforge.cli.lora_args import add_lora_args, lora_overrides

DESCRIPTION = ("Fine-tune a language-model run on conversations (a .jsonl with a 'messages' list per line); the "
               "loss covers only the assistant's replies. Writes a new run folder that `lmforge chat` uses.")

__all__ = ["DESCRIPTION", "configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Adds the options of ``lmforge finetune``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = ("example:\n  lmforge finetune runs/latest --data conversations.jsonl --out runs/chat --max-steps 500\n"
                     "  lmforge chat runs/chat\n\n"
                     'conversations.jsonl, one per line:\n  {"messages": [{"role": "user", "content": "hi"}, '
                     '{"role": "assistant", "content": "hello"}]}')
    parser.add_argument("run", metavar="RUN", help="the base language-model run folder")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="train.* overrides, e.g. train.weight_decay=0")
    parser.add_argument("--data", required=True, metavar="FILE", help="conversations.jsonl")
    parser.add_argument("--val", metavar="FILE", help="validation conversations (default: the last --val-fraction of --data)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share of --data held out for validation (default 0.1)")
    parser.add_argument("--out", metavar="DIR", help="the new run folder (default: RUN-chat)")
    parser.add_argument("--max-steps", type=int, help="optimiser steps (default: 3 epochs)")
    parser.add_argument("--epochs", type=float, help="passes over the conversations")
    parser.add_argument("--time-budget", type=float, metavar="SECONDS", help="stop after this much training time")
    parser.add_argument("--lr", type=float, help="peak learning rate (default 1e-3)")
    parser.add_argument("--batch-size", type=int, help="conversations per step (default: the run's batch size)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], help="where to train (default: the run's setting)")
    add_lora_args(parser)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Fine-tunes and prints the new run's figures."""
    from lmforge.cli.train import _ProgressBar
    from lmforge.config import parse_overrides
    from lmforge.workflows.finetune import finetune

    overrides = parse_overrides(args.overrides)
    for flag, key in (("max_steps", "train.max_steps"), ("epochs", "train.epochs"), ("time_budget", "train.time_budget"),
                      ("lr", "train.lr"), ("batch_size", "train.batch_size")):
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    overrides.update(lora_overrides(args))
    out = args.out or f"{str(args.run).rstrip('/')}-chat"
    bar = _ProgressBar(args.quiet)
    try:
        summary = finetune(args.run, args.data, out, val_data=args.val, val_fraction=args.val_fraction,
                           overrides=overrides, progress=bar, device=args.device)
    finally:
        bar.close()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    acc = summary.get("val_token_accuracy")
    print(f"fine-tuned on {summary['conversations']} conversations for {summary['steps']} steps "
          f"({summary['train_time']:.0f} s): reply loss {summary.get('val_loss', float('nan')):.4f}"
          + (f", reply-token accuracy {acc:.1%}" if acc is not None else ""))
    print(f"run folder: {out}\nchat with it: lmforge chat {out}")
    return 0
