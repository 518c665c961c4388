"""llama.cpp as a decoding peer (through ``xllamacpp``, llama.cpp's server in-process), for bench_decode.py.

The lmforge model is exported with ``lmforge.interop.gguf.export_gguf`` (F32, Q8_0, Q4_0) and loaded by
llama.cpp; both then decode the same token-id prompts greedily. Batch-1 figures are decode-only on both sides:
llama.cpp's own ``predicted_per_second`` (generated tokens over their evaluation time, the prompt excluded),
and for lmforge ``(n - 1) / (t(n) - t(1))`` from two ``generate`` calls of ``n`` and 1 new tokens (so the
prompt and the first token cancel out). Batched figures are generated tokens over wall time for the whole
batch (prompts included) on both sides: lmforge's ``generate`` on a left-padded batch, llama.cpp's server with
one slot per row.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from lmforge.inference.generation import generate

__all__ = ["LlamaCpp", "bpe_tokenizer", "export_ggufs", "lmforge_decode_tps", "lmforge_batch_tps"]


def bpe_tokenizer(vocab: int) -> Any:
    """A byte-level BPE of ``vocab`` tokens on the bundled Tiny Shakespeare (GGUF files carry a tokenizer)."""
    from lmforge.tokenizers import train_tokenizer

    text = (Path(__file__).resolve().parents[1] / "src" / "lmforge" / "assets" / "tinyshakespeare.txt").read_text()
    return train_tokenizer("bpe", [text], vocab_size=vocab)


def export_ggufs(model: Any, tokenizer: Any, folder: Path, dtypes: list[str]) -> dict[str, Path]:
    """The model as one GGUF file per llama.cpp type."""
    from lmforge.interop.gguf import export_gguf

    return {d: export_gguf(model, tokenizer, folder / f"model-{d}.gguf", d) for d in dtypes}


class LlamaCpp:
    """One llama.cpp server (in-process) on a GGUF file, with ``threads`` threads and ``slots`` parallel rows."""

    def __init__(self, path: Path, threads: int, slots: int = 1, ctx_per_slot: int = 512,
                 f32_cache: bool = False) -> None:
        import xllamacpp

        p = xllamacpp.CommonParams()
        if f32_cache:  # llama.cpp keeps K/V in float16 by default, and its CPU flash attention rounds to float16
            p.cache_type_k = p.cache_type_v = xllamacpp.ggml_type.GGML_TYPE_F32
            p.flash_attn_type = 0
        p.model.path = str(path)
        p.n_parallel = slots
        p.n_ctx = slots * ctx_per_slot
        p.n_batch = p.n_ubatch = 512
        p.cpuparams.n_threads = threads
        p.cpuparams_batch.n_threads = threads
        p.warmup = True
        self.server = xllamacpp.Server(p)

    def _complete(self, prompts: Any, new: int) -> dict:
        out = self.server.handle_completions({"prompt": prompts, "n_predict": new, "temperature": 0,
                                              "ignore_eos": True, "cache_prompt": False, "logprobs": 1})
        if "choices" not in out:
            raise RuntimeError(f"llama.cpp failed: {out}")
        return out

    def greedy(self, prompt: list[int], new: int) -> list[int]:
        """The greedy continuation's token ids."""
        return [t["id"] for t in self._complete(prompt, new)["choices"][0]["logprobs"]["content"]]

    def decode_tps(self, prompt: list[int], new: int) -> float:
        """Decode-only tokens/s at batch 1 (llama.cpp's own timing of the generated tokens)."""
        return float(self._complete(prompt, new)["timings"]["predicted_per_second"])

    def batch_tps(self, prompts: list[list[int]], new: int) -> float:
        """Generated tokens per second of wall time for a batch (one slot per row)."""
        t = time.perf_counter()
        out = self._complete(prompts, new)
        dt = time.perf_counter() - t
        assert len(out["choices"]) == len(prompts)
        return len(prompts) * new / dt

    def close(self) -> None:
        del self.server


def _timed(model: Any, prompts: list[list[int]], new: int, **kw: Any) -> float:
    t = time.perf_counter()
    generate(model, None, prompts, temperature=0, max_new_tokens=new, ignore_eos=True, **kw)
    return time.perf_counter() - t


def lmforge_decode_tps(model: Any, prompt: list[int], new: int, **kw: Any) -> float:
    """Decode-only tokens/s at batch 1: ``(new - 1) / (t(new) - t(1))``."""
    one = min(_timed(model, [prompt], 1, **kw) for _ in range(2))
    return (new - 1) / max(1e-9, _timed(model, [prompt], new, **kw) - one)


def lmforge_batch_tps(model: Any, prompts: list[list[int]], new: int, **kw: Any) -> float:
    """Generated tokens per second of wall time for a batch (prompt included)."""
    return len(prompts) * new / _timed(model, prompts, new, **kw)


@torch.inference_mode()
def agreement(model: Any, peer: LlamaCpp, prompt: list[int], new: int, **kw: Any) -> int:
    """How many leading greedy tokens lmforge and llama.cpp share."""
    ours = generate(model, None, [prompt], temperature=0, max_new_tokens=new, ignore_eos=True, **kw)[0].token_ids
    theirs = peer.greedy(prompt, new)
    return next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
