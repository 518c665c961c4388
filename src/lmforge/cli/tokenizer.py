"""``lmforge tokenizer train|encode``: train a tokenizer on text files, or show how one splits a text."""

from __future__ import annotations

import argparse
import json
import sys

DESCRIPTION = "Train a tokenizer (char, bpe or word) on text files, or encode a text with a saved tokenizer."

__all__ = ["DESCRIPTION", "configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Adds the ``train`` and ``encode`` sub-commands."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    train = sub.add_parser("train", help="train a tokenizer and write tokenizer.json",
                           description="Train a tokenizer on FILES (text files, folders of .txt/.md files or .jsonl "
                                       "files with a 'text' field; default: the bundled Tiny Shakespeare).")
    train.add_argument("files", nargs="*", metavar="FILES", help="corpus files or folders")
    train.add_argument("--kind", choices=["char", "bpe", "word", "unigram"], default="bpe", help="tokenizer kind (default: bpe)")
    train.add_argument("--vocab-size", type=int, default=5000, help="vocabulary size, special tokens included (default: 5000)")
    train.add_argument("--min-frequency", type=int, default=1, help="drop merges/words seen fewer times (default: 1)")
    train.add_argument("--lowercase", action="store_true", help="word only: lowercase the text")
    train.add_argument("-o", "--output", default="tokenizer.json", help="where to write it (default: tokenizer.json)")

    enc = sub.add_parser("encode", help="encode a text and print its tokens and ids",
                         description="Encode TEXT ('-' reads standard input) with a saved tokenizer.")
    enc.add_argument("tokenizer", metavar="TOKENIZER", help="a tokenizer.json file or a run folder holding one")
    enc.add_argument("text", metavar="TEXT", help="the text to encode, or '-' for standard input")
    enc.add_argument("--ids-only", action="store_true", help="print only the ids, separated by spaces")


def _train(args: argparse.Namespace) -> int:
    from lmforge.data import read_documents
    from lmforge.errors import ConfigError
    from lmforge.tokenizers import train_tokenizer

    if args.vocab_size < 9:
        raise ConfigError(f"--vocab-size must be at least 9 (8 special tokens + 1), got {args.vocab_size}")
    if args.min_frequency < 1:
        raise ConfigError(f"--min-frequency must be at least 1, got {args.min_frequency}")
    docs = [doc for path in (args.files or [None]) for doc in read_documents(path)]
    tok = train_tokenizer(args.kind, docs, vocab_size=args.vocab_size, min_frequency=args.min_frequency,
                          lowercase=args.lowercase)
    tok.save(args.output)
    chars = sum(len(d) for d in docs)
    tokens = sum(len(ids) for ids in tok.encode_batch(docs))
    print(f"wrote {args.output}: {tok.kind} tokenizer, {tok.vocab_size} tokens "
          f"({chars:,} characters -> {tokens:,} tokens, {chars / max(tokens, 1):.2f} chars/token)")
    return 0


def _encode(args: argparse.Namespace) -> int:
    from lmforge.tokenizers import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    text = sys.stdin.read() if args.text == "-" else args.text
    ids = tok.encode(text)
    if args.ids_only:
        print(" ".join(map(str, ids)))
        return 0
    for i in ids:
        piece = json.dumps(tok.decode([i], skip_special=False), ensure_ascii=False)
        entry = json.dumps(tok.id_to_token(i), ensure_ascii=False) if hasattr(tok, "id_to_token") else piece
        # A byte-level BPE token can hold part of a character: then its vocabulary entry is shown too.
        print(f"{i:>7}  {piece}" + (f"  (token {entry})" if entry != piece else ""))
    print(f"{len(ids)} tokens, {len(text)} characters")
    return 0


def run(args: argparse.Namespace) -> int:
    """Runs the chosen action; returns the exit code."""
    return _train(args) if args.action == "train" else _encode(args)
