"""``lmforge compare``: train several models on the same data and budget, measure them alike, write a report."""

from __future__ import annotations

import argparse
import shlex
from typing import Any

DESCRIPTION = (
    "Train each model on the same data, tokenizer and budget, measure them the same way (quality, speed, "
    "memory, size) and write report.md, report.json, plots and samples to --out. With --from, re-render an "
    "existing report.json without training."
)

DEFAULT_MODELS = "lstm-classic,transformer-classic"


def configure(parser: argparse.ArgumentParser) -> None:
    """Adds the options of ``lmforge compare``."""
    parser.add_argument("--data", default=None, help="text file, folder or .jsonl to train on (default: the bundled Tiny Shakespeare)")
    parser.add_argument("--tokenizer", choices=["char", "bpe"], default="char", help="tokenizer trained once and shared by every model (default: char)")
    parser.add_argument("--vocab-size", type=int, default=2000, help="bpe only: vocabulary size (default: 2000)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--budget-seconds", type=float, default=None, metavar="S",
                        help="training time for all models together, split equally (default: 300)")
    budget.add_argument("--budget-tokens", type=int, default=None, metavar="N", help="training tokens for each model")
    parser.add_argument("--models", default=DEFAULT_MODELS,
                        help=f"comma-separated preset names or config files (default: {DEFAULT_MODELS}; "
                             "'lstm' and 'transformer' stand for the classic pair)")
    parser.add_argument("--out", default=None, help="output folder (default: runs/compare; with --from, the report's folder)")
    parser.add_argument("--from", dest="from_report", default=None, metavar="REPORT_JSON",
                        help="re-render report.md and the plots from this report.json; trains nothing")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where to train and measure (default: auto)")
    parser.add_argument("--batch-size", type=int, default=32, help="training batch size in sequences (default: 32)")
    parser.add_argument("--block-size", type=int, default=None, help="training window in tokens (default: the smallest model context, at most 256)")
    parser.add_argument("--eval-tokens", type=int, default=None, help="validation tokens for the final evaluation (default: the whole split)")
    parser.add_argument("--evals", type=int, default=10, help="validation points on the loss curves during training (default: 10)")
    parser.add_argument("--repeats", type=int, default=10, help="timed repeats for each latency figure (default: 10)")
    parser.add_argument("--decode-length", type=int, default=256, help="tokens generated for the time-per-token curve (default: 256)")
    parser.add_argument("--sample-tokens", type=int, default=200, help="tokens in each sample (default: 200)")
    parser.add_argument("--prompt", action="append", default=None, help="prompt for the samples (repeatable)")
    parser.add_argument("--seed", type=int, default=1337, help="seed for data order, initialisation and sampling")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for training and measuring (default: torch's choice; 1 on a shared machine)")
    parser.add_argument("--note", action="append", default=[], help="a sentence added to the report's notes (repeatable; with --from, added to that report)")
    parser.add_argument("--no-isolate", dest="isolate", action="store_false",
                        help="train every model in this process (faster start, but memory peaks then depend on the order)")


def _command_line(args: argparse.Namespace) -> str:
    """The full command, every setting spelled out, so the report says exactly how to reproduce it."""
    parts = ["lmforge", "compare", "--models", args.models, "--tokenizer", args.tokenizer]
    if args.tokenizer == "bpe":
        parts += ["--vocab-size", str(args.vocab_size)]
    if args.data:
        parts += ["--data", args.data]
    if args.budget_tokens is not None:
        parts += ["--budget-tokens", str(args.budget_tokens)]
    else:
        parts += ["--budget-seconds", f"{args.budget_seconds if args.budget_seconds is not None else 300:g}"]
    for flag, value in (("--device", args.device), ("--batch-size", args.batch_size), ("--block-size", args.block_size),
                        ("--eval-tokens", args.eval_tokens), ("--evals", args.evals), ("--repeats", args.repeats),
                        ("--decode-length", args.decode_length), ("--sample-tokens", args.sample_tokens),
                        ("--seed", args.seed), ("--threads", args.threads)):
        if value is not None:
            parts += [flag, str(value)]
    for prompt in args.prompt or []:
        parts += ["--prompt", prompt]
    for note in args.note:
        parts += ["--note", note]
    if not args.isolate:
        parts.append("--no-isolate")
    parts += ["--out", args.out or "runs/compare"]
    return " ".join(shlex.quote(p) for p in parts)


def run(args: argparse.Namespace) -> int:
    """Runs ``lmforge compare``; returns the exit code."""
    import logging

    from lmforge.errors import ConfigError
    from lmforge.evaluation.report import load_report, write_report

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.from_report:
        from pathlib import Path

        source = Path(args.from_report)
        report = load_report(source)
        target = Path(args.out) if args.out else (source if source.is_dir() else source.parent)
        new_notes = [n for n in args.note if n not in report.get("notes", [])]
        report["notes"] = list(report.get("notes") or []) + new_notes  # annotate a finished report
        paths = write_report(report, target, json_too=args.out is not None or bool(new_notes))
        print(f"wrote {paths['markdown']} and {len(paths['plots'])} plots from {source}")
        return 0

    from lmforge.workflows.compare import CompareSettings, run_compare

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if len(models) < 1:
        raise ConfigError("--models is empty; pass e.g. --models lstm-classic,transformer-classic")
    settings = CompareSettings(
        models=models, data=args.data, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
        budget_seconds=args.budget_seconds, budget_tokens=args.budget_tokens, out_dir=args.out or "runs/compare",
        device=args.device, batch_size=args.batch_size, block_size=args.block_size, eval_tokens=args.eval_tokens,
        evals=args.evals, repeats=args.repeats, decode_length=args.decode_length, sample_tokens=args.sample_tokens,
        prompts=args.prompt, seed=args.seed, notes=list(args.note), isolate=args.isolate, threads=args.threads,
        command=_command_line(args),
    )
    report: dict[str, Any] = run_compare(settings)
    paths = write_report(report, settings.out_dir)
    print(f"wrote {paths['markdown']}, {paths['json']} and {len(paths['plots'])} plots")
    return 0
