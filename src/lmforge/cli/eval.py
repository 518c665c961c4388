"""``lmforge eval RUN``: loss, perplexity, bits per character and per byte of a trained language model (or BLEU,
chrF and TER of a translation run with ``--src``/``--ref``, and with ``--compare OTHER_RUN`` sacreBLEU's paired
bootstrap test between the two runs)."""

from __future__ import annotations

import argparse
import json

from lmforge.cli.translate import apply_threads
from lmforge.errors import ConfigError

DESCRIPTION = ("Evaluate a run: token loss, perplexity, bits per character and per byte (from the real character "
               "and byte counts of the text), tokens and tokens/s; translation runs: BLEU, chrF and TER, and with "
               "--compare a paired bootstrap significance test against a second run.")


def configure(parser: argparse.ArgumentParser) -> None:
    """Adds the options of ``lmforge eval``."""
    parser.add_argument("run_dir", metavar="RUN", help="a run folder written by `lmforge train`")
    parser.add_argument("--data", metavar="PATH", help="score this text (any input of `lmforge prepare`) in full instead of the run's split")
    parser.add_argument("--split", choices=["val", "test"], default="val", help="which split of the run's corpus (default val)")
    parser.add_argument("--src", metavar="FILE", help="translation runs: source sentences")
    parser.add_argument("--ref", metavar="FILE", help="translation runs: reference translations aligned with --src")
    parser.add_argument("--beam", type=int, default=5, help="translation runs: beam size")
    parser.add_argument("--compare", metavar="OTHER_RUN", help="translation runs: compare RUN (the baseline) with "
                        "OTHER_RUN by paired bootstrap resampling: BLEU/chrF/TER with 95%% confidence intervals and p-values")
    parser.add_argument("--bootstrap-samples", type=int, default=1000, metavar="N",
                        help="resamples of the paired bootstrap test (default 1000)")
    parser.add_argument("--batch-size", type=int, help="windows per forward pass (default: the run's batch size)")
    parser.add_argument("--max-tokens", type=int, metavar="N",
                        help="score at most N tokens, in windows spread evenly over the text (default: all of it)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: every core; translation runs: 1 when other "
                        "processes already fill the cores)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or mps (default cpu)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")


def _print_table(figs: dict) -> None:
    rows = [("loss (nats/token)", figs.get("loss"), ".4f"), ("perplexity", figs.get("perplexity"), ".3f"),
            ("bits per char", figs.get("bits_per_char"), ".4f"), ("bits per byte", figs.get("bits_per_byte"), ".4f"),
            ("tokens", figs.get("tokens"), ","), ("tokens/s", figs.get("tokens_per_s"), ",.0f"),
            ("BLEU", figs.get("bleu"), ".2f"), ("chrF", figs.get("chrf"), ".2f"), ("TER", figs.get("ter"), ".2f"),
            ("skipped empty pairs", figs.get("skipped_empty_pairs") or None, ",")]
    print(f"{figs.get('run', '')}  on  {figs.get('data', '')} ({figs.get('split', '')})")
    for name, value, spec in rows:
        if value is not None:
            print(f"  {name:<18} {format(value, spec)}")
    for name, key in (("BLEU signature", "bleu_signature"), ("chrF signature", "chrf_signature"),
                      ("TER signature", "ter_signature")):
        if figs.get(key):  # sacreBLEU's settings, which make the scores reproducible
            print(f"  {name:<18} {figs[key]}")


def _print_comparison(figs: dict) -> None:
    print(f"paired bootstrap resampling ({figs['n_samples']} resamples, {figs['sentences']} sentences of "
          f"{figs['data']}, beam {figs['beam']}); 95% confidence intervals; p: the chance of a difference at least "
          "this large if the systems were equally good")
    print(f"  {'system':<28} {'BLEU':>18} {'chrF':>18} {'TER (lower=better)':>20}")
    for i, row in enumerate(figs["systems"]):
        cells = []
        for key in ("bleu", "chrf", "ter"):
            m = row[key]
            cell = f"{m['score']:.2f} ({m['mean']:.2f} ± {m['ci']:.2f})"
            cells.append(cell + ("" if m["p_value"] is None else f" p={m['p_value']:.4f}"))
        name = ("baseline: " if i == 0 else "") + row["name"]
        print(f"  {name:<28} " + "  ".join(cells))
    for key, sig in figs["signatures"].items():
        print(f"  {key} signature: {sig}")


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
    if args.compare and not (args.src and args.ref):
        raise ConfigError("--compare scores two translation runs on aligned files: pass --src FILE --ref FILE too")
    if is_translation:
        if not (args.src and args.ref):
            raise ConfigError("a translation run is evaluated on aligned files: pass --src FILE --ref FILE")
        from lmforge.workflows import translate_run

        apply_threads(args.threads)
        if args.compare:
            if args.bootstrap_samples < 1:
                raise ConfigError(f"--bootstrap-samples must be at least 1, got {args.bootstrap_samples}")
            figs = translate_run.compare_translation(args.run_dir, args.compare, args.src, args.ref, beam=args.beam,
                                                     device=args.device, n_samples=args.bootstrap_samples)
            if args.json:
                print(json.dumps(figs, indent=2))
            else:
                _print_comparison(figs)
            return 0
        figs = translate_run.evaluate_translation(args.run_dir, args.src, args.ref, beam=args.beam, device=args.device)
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
