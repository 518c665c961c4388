"""Tokenizer training time and encoding/decoding throughput on Tiny Shakespeare (char, word, byte-level BPE).

Usage:
    python benchmarks/bench_tokenizers.py [--repeats 3] [--vocab-size 5000] [--corpus PATH]

Prints a Markdown table; the figures for BENCHMARKS.md come from this script. Each timing is the best of
``--repeats`` runs (wall clock, ``time.perf_counter``).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

from lmforge.data import prepare_lm_data, read_documents, split_documents
from lmforge.tokenizers import train_tokenizer


def _best(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vocab-size", type=int, default=5000)
    parser.add_argument("--corpus", default=None, help="default: the bundled Tiny Shakespeare")
    args = parser.parse_args()

    docs = read_documents(args.corpus)
    text = "".join(docs)
    n_bytes = len(text.encode("utf-8"))
    train_docs, val_docs = split_documents(docs)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"corpus: {len(text):,} characters, {n_bytes / 1e6:.2f} MB; CPU: {_cpu()} ({os.cpu_count()} cores), "
          f"load average {load:.1f} at start\n")
    print("| kind | vocab | train (s) | encode (s) | tokens | chars/token | encode tokens/s | encode MB/s | decode MB/s | cache build (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for kind in ("char", "word", "bpe"):
        t_train, tok = _best(lambda: train_tokenizer(kind, docs, vocab_size=args.vocab_size), args.repeats)
        t_enc, ids = _best(lambda: tok.encode(text), args.repeats)
        t_dec, _ = _best(lambda: tok.decode(ids), args.repeats)
        with tempfile.TemporaryDirectory() as tmp:
            t_cache, _ = _best(lambda: prepare_lm_data(train_docs, val_docs, tok, os.path.join(tmp, str(time.perf_counter()))), 1)
        print(f"| {kind} | {tok.vocab_size} | {t_train:.3f} | {t_enc:.3f} | {len(ids):,} | {len(text) / len(ids):.2f} "
              f"| {len(ids) / t_enc / 1e6:.2f} M | {n_bytes / t_enc / 1e6:.2f} | {n_bytes / t_dec / 1e6:.2f} | {t_cache:.3f} |")

    # The library's plain single-call encode, for comparison with lmforge's cut-and-batch encode.
    bpe = train_tokenizer("bpe", docs, vocab_size=args.vocab_size)
    t_raw, raw = _best(lambda: bpe.hf_tokenizer.encode(text, add_special_tokens=False).ids, args.repeats)
    assert raw == bpe.encode(text)
    print(f"\nbpe, tokenizers' single encode() call on the whole text: {t_raw:.3f} s "
          f"({n_bytes / t_raw / 1e6:.2f} MB/s); same ids as lmforge's encode")


if __name__ == "__main__":
    main()
