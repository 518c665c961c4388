"""Transformer attention kernels and KV-cache decoding on CPU: what ``use_flash_attn`` and the cache buy.

Usage:
    python benchmarks/bench_transformer_decode.py [--preset transformer-small] [--vocab-size 5000]
                                                  [--threads N] [--new-tokens 64] [--prompt 32]

For ``use_flash_attn`` false (SDPA's math kernel) and true (the fused kernels), it reports forward+backward
training tokens/s (batch 16 x context 128, best of 2 runs of 3 steps) and greedy decoding ms/token for one
sequence: with the KV cache (``step``) and without it (a full forward over the whole prefix per token).
Prints a Markdown table for BENCHMARKS.md, with the machine and the load average (other jobs skew CPU figures).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from lmforge.config import RunConfig, get_preset
from lmforge.evaluation.metrics import machine_info
from lmforge.models import build_model


def _train_tps(model: torch.nn.Module, vocab: int) -> float:
    x = torch.randint(0, vocab, (16, 128), generator=torch.Generator().manual_seed(0))
    model.train()
    model(x, x)[1].backward()
    best = float("inf")
    for _ in range(2):
        t = time.perf_counter()
        for _ in range(3):
            model(x, x)[1].backward()
            model.zero_grad(set_to_none=True)
        best = min(best, time.perf_counter() - t)
    return 16 * 128 * 3 / best


@torch.no_grad()
def _decode_ms(model: torch.nn.Module, vocab: int, prompt: int, new: int, cached: bool) -> float:
    model.eval()
    ids = torch.randint(0, vocab, (1, prompt), generator=torch.Generator().manual_seed(1))
    best = float("inf")
    for _ in range(2):
        seq = ids
        if cached:
            state = model.init_state(1)
            logits, state = model.step(seq, state)
        t = time.perf_counter()
        for _ in range(new):
            if cached:
                nxt = logits[:, -1:].argmax(-1)
                logits, state = model.step(nxt, state)
            else:
                nxt = model(seq)[0][:, -1:].argmax(-1)
            seq = torch.cat([seq, nxt], 1)
        best = min(best, (time.perf_counter() - t) / new * 1000)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="transformer-small")
    parser.add_argument("--vocab-size", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info("cpu")
    print(f"machine: {info['cpu']}, {info['usable_cores']} cores, torch {info['torch']}, "
          f"{info['torch_threads']} threads, load average {os.getloadavg()[0]:.1f}")
    print(f"preset {args.preset}, vocab {args.vocab_size}, prompt {args.prompt}, {args.new_tokens} new tokens\n")
    print("| use_flash_attn | params | train fwd+bwd tokens/s | decode ms/token (KV cache) | decode ms/token (no cache) |")
    print("|---|---|---|---|---|")
    base = RunConfig.parse(get_preset(args.preset)).model
    for flash in (False, True):
        cfg = base.model_copy(update={"vocab_size": args.vocab_size,
                                      "attention": base.attention.model_copy(update={"use_flash_attn": flash})})
        torch.manual_seed(0)
        model = build_model(cfg)
        tps = _train_tps(model, args.vocab_size)
        cached = _decode_ms(model, args.vocab_size, args.prompt, args.new_tokens, cached=True)
        full = _decode_ms(model, args.vocab_size, args.prompt, args.new_tokens, cached=False)
        print(f"| {flash} | {model.num_parameters() / 1e6:.2f}M | {tps:,.0f} | {cached:.2f} | {full:.2f} |")


if __name__ == "__main__":
    main()
