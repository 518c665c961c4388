"""Preparing large corpora: peak memory, throughput against the tokenizer library, time to the first training step,
and the cost of the final evaluation.

For each size, a corpus is synthesised from the bundled Tiny Shakespeare (its lines shuffled with a fixed seed
and grouped into documents of 5-60 lines separated by blank lines, one text file) under ``--tmp``; nothing is
downloaded and the files are deleted at the end (``--keep`` keeps them). Then, each in a fresh process:

1. ``prepare`` (byte-level BPE) under ``/usr/bin/time -v``: peak resident memory, wall time, and the time of
   each phase (tokenizer sample + training, tokenizing + writing shards);
2. the peer, right after: the ``tokenizers`` library's own ``encode_batch_fast`` (read in 1 MiB blocks, cut at
   line breaks into pieces of 32K characters, batches of 64, the same tokenizer) over the first
   ``BENCH_PEER_BYTES`` (256 MiB) of the same corpus; then an interleaved A/B on the first ``--ab-mb`` MiB
   (library, prepare with the same tokenizer, twice), which gives the quoted ratio (both sides see the same load);
3. ``lmforge train --data PREPARED --max-steps 1``: seconds from launching the process to the start of training
   (data opened, model built) and to the end of the first step;
4. ``lmforge train --data PREPARED --time-budget B``: training time and the final evaluation's time.

Usage:
    python benchmarks/bench_prepare.py --sizes 1,5 [--tmp /tmp/lmforge-bench] [--vocab-size 8192] [--keep]

Prints one JSON line per measurement and a Markdown table at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

GB = 1 << 30


def synthesise(path: Path, size: int, seed: int = 0) -> None:
    """Writes about ``size`` bytes of shuffled Tiny Shakespeare lines, grouped into documents."""
    import numpy as np

    from lmforge.data.corpus import default_corpus_path

    lines = np.array([ln for ln in default_corpus_path().read_text(encoding="utf-8").split("\n") if ln.strip()], dtype=object)
    rng = np.random.default_rng(seed)
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < size:
            pick = lines[rng.integers(0, len(lines), 200_000)]
            cuts = np.cumsum(rng.integers(5, 61, 10_000))
            cuts = cuts[cuts < len(pick)]
            docs = ["\n".join(doc) + "\n" for doc in np.split(pick, cuts)]
            block = "\n".join(docs) + "\n"
            f.write(block)
            written += len(block.encode("utf-8"))


def _child_prepare(args: argparse.Namespace) -> None:
    from lmforge.data import prepare
    from lmforge.tokenizers import TokenizerSpec

    marks: dict[str, list[float]] = {}

    def progress(phase: str, done: int, total: int) -> None:
        marks.setdefault(phase, [time.perf_counter(), 0.0])[1] = time.perf_counter()

    spec = TokenizerSpec(path=args.tokenizer_file) if args.tokenizer_file else TokenizerSpec("bpe", vocab_size=args.vocab_size)
    t0 = time.perf_counter()
    data = prepare(args.corpus, args.out, tokenizer=spec, progress=progress)
    total = time.perf_counter() - t0
    tok_start = marks["sample"][1] if "sample" in marks else t0
    tokenize = time.perf_counter() - tok_start
    nbytes = Path(args.corpus).stat().st_size
    print(json.dumps({"what": "prepare", "seconds": total, "tokenize_seconds": tokenize,
                      "sample_seconds": tok_start - t0, "tokenize_mb_s": nbytes / tokenize / 1e6,
                      "tokens": data.meta["train"]["tokens"] + data.meta["val"]["tokens"]}))


#: The peer encodes at most this many bytes from the start of the same corpus (its lines are shuffled, so any
#: stretch is alike); the whole corpus would double the benchmark's time on a loaded 2-core machine.
PEER_BYTES = int(os.environ.get("BENCH_PEER_BYTES", 256 << 20))


def _child_library(args: argparse.Namespace) -> None:
    from lmforge.tokenizers import load_tokenizer

    hf = load_tokenizer(args.tokenizer_file or Path(args.out) / "tokenizer.json").hf_tokenizer
    encode = getattr(hf, "encode_batch_fast", hf.encode_batch)
    t0 = time.perf_counter()
    tokens, carry, batch = 0, "", []
    read = 0
    with open(args.corpus, encoding="utf-8") as f:
        while True:
            block = f.read(1 << 20) if read < PEER_BYTES else ""
            read += len(block)
            text = carry + block
            if block:
                cut = text.rfind("\n") + 1
                text, carry = text[:cut], text[cut:]
            batch += [text[i:i + (1 << 15)] for i in range(0, len(text), 1 << 15)]
            if len(batch) >= 64 or not block:
                tokens += sum(len(e.ids) for e in encode(batch, add_special_tokens=False))
                batch = []
            if not block:
                break
    seconds = time.perf_counter() - t0
    with open(args.corpus, encoding="utf-8") as f:
        nbytes = len(f.read(read).encode("utf-8"))
    print(json.dumps({"what": "library", "seconds": seconds, "mb_s": nbytes / seconds / 1e6, "tokens": tokens,
                      "bytes": nbytes}))


def _child_first_step(args: argparse.Namespace) -> None:
    launched = float(args.launched)
    from lmforge.config import RunConfig, get_preset
    from lmforge.workflows.lm_run import train_lm

    first: list[float] = []
    start: list[float] = []

    def progress(ev: dict) -> None:
        if ev["event"] == "start":
            start.append(time.time())
        if ev["event"] == "step" and not first:
            first.append(time.time())

    cfg = get_preset("transformer-tiny")
    cfg.update({"data": {"path": args.out}, "out_dir": args.run,
                "train": {**cfg.get("train", {}), "max_steps": args.steps, "time_budget": args.budget,
                          "sample_tokens": 0, "device": "cpu"}})
    summary = train_lm(RunConfig.parse(cfg), progress=progress, sample_prompt=None)
    print(json.dumps({"what": "train", "start_s": start[0] - launched, "first_step_s": first[0] - launched, "train_time": summary["train_time"],
                      "final_eval_s": summary.get("final_eval_time"), "val_loss": summary.get("val_loss"),
                      "eval_tokens": summary.get("val_tokens"), "steps": summary["steps"]}))


def _run(cmd: list[str], timed: bool = False) -> dict:
    if timed:
        cmd = ["/usr/bin/time", "-v", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    out = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
    if timed:
        out["peak_rss_mb"] = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1)) / 1024
    print(json.dumps(out), flush=True)
    return out


def _ab(me: list[str], corpus: Path, prepared: Path, mb: int) -> list[dict]:
    """Prepare (tokenizing only: the prepared folder's tokenizer) and the library on the same slice of the corpus,
    alternating twice, so both see the same load."""
    part = corpus.with_name("slice.txt")
    with open(corpus, "rb") as src, open(part, "wb") as dst:
        dst.write(src.read(mb << 20))
    tok = str(prepared / "tokenizer.json")
    out = []
    for r in range(2):
        lib = _run([*me, "--child", "library", "--corpus", str(part), "--out", str(prepared), "--tokenizer-file", tok])
        shutil.rmtree(part.with_name(f"ab{r}"), ignore_errors=True)
        prep = _run([*me, "--child", "prepare", "--corpus", str(part), "--out", str(part.with_name(f"ab{r}")),
                     "--tokenizer-file", tok])
        out.append({"library_mb_s": lib["mb_s"], "prepare_mb_s": prep["tokenize_mb_s"],
                    "ratio": prep["tokenize_mb_s"] / lib["mb_s"]})
        print(json.dumps({"what": "ab", **out[-1]}), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1,5", help="corpus sizes in GB (comma-separated)")
    p.add_argument("--tmp", default="/tmp/lmforge-bench")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--budget", type=float, default=60.0, help="training seconds of the final-evaluation run")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--child", choices=["prepare", "library", "train"])
    p.add_argument("--corpus"), p.add_argument("--out"), p.add_argument("--run"), p.add_argument("--launched")
    p.add_argument("--steps", type=int), p.add_argument("--budget-run", dest="budget_run", type=float)
    p.add_argument("--tokenizer-file")
    p.add_argument("--ab-mb", type=int, default=128, help="size of the slice for the interleaved A/B (MiB)")
    args = p.parse_args()
    if args.child:
        args.budget = args.budget_run
        {"prepare": _child_prepare, "library": _child_library, "train": _child_first_step}[args.child](args)
        return
    me = [sys.executable, os.path.abspath(__file__)]
    root = Path(args.tmp)
    rows = []
    print(json.dumps({"uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}), flush=True)
    try:
        for size in [float(s) for s in args.sizes.split(",")]:
            folder = root / f"{size:g}gb"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            corpus, out = folder / "corpus.txt", folder / "prepared"
            t0 = time.perf_counter()
            synthesise(corpus, int(size * GB))
            print(json.dumps({"what": "synthesised", "gb": size, "seconds": time.perf_counter() - t0}), flush=True)
            common = ["--corpus", str(corpus), "--out", str(out), "--vocab-size", str(args.vocab_size)]
            prep = _run([*me, "--child", "prepare", *common], timed=True)
            lib = [_run([*me, "--child", "library", *common])]
            rows.append({"gb": size, "prepare": prep, "library": lib, "ab": _ab(me, corpus, out, args.ab_mb)})
            step = _run([*me, "--child", "train", *common, "--run", str(folder / "run1"), "--steps", "1",
                         "--launched", str(time.time())])
            rows[-1]["first_step"] = step
            if size == float(args.sizes.split(",")[0]):
                rows[-1]["budget_run"] = _run([*me, "--child", "train", *common, "--run", str(folder / "run2"),
                                               "--budget-run", str(args.budget), "--launched", str(time.time())])
            if not args.keep:
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({"uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}), flush=True)
    print("\n| corpus | peak RSS | prepare (all) | tokenize MB/s | library MB/s | ratio | training starts / first step done | final eval / train |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        best = max(x["mb_s"] for x in r["library"])
        ratio = min(x["ratio"] for x in r["ab"])  # the interleaved A/B (the sequential pair saw different loads)
        br = r.get("budget_run") or {}
        ev = f"{br['final_eval_s']:.1f} s / {br['train_time']:.0f} s" if br.get("final_eval_s") is not None else "-"
        print(f"| {r['gb']:g} GB | {r['prepare']['peak_rss_mb']:,.0f} MB | {r['prepare']['seconds']:,.0f} s | "
              f"{r['prepare']['tokenize_mb_s']:.1f} | {best:.1f} | {ratio:.2f}x | {r['first_step']['start_s']:.1f} s / {r['first_step']['first_step_s']:.1f} s | {ev} |")


if __name__ == "__main__":
    main()
