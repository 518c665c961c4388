"""``lmforge data stats DATA_OR_PREPARED``: documents, characters, bytes, tokens, characters per token, the
unknown-token rate, a document-length histogram and the top tokens (``--plot FILE.png`` draws them)."""

from __future__ import annotations

import argparse
import json

from lmforge.cli.prepare import add_prepare_args, prepare_from_args

DESCRIPTION = ("Corpus figures: documents, characters, bytes, tokens, characters per token, unknown-token rate, "
               "document lengths and the most frequent tokens. Raw data is prepared first (the same cache as "
               "`lmforge prepare`).")


def configure(parser: argparse.ArgumentParser) -> None:
    """Adds the ``stats`` subcommand."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    stats = sub.add_parser("stats", help="figures of a corpus or a prepared folder", description=DESCRIPTION)
    add_prepare_args(stats, "a prepared folder, or raw data (any input of `lmforge prepare`)")
    stats.add_argument("--top", type=int, default=20, help="how many of the most frequent tokens to list (default 20)")
    stats.add_argument("--plot", metavar="FILE.png", help="draw the histograms and top tokens into this PNG")
    stats.add_argument("--json", action="store_true", help="print the figures as JSON")


def _print(stats: dict) -> None:
    def num(v):
        return "n/a" if v is None else f"{v:,.3f}" if isinstance(v, float) else f"{v:,}"

    print(f"corpus: {stats['folder']}  ({stats['tokenizer']['kind']} tokenizer, {stats['tokenizer']['vocab_size']:,} tokens)")
    for key in ("documents", "chars", "bytes", "tokens", "chars_per_token", "bytes_per_token"):
        print(f"  {key.replace('_', ' '):<20} {num(stats[key])}")
    print(f"  {'unknown-token rate':<20} {stats['unk_rate']:.4%}")
    print(f"  {'tokens per document':<20} mean {stats['doc_tokens_mean']:,.1f}, median {stats['doc_tokens_median']:,.0f}, "
          f"max {stats['doc_tokens_max']:,}")
    for split, s in stats["splits"].items():
        print(f"  {split:<20} {s['documents']:,} documents, {s['tokens']:,} tokens")
    if stats["skipped"]:
        print(f"  {'skipped':<20} {', '.join(f'{n:,} {why}' for why, n in stats['skipped'].items())}")
    print("document length (tokens):")
    peak = max((b["count"] for b in stats["doc_tokens"]), default=1) or 1
    for b in stats["doc_tokens"]:
        print(f"  {b['lo']:>10,} - {b['hi'] - 1:<10,} {b['count']:>9,}  {'#' * round(40 * b['count'] / peak)}")
    print("top tokens:")
    for t in stats["top_tokens"]:
        print(f"  {t['id']:>7}  {json.dumps(t['token'], ensure_ascii=False):<16} {t['count']:>12,}  {t['share']:.2%}")


def run(args: argparse.Namespace) -> int:
    """Prepares (or opens) the corpus, then prints (and plots) its figures."""
    from lmforge.data.stats import corpus_stats, plot_stats

    stats = corpus_stats(prepare_from_args(args), top=args.top)
    if args.plot:
        plot_stats(stats, args.plot, title=str(args.data))
    if args.json:
        print(json.dumps(stats, indent=2, ensure_ascii=False))
    else:
        _print(stats)
        if args.plot:
            print(f"plot: {args.plot}")
    return 0
