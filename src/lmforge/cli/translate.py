"""``lmforge translate RUN``: one sentence per input line in, one translation per output line out, in order."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = ("Translate text with a translation run: reads one sentence per line (standard input by default) and "
               "writes one translation per line, in the same order. Long files show a progress bar on stderr.")

PROGRESS_MIN_LINES = 50  # files at least this long get a progress bar


def configure(parser: argparse.ArgumentParser) -> None:
    """Adds the options of ``lmforge translate``."""
    parser.add_argument("run_dir", metavar="RUN", help="a translation run folder written by `lmforge train --task translate`")
    parser.add_argument("--beam", type=int, default=5, help="beam size; 1 is greedy search (default 5)")
    parser.add_argument("--input", "-i", metavar="FILE", help="sentences to translate, one a line (default: standard input)")
    parser.add_argument("--output", "-o", metavar="FILE", help="where to write the translations (default: standard output)")
    parser.add_argument("--max-len", type=int, help="the most output tokens per sentence (default: 1.5 x source + 10)")
    parser.add_argument("--batch-size", type=int, default=32, help="sentences translated together (default 32)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default auto)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _interactive(translator, args: argparse.Namespace) -> int:
    # A terminal on stdin: translate each line as soon as it is typed.
    for line in sys.stdin:
        print(translator.translate([line.rstrip("\n")], beam=args.beam, max_len=args.max_len)[0], flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    """Translates the input and writes the output."""
    from lmforge.api import Translator
    from lmforge.errors import ConfigError

    if args.beam < 1:
        raise ConfigError(f"--beam must be at least 1 (1 is greedy), got {args.beam}")
    translator = Translator.load(args.run_dir, device=args.device)
    if args.input is None and args.output is None and sys.stdin.isatty():
        return _interactive(translator, args)
    if args.input is not None:
        from lmforge.data.parallel import read_lines

        lines = read_lines(args.input, "input file")
    else:
        lines = sys.stdin.read().split("\n")
        if lines and lines[-1] == "":
            lines.pop()
    progress, bar = None, None
    if not args.quiet and len(lines) >= PROGRESS_MIN_LINES:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

        bar = Progress("translating", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                       console=Console(stderr=True), transient=True)
        task = bar.add_task("translate", total=len(lines))
        bar.start()
        progress = lambda done: bar.update(task, completed=done)  # noqa: E731
    try:
        out = translator.translate(lines, beam=args.beam, max_len=args.max_len, batch_size=args.batch_size,
                                   progress=progress)
    finally:
        if bar is not None:
            bar.stop()
    text = "".join(t.replace("\n", " ") + "\n" for t in out)
    if args.output is not None:
        from lmforge.utils.files import atomic_write_text

        atomic_write_text(args.output, text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    return 0
