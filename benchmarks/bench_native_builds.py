"""Per-step time of lmforge's C decoding step built for three x86-64 levels, against the PyTorch step.

The issue-16 model (6 layers, d_model 384, FFN 1024, vocabulary 5,000), batch 1, one thread, a 32-token prompt
in the cache, best of 3 x 50 steps. ``-march=native`` is what lmforge builds (AVX-512 and VNNI on the benchmark
machine); ``x86-64-v3`` is an AVX2 laptop; ``x86-64-v2`` has neither (the portable loops).

    python benchmarks/bench_native_builds.py
"""

from __future__ import annotations

import copy
import time

import torch

from bench_decode import llama_style
from lmforge.models import build_model
from lmforge.models.quantized import quantize_model
from lmforge.models.transformer import native
from lmforge.models.transformer.decode import FastLlamaDecoder


def per_step(fast: FastLlamaDecoder, one) -> float:
    state = fast.init_state(1)
    fast.step(torch.randint(0, 5000, (1, 32), generator=torch.Generator().manual_seed(0)), state)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(50):
            one(state)
        best = min(best, (time.perf_counter() - start) / 50)
    return best


@torch.no_grad()
def main() -> None:
    torch.set_num_threads(1)
    model = build_model(llama_style(5000)).eval()
    variants = {"fp32": model, "int8": quantize_model(copy.deepcopy(model), 8)}
    builds = {arch: native.build(f"-march={arch}") for arch in ("native", "x86-64-v3", "x86-64-v2")}
    print("| weights | " + " | ".join(f"C step, -march={a}" for a in builds) + " | PyTorch step |")
    print("|---|" + "---|" * (len(builds) + 1))
    for name, m in variants.items():
        row = []
        for lib in builds.values():
            fast = FastLlamaDecoder(m)
            fast._native = step = native.NativeStep(fast, lib=lib)
            tok, pos = torch.tensor([5]), torch.tensor([32])
            row.append(per_step(fast, lambda st: step(tok, pos, 32, None, st.k, st.v)))
        native.ENABLED = False
        fast = FastLlamaDecoder(m)

        def pytorch_step(state, fast=fast) -> None:  # the same position every time, as the C step calls above
            fast.step(torch.tensor([[5]]), state)
            state.length = 32

        row.append(per_step(fast, pytorch_step))
        native.ENABLED = True
        print(f"| {name} | " + " | ".join(f"{t * 1e3:.2f} ms" for t in row) + " |", flush=True)


if __name__ == "__main__":
    main()
