"""``lmforge prepare DATA``: stream a corpus of any size into token shards (bounded memory, all cores,
resumable, reused while data and tokenizer are unchanged); ``lmforge train --data`` then starts in seconds."""

from __future__ import annotations

import argparse
import json
from typing import Any

DESCRIPTION = ("Prepare a corpus for training: train a tokenizer on a streamed sample, tokenize the corpus on all "
               "cores into memory-mapped token shards with a deterministic train/validation split. An interrupted "
               "run resumes; a finished one is reused while the data and tokenizer are unchanged.")


def add_prepare_args(parser: argparse.ArgumentParser, data_help: str) -> None:
    """The options shared by ``prepare`` and ``data stats``."""
    parser.add_argument("data", metavar="DATA", help=data_help)
    g = parser.add_argument_group("tokenizer")
    g.add_argument("--tokenizer", choices=["char", "word", "bpe"], default="bpe", help="tokenizer kind to train (default bpe)")
    g.add_argument("--tokenizer-file", metavar="FILE", help="use this tokenizer.json (or run folder) instead of training one")
    g.add_argument("--vocab-size", type=int, default=8192, help="vocabulary size (default 8192)")
    g.add_argument("--tokenizer-sample-mb", type=float, default=64.0, metavar="MB",
                   help="train the tokenizer on at most this many MiB spread over the corpus (default 64)")
    d = parser.add_argument_group("data")
    d.add_argument("--val-fraction", type=float, default=0.1, help="share of the text for validation (default 0.1)")
    d.add_argument("--seed", type=int, default=0, help="split seed: the same data and seed give the same split (default 0)")
    d.add_argument("--text-field", default="text", help="the text field of .jsonl/.parquet/datasets records (default text)")
    d.add_argument("--skip-bad", action="store_true", help="count and skip bad records and unreadable files instead of stopping")
    d.add_argument("--workers", type=int, help="processes for the char/word tokenizers (default: every core)")
    d.add_argument("--out", metavar="DIR", help="the prepared folder (default: a folder in the lmforge cache, "
                   "$LMFORGE_CACHE_DIR or ~/.cache/lmforge/prepared)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def configure(parser: argparse.ArgumentParser) -> None:
    """Adds the options of ``lmforge prepare``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = ("examples:\n  lmforge prepare corpus.txt --tokenizer bpe --vocab-size 8192\n"
                     "  lmforge prepare books/ --out prepared/books\n"
                     "  lmforge prepare dump.jsonl.gz --text-field content --skip-bad\n"
                     "  lmforge train --data prepared/books --max-steps 1000")
    add_prepare_args(parser, "a text file, a folder (.txt/.md/.jsonl/.parquet/.pdf/.docx), .jsonl(.gz), .parquet, "
                     "or a Hugging Face save_to_disk folder")
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON")


class PrepareProgress:
    """Rich progress bars fed by ``prepare``'s ``progress(phase, done, total)`` callback (MB read, MB/s, ETA), and
    by evaluation (``phase="eval"``: windows scored, windows/s, ETA)."""

    _NAMES = {"sample": "tokenizer sample", "tokenize": "tokenizing", "eval": "evaluating"}

    def __init__(self, quiet: bool = False, console: Any = None) -> None:
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self.quiet = quiet
        self.progress: Any = None
        self.tasks: dict[str, Any] = {}

    def __call__(self, phase: str, done: int, total: int) -> None:
        if self.quiet:
            return
        if self.progress is None:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("{task.description:<17}"), BarColumn(), TextColumn("{task.fields[amount]}"),
                                     TextColumn("{task.fields[speed]}"), TextColumn("ETA"), TimeRemainingColumn(),
                                     console=self.console)
            self.progress.start()
        if phase not in self.tasks:
            self.tasks[phase] = self.progress.add_task(self._NAMES.get(phase, phase), total=max(total, done, 1),
                                                       amount="", speed="")
        task_id = self.tasks[phase]
        task = self.progress.tasks[task_id]
        rate = task.speed or 0.0
        if phase == "eval":
            amount, speed = f"{done:,}/{total:,} windows", f"{rate:,.1f} windows/s"
        else:
            amount, speed = f"{done / 1e6:,.1f}/{total / 1e6:,.1f} MB", f"{rate / 1e6:,.2f} MB/s"
        self.progress.update(task_id, completed=done, total=max(total, done, 1), amount=amount, speed=speed)

    def event(self, ev: dict) -> None:
        """Feeds a training/evaluation event (``{"event": "prepare"|"eval_progress", ...}``)."""
        self(ev.get("phase", "eval"), ev["done"], ev["total"])
        if ev["event"] == "eval_progress" and ev["done"] >= ev["total"]:
            self.close()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
            self.tasks = {}


def prepare_from_args(args: argparse.Namespace) -> Any:
    """Runs (or reuses) ``prepare`` as the shared options say; a prepared folder is opened as it is."""
    from lmforge.data import is_prepared, load_prepared, prepare
    from lmforge.errors import ConfigError
    from lmforge.tokenizers import load_tokenizer, TokenizerSpec

    if is_prepared(args.data):
        return load_prepared(args.data, load_tokenizer=load_tokenizer)
    if not 0.0 < args.val_fraction < 1.0:
        raise ConfigError(f"--val-fraction must be between 0 and 1 (exclusive), got {args.val_fraction}")
    spec = TokenizerSpec(args.tokenizer, vocab_size=args.vocab_size, path=args.tokenizer_file,
                         sample_mb=args.tokenizer_sample_mb)
    bar = PrepareProgress(args.quiet or getattr(args, "json", False))
    try:
        return prepare(args.data, args.out, tokenizer=spec, val_fraction=args.val_fraction, seed=args.seed,
                       text_field=args.text_field, workers=args.workers, skip_bad=args.skip_bad, progress=bar)
    finally:
        bar.close()


def _summary(data: Any) -> None:
    meta = data.meta
    state = "reused (data and tokenizer unchanged)" if data.reused else "resumed and finished" if data.resumed else "done"
    print(f"prepared {meta['source']['path'] if 'source' in meta else ''}: {state}")
    print(f"  tokenizer   {meta['tokenizer_kind']}, {meta['vocab_size']:,} tokens ({meta['dtype']} shards)")
    for split in ("train", "val"):
        s = meta[split]
        print(f"  {split:<11} {s['documents']:,} documents, {s['chars']:,} characters, {s['bytes']:,} bytes, "
              f"{s['tokens']:,} tokens in {len(meta['shards'][split])} shard(s)")
    skipped = meta.get("skipped") or {}
    if skipped:
        print(f"  skipped     {', '.join(f'{n:,} {why}' for why, n in skipped.items())} (first: {meta.get('first_skip')})")
    print(f"  folder      {data.cache_dir}")
    print(f"train on it:  lmforge train --data {data.cache_dir}")


def run(args: argparse.Namespace) -> int:
    """Prepares the corpus and prints a summary."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    data = prepare_from_args(args)
    if args.json:
        print(json.dumps({**data.meta, "folder": str(data.cache_dir), "reused": data.reused}, indent=2))
    else:
        _summary(data)
    return 0
