"""``lmforge quantize RUN --bits 8|4 --out RUN_Q``: write a run folder with int8/int4 weights."""

from __future__ import annotations

import argparse

DESCRIPTION = ("Quantize a run's weights (weight-only: int8 per output channel, or int4 in groups) into a new run "
               "folder that generate, chat, serve, eval and lmforge.api load like any other. Measure the quality "
               "change with `lmforge eval` on both folders.")

__all__ = ["DESCRIPTION", "configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Adds the run folder, ``--bits``, ``--group-size``, ``--weights`` and ``--out``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = ("examples:\n  lmforge quantize runs/latest --bits 8 --out runs/latest-int8\n"
                     "  lmforge eval runs/latest-int8")
    parser.add_argument("run", metavar="RUN", help="a float run folder written by `lmforge train` or `lmforge finetune`")
    parser.add_argument("--bits", type=int, choices=[8, 4], default=8, help="8 (per-channel) or 4 (grouped); default 8")
    parser.add_argument("--group-size", type=int, default=32, help="int4: input channels per group (default 32)")
    parser.add_argument("--weights", choices=["last", "best"], default="last", help="which of the run's weights (default last)")
    parser.add_argument("--out", required=True, metavar="RUN_Q", help="the new run folder (must not exist, or be empty)")


def run(args: argparse.Namespace) -> int:
    """Quantizes ``args.run`` into ``args.out`` and prints the sizes."""
    from lmforge.workflows.quantize import quantize_run, size_report

    out = quantize_run(args.run, args.out, bits=args.bits, group_size=args.group_size, weights=args.weights)
    size = size_report(args.run, out)
    print(f"wrote {out} (int{args.bits}): weights {size['quantized_bytes'] / 1e6:.2f} MB, "
          f"{size['ratio']:.0%} of {size['float_bytes'] / 1e6:.2f} MB; check the quality with `lmforge eval {out}`")
    return 0
