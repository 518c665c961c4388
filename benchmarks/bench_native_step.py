"""The C step against the PyTorch step on the same weights, for the shapes a serving engine runs: one-token steps
of 1, 8 and 32 rows, and prompts of 1 x 48 and 4 x 48 tokens.

One thread by default, best of 3 (each: 40 one-token steps after a 16-token prompt, or 20 prompts), ms per call.
``--run`` takes a run folder (the default run's model is what BENCHMARKS.md quotes); without it, the issue-16
model (6 layers, d_model 384, float32, untrained). ``--bits 8`` quantizes to int8 first (prompts then take the
dequantized PyTorch product in both columns).

    python benchmarks/bench_native_step.py --run runs/latest
    python benchmarks/bench_native_step.py --bits 8
"""

from __future__ import annotations

import argparse
import time

import torch

from bench_decode import llama_style
from lmforge.models import build_model
from lmforge.models.quantized import quantize_model
from lmforge.models.transformer import native
from lmforge.models.transformer.decode import FastLlamaDecoder

SHAPES = [(1, 1), (8, 1), (32, 1), (1, 48), (4, 48)]


def per_call(fast: FastLlamaDecoder, rows: int, tokens: int, vocab: int) -> float:
    """Seconds per call (best of 3) of ``tokens`` new tokens for each of ``rows`` rows."""
    g = torch.Generator().manual_seed(0)
    best = float("inf")
    for _ in range(3):
        if tokens == 1:
            state = fast.init_state(rows)
            fast.step(torch.randint(0, vocab, (rows, 16), generator=g), state)
            ids = torch.randint(0, vocab, (rows, 1), generator=g)
            start, calls = time.perf_counter(), min(40, fast.max_context - 17)
            for _ in range(calls):
                fast.step(ids, state)
        else:
            ids = torch.randint(0, vocab, (rows, tokens), generator=g)
            start, calls = time.perf_counter(), 20
            for _ in range(calls):
                fast.step(ids, fast.init_state(rows))
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", help="a run folder (default: the issue-16 model, untrained)")
    ap.add_argument("--bits", type=int, choices=[32, 8], default=32)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.run:
        from lmforge.api import load

        model = load(args.run, device="cpu").model
    else:
        torch.manual_seed(0)
        model = build_model(llama_style(5000))
    model = model.eval() if args.bits == 32 else quantize_model(model, 8).eval()
    vocab = int(model.config.vocab_size)
    with torch.inference_mode():
        c = FastLlamaDecoder(model)
        assert c.native_step() is not None, native.unavailable_reason()
        native.ENABLED = False
        py = FastLlamaDecoder(model)
        assert py.native_step() is None  # decided now, on first use: this one keeps the PyTorch step
        native.ENABLED = True
        print(f"threads {args.threads}, {'int8' if args.bits == 8 else 'fp32'}; ms per call")
        print("| call | C step | PyTorch step | PyTorch / C |\n|---|---|---|---|")
        for rows, tokens in SHAPES:
            a, b = per_call(c, rows, tokens, vocab), per_call(py, rows, tokens, vocab)
            what = f"decode, batch {rows}" if tokens == 1 else f"prompt, {rows} x {tokens} tokens"
            print(f"| {what} | {a * 1e3:.3f} | {b * 1e3:.3f} | {b / a:.2f}x |")


if __name__ == "__main__":
    main()
