"""``lmforge eval RUN``: loss, perplexity, bits per character and per byte of a trained language model (or BLEU
and chrF of a translation run with ``--src``/``--ref``)."""

from __future__ import annotations

import argparse
import json

from lmforge.errors import ConfigError

DESCRIPTION = ("Evaluate a run: token loss, perplexity, bits per character and per byte (from the real character "
               "and byte counts of the text), tokens and tokens/s; translation runs: BLEU and chrF.")


def configure(parser: argparse.ArgumentParser) -> None:
    """Adds the options of ``lmforge eval``."""
    parser.add_argument("run_dir", metavar="RUN", help="a run folder written by `lmforge train`")
    parser.add_argument("--data", metavar="PATH", help="score this text (any input of `lmforge prepare`) in full instead of the run's split")
    parser.add_argument("--split", choices=["val", "test"], default="val", help="which split of the run's corpus (default val)")
    parser.add_argument("--src", metavar="FILE", help="translation runs: source sentences")
    parser.add_argument("--ref", metavar="FILE", help="translation runs: reference translations aligned with --src")
    parser.add_argument("--beam", type=int, default=5, help="translation runs: beam size")
    parser.add_argument("--batch-size", type=int, help="windows per forward pass (default: the run's batch size)")
    parser.add_argument("--max-tokens", type=int, metavar="N",
                        help="score at most N tokens, in windows spread evenly over the text (default: all of it)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: every core)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or mps (default cpu)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")


def _print_table(figs: dict) -> None:
    rows = [("loss (nats/token)", figs.get("loss"), ".4f"), ("perplexity", figs.get("perplexity"), ".3f"),
            ("bits per char", figs.get("bits_per_char"), ".4f"), ("bits per byte", figs.get("bits_per_byte"), ".4f"),
            ("tokens", figs.get("tokens"), ","), ("tokens/s", figs.get("tokens_per_s"), ",.0f"),
            ("BLEU", figs.get("bleu"), ".2f"), ("chrF", figs.get("chrf"), ".2f")]
    print(f"{figs.get('run', '')}  on  {figs.get('data', '')} ({figs.get('split', '')})")
    for name, value, spec in rows:
        if value is not None:
            print(f"  {name:<18} {format(value, spec)}")
    for name, key in (("BLEU signature", "bleu_signature"), ("chrF signature", "chrf_signature")):
        if figs.get(key):  # sacreBLEU's settings, which make the scores reproducible
            print(f"  {name:<18} {figs[key]}")


def run(args: argparse.Namespace) -> int:
    """Evaluates the run and prints the figures."""
    from pathlib import Path

    from lmforge.models.run_folder import RUN_CONFIG_FILE as CONFIG_FILE

    config_path = Path(args.run_dir) / CONFIG_FILE
    is_translation = bool(args.src or args.ref)
    if not is_translation and config_path.is_file():
        from lmforge.config import RunConfig

        try:
            is_translation = RunConfig.from_yaml(config_path).task == "translate"
        except ConfigError:
            pass
    if is_translation:
        if not (args.src and args.ref):
            raise ConfigError("a translation run is evaluated on aligned files: pass --src FILE --ref FILE")
        from lmforge.workflows.translate_run import evaluate_translation

        figs = evaluate_translation(args.run_dir, args.src, args.ref, beam=args.beam, device=args.device)
    else:
        import os

        import torch

        from lmforge.cli.prepare import PrepareProgress
        from lmforge.workflows.lm_run import evaluate_run

        torch.set_num_threads(args.threads or os.cpu_count() or 1)
        bar = PrepareProgress(args.quiet or args.json)
        try:
            figs = evaluate_run(args.run_dir, data=args.data, split=args.split, batch_size=args.batch_size,
                                device=args.device, max_tokens=args.max_tokens, progress=bar.event)
        finally:
            bar.close()
    if args.json:
        print(json.dumps(figs, indent=2))
    else:
        _print_table(figs)
    return 0
