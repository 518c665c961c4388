"""Decoding speed: lmforge's ``generate()`` vs Hugging Face ``transformers``' ``generate()`` on the same weights,
and the LSTM's per-token cost as the output grows.

Usage:
    python benchmarks/bench_decode.py [--batches 1 8 64] [--new-tokens 128] [--prompt 32] [--threads N]
                                      [--repeats 3] [--vocab-size 5000] [--lstm-tokens 1024]
    python benchmarks/bench_decode.py --llamacpp [--llamacpp-threads 1 2] [--bits 32 8 4] ...

With ``--llamacpp`` the peer is llama.cpp (``xllamacpp``) instead of transformers: the same weights exported
with ``lmforge export --format gguf`` as F32, Q8_0 and Q4_0 against lmforge in fp32, int8 and int4
(``lmforge.models.quantized``); see ``llamacpp_peer.py`` for how each side is timed. Run one thread count per
process (``--llamacpp-threads 1``, then ``2``): Inductor writes the compiled step's OpenMP loops for the thread
count it was compiled under, and a process keeps the step it compiled.

The Transformer is the 6-layer, d_model 384 Llama-style config (RMSNorm, RoPE, SwiGLU, 6 heads of 64, tied
embeddings, context 512). Its weights are exported with ``lmforge.interop.hf.export_hf`` and loaded by
``transformers.LlamaForCausalLM``; the script first checks both give the same greedy tokens. Each figure is
greedy decoding with a KV cache, ``new_tokens`` per row after a ``prompt``-token prompt (rows of a batch have
different prompt lengths, so both libraries pad and mask), reported as generated tokens per second of wall time
(prefill included), best of ``repeats`` runs, the two libraries interleaved so that load from other processes
hits both alike. lmforge runs twice: eager (the default) and with ``compile=True`` (the one-token step compiled
by TorchInductor; its first call, which compiles, is timed apart and reported). Prints Markdown tables for BENCHMARKS.md with the machine and the load average.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path

import torch

from lmforge.config import LSTMConfig, TransformerConfig
from lmforge.evaluation.metrics import machine_info
from lmforge.inference.generation import _Decoder, generate
from lmforge.inference.sampling import SamplingParams
from lmforge.models import build_model


def llama_style(vocab: int) -> TransformerConfig:
    """The benchmark's Transformer: 6 layers, d_model 384, Llama-style."""
    return TransformerConfig(vocab_size=vocab, d_model=384, num_layers=6, block_size=512,
                             attention={"variant": "mha", "num_heads": 6}, ffn={"variant": "swiglu", "hidden_dim": 1024},
                             positional={"encoding": "rope"}, norm={"type": "rmsnorm", "placement": "pre"})


def _prompts(batch: int, length: int, vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(batch)
    # lengths from length/2 to length, so batches need left padding
    return [torch.randint(8, vocab, (max(1, length - (i * length // 2) // max(1, batch - 1)),), generator=g).tolist()
            for i in range(batch)]


def _lmforge_tps(model, prompts, new: int, fast: bool = True, compile: bool = False) -> tuple[float, list[list[int]]]:
    t = time.perf_counter()
    out = generate(model, None, prompts, temperature=0, max_new_tokens=new, ignore_eos=True, fast=fast,
                   compile=compile)
    dt = time.perf_counter() - t
    return len(prompts) * new / dt, [c.token_ids for c in out]


@torch.inference_mode()
def _hf_tps(hf, prompts, new: int) -> tuple[float, list[list[int]]]:
    T = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), T, dtype=torch.long)
    mask = torch.zeros(len(prompts), T, dtype=torch.long)
    for i, p in enumerate(prompts):  # left padding
        ids[i, T - len(p):] = torch.tensor(p)
        mask[i, T - len(p):] = 1
    t = time.perf_counter()
    out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                      use_cache=True, pad_token_id=0, eos_token_id=None)
    dt = time.perf_counter() - t
    return len(prompts) * new / dt, out[:, T:].tolist()


def bench_transformer(args) -> list[dict]:
    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    from lmforge.interop.hf import export_hf

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    model = build_model(llama_style(args.vocab_size)).eval()
    with torch.no_grad():  # wider weights than the init, so greedy outputs vary and ties are rare
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.05)
    with tempfile.TemporaryDirectory() as tmp:
        export_hf(model, tmp)
        hf = LlamaForCausalLM.from_pretrained(tmp, torch_dtype=torch.float32).eval()
    rows = []
    for batch in args.batches:
        prompts = _prompts(batch, args.prompt, args.vocab_size)
        new = args.new_tokens if batch < 64 else max(16, args.new_tokens // 2)
        # warm-up (the compiled step's first call compiles it) and agreement checks
        _, ours = _lmforge_tps(model, prompts, 8)
        _, theirs = _hf_tps(hf, prompts, 8)
        t = time.perf_counter()
        _, compiled = _lmforge_tps(model, prompts, 8, compile=True)
        compile_s = time.perf_counter() - t
        agree = sum(a == b for a, b in zip(ours, theirs)) / batch
        agree_c = sum(a == b for a, b in zip(compiled, theirs)) / batch
        best_c = best_l = best_s = best_h = 0.0
        for _ in range(args.repeats):
            best_c = max(best_c, _lmforge_tps(model, prompts, new, compile=True)[0])
            best_l = max(best_l, _lmforge_tps(model, prompts, new)[0])
            best_h = max(best_h, _hf_tps(hf, prompts, new)[0])
            best_s = max(best_s, _lmforge_tps(model, prompts, new, fast=False)[0])
        rows.append({"batch": batch, "new": new, "compiled": best_c, "compile_s": compile_s, "lmforge": best_l,
                     "step": best_s, "hf": best_h, "agree": min(agree, agree_c)})
        print(f"batch {batch:>3}: lmforge compiled {best_c:8.1f} tok/s (first call {compile_s:.1f} s), eager "
              f"{best_l:8.1f} (model.step path {best_s:8.1f})  transformers {best_h:8.1f} tok/s  "
              f"x{best_c / best_h:.2f} / x{best_l / best_h:.2f}  (greedy rows identical over 8 tokens: "
              f"{agree_c:.0%} compiled, {agree:.0%} eager)", flush=True)
    return rows


@torch.inference_mode()
def bench_lstm(args, bits: int = 0) -> list[tuple[int, float]]:
    """ms/token of an LSTM (lstm-small sizes) in windows of the output, via the generation loop itself; with
    ``bits`` 8 or 4, its weights quantized (models.quantized)."""
    from lmforge.models.quantized import quantize_model

    torch.manual_seed(0)
    model = build_model(LSTMConfig(vocab_size=args.vocab_size, embedding_dim=128, hidden_dim=256, num_layers=2,
                                   dropout=0.0)).eval()
    if bits:
        quantize_model(model, bits)
    params = SamplingParams(temperature=0, max_new_tokens=args.lstm_tokens, ignore_eos=True)
    dec = _Decoder(model, [list(range(8, 40))], params, [], [0])
    window = max(1, args.lstm_tokens // 8)
    out, t0 = [], time.perf_counter()
    for n, _ in enumerate(dec.steps(), 1):
        if n % window == 0:
            t1 = time.perf_counter()
            out.append((n, (t1 - t0) / window * 1000))
            t0 = t1
    return out


def bench_llamacpp(args) -> None:
    """lmforge against llama.cpp on the same weights (exported to GGUF): batch 1 decode-only tokens/s at each
    thread count, fp32 vs F32, int8 vs Q8_0, int4 vs Q4_0, the two engines interleaved; then batch 8 and 64."""
    import copy

    from llamacpp_peer import LlamaCpp, agreement, bpe_tokenizer, export_ggufs, lmforge_batch_tps, lmforge_decode_tps

    from lmforge.models.quantized import quantize_model

    torch.manual_seed(0)
    model = build_model(llama_style(args.vocab_size)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.05)
    variants = {"fp32": (model, "f32"), "int8": (quantize_model(copy.deepcopy(model), 8), "q8_0"),
                "int4": (quantize_model(copy.deepcopy(model), 4), "q4_0")}
    variants = {k: v for k, v in variants.items() if int(k.removeprefix("fp").removeprefix("int")) in args.bits}
    prompt = _prompts(1, args.prompt, args.vocab_size)[0]
    new = args.new_tokens
    with tempfile.TemporaryDirectory() as tmp:
        files = export_ggufs(model, bpe_tokenizer(args.vocab_size), Path(tmp), [g for _, g in variants.values()])
        print("\n| threads | lmforge weights | lmforge default tok/s (the C step) | lmforge PyTorch step tok/s "
              "(`LMFORGE_NATIVE=0`) | lmforge compiled tok/s (`--compile`) | llama.cpp type | llama.cpp tok/s | "
              "default / llama.cpp | compiled / llama.cpp | greedy tokens equal (of 32) |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for threads in args.llamacpp_threads:
            torch.set_num_threads(threads)
            for name, (m, gtype) in variants.items():
                exact = LlamaCpp(files[gtype], threads, f32_cache=True)  # for the agreement check only
                same = agreement(m, exact, prompt, 32, compile=False)
                exact.close()
                lmforge_decode_tps(m, prompt, 8, compile=True)  # compiles (or loads Inductor's cache) once
                best = {"default": 0.0, "torch": 0.0, "compiled": 0.0, "peer": 0.0}
                for _ in range(args.repeats):  # interleaved, best of each
                    # one engine in the process at a time: llama.cpp's idle threads poll for work, which takes a
                    # core from whatever else runs (lmforge at 2 threads measured 0.6x its speed beside it)
                    peer = LlamaCpp(files[gtype], threads)  # llama.cpp's defaults (float16 K/V) for the speed
                    best["peer"] = max(best["peer"], peer.decode_tps(prompt, new))
                    peer.close()
                    best["compiled"] = max(best["compiled"], lmforge_decode_tps(m, prompt, new, compile=True))
                    best["default"] = max(best["default"], lmforge_decode_tps(m, prompt, new, compile=False))
                    with native_disabled():
                        best["torch"] = max(best["torch"], lmforge_decode_tps(m, prompt, new, compile=False))
                print(f"| {threads} | {name} | {best['default']:.0f} | {best['torch']:.0f} | {best['compiled']:.0f} | "
                      f"{gtype.upper()} | {best['peer']:.0f} | **{best['default'] / best['peer']:.2f}x** | "
                      f"{best['compiled'] / best['peer']:.2f}x | {same} |", flush=True)
        torch.set_num_threads(max(args.llamacpp_threads))
        print(f"\n| batch ({max(args.llamacpp_threads)} threads) | weights | lmforge default tok/s (wall, prompts "
              "included) | llama.cpp tok/s | ratio |")
        print("|---|---|---|---|---|")
        for batch in [b for b in args.batches if b > 1]:
            prompts = _prompts(batch, args.prompt, args.vocab_size)
            n = args.new_tokens if batch < 64 else max(16, args.new_tokens // 2)
            for name in [v for v in ("fp32", "int8") if v in variants]:
                m, gtype = variants[name]
                ours = theirs = 0.0
                for _ in range(args.repeats):
                    peer = LlamaCpp(files[gtype], max(args.llamacpp_threads), slots=batch,
                                    ctx_per_slot=args.prompt + n + 8)
                    theirs = max(theirs, peer.batch_tps(prompts, n))
                    peer.close()
                    ours = max(ours, lmforge_batch_tps(m, prompts, n, compile=False))
                print(f"| {batch} | {name} / {gtype.upper()} | {ours:.0f} | {theirs:.0f} | {ours / theirs:.2f}x |", flush=True)


@contextlib.contextmanager
def native_disabled():
    """lmforge's PyTorch decoding step instead of the C one, for the duration (fresh fast paths on both sides)."""
    from lmforge.models.transformer import decode, native

    decode._CACHE.clear()
    native.ENABLED = False
    try:
        yield
    finally:
        native.ENABLED = True
        decode._CACHE.clear()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--vocab-size", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--lstm-tokens", type=int, default=1024)
    ap.add_argument("--skip-hf", action="store_true", help="only the LSTM figures")
    ap.add_argument("--llamacpp", action="store_true", help="compare with llama.cpp (xllamacpp) instead of transformers")
    ap.add_argument("--llamacpp-threads", type=int, nargs="+", default=[2],
                    help="thread counts for --llamacpp (one per process gives the compiled step its own threads)")
    ap.add_argument("--bits", type=int, nargs="+", default=[32, 8, 4], help="--llamacpp: weights to compare (32 8 4)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info()
    print(f"machine: {info.get('cpu', info)}; torch {torch.__version__}; threads {torch.get_num_threads()}; "
          f"load average {os.getloadavg()[0]:.1f}")
    if args.llamacpp:
        bench_llamacpp(args)
    elif not args.skip_hf:
        import transformers

        rows = bench_transformer(args)
        print(f"\n| batch | new tokens/row | lmforge `compile=True` tok/s (first call) | lmforge eager tok/s | "
              f"lmforge, model.step path | transformers {transformers.__version__} tok/s | ratio compiled | ratio eager |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['batch']} | {r['new']} | {r['compiled']:.1f} ({r['compile_s']:.1f} s) | {r['lmforge']:.1f} | "
                  f"{r['step']:.1f} | {r['hf']:.1f} | {r['compiled'] / r['hf']:.2f}x | {r['lmforge'] / r['hf']:.2f}x |")
    lstm, lstm8 = bench_lstm(args), bench_lstm(args, bits=8)
    print("\n| LSTM output tokens | ms/token in the window before (fp32) | int8 weights |")
    print("|---|---|---|")
    for (n, ms), (_, ms8) in zip(lstm, lstm8):
        print(f"| {n} | {ms:.3f} | {ms8:.3f} |")
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
