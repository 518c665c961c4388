"""A ``torch.compile``'d one-token decoding step for :class:`~lmforge.models.transformer.decode.FastLlamaDecoder`.

On a CPU, decoding a small model at batch 1 is bound by reading its weights: every token reads each matrix
once. BLAS matrix-vector products (and ``torch.mm`` of one row) reach about half of this machine's memory
bandwidth, and the eager step adds a hundred or so small operations. Here the whole step (embedding, every
layer, head) is written as elementwise products and sums that TorchInductor fuses into one C++ kernel with an
OpenMP loop per matrix, streaming each weight row once: on the 2-core benchmark machine the step runs at
about the bandwidth of a plain sum over the same bytes (see BENCHMARKS.md).

* At batch 1 each matrix product ``x @ W.T`` is ``(x * W).sum(-1)``, a reduction Inductor vectorises along
  ``W``'s contiguous rows. Larger batches keep ``torch.mm`` (one pass over ``W`` for all rows).
* The key/value cache is the decoder's own; the step writes the new position in place and attends over the
  first ``S`` slots, with ``S`` a symbolic size, so one compiled graph serves every length.
* Rotary embeddings (arXiv:2104.09864) rotate interleaved pairs, as in the eager path, with a real
  (cos, sin) table instead of complex numbers (which Inductor does not generate code for).

The result matches the eager step to float rounding (the sums run in another order); tests compare the
logits and the greedy tokens. Only CPU tensors use it for now: on CUDA the eager path runs.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from lmforge.models.quantized import decode_matvec

__all__ = ["CompiledStep", "CompiledLlamaDecoder", "compile_supported", "add_bias"]


def add_bias(x: Tensor, b: Optional[Tensor]) -> Tensor:
    """``x += b`` in place when there is a bias (the fast paths' projections may have none)."""
    return x if b is None else x.add_(b)


def _rows(w: Any) -> Any:
    """A float (in, out) matrix as contiguous (out, in) rows, the layout the fused reduction streams fastest;
    int8/int4 tuples are by rows already. Their FBGEMM pack is dropped: behind a custom operator (a registry key
    as its argument) FBGEMM made the compiled int8 step no faster than the fused reduction over the integer
    weights (1.33-1.56 ms against 1.24-1.42 ms a token at 1 thread, BENCHMARKS.md, issue 16)."""
    if hasattr(w, "rows"):  # the C step's panels (native.Panels)
        return w.rows()
    return w.t().contiguous() if isinstance(w, Tensor) else (w[0], None, *w[2:])


def _share_rows(fast: Any, step: "CompiledStep") -> None:
    """Points ``fast``'s float matrices at (in, out) views of ``step``'s rows, so one copy of each matrix is kept
    (the eager path then runs prompts on the views, where the layout matters little)."""
    fast.layers = [tuple(s.t() if i % 2 == 0 and isinstance(s, Tensor) else f for i, (f, s) in enumerate(zip(fl, sl)))
                   for fl, sl in zip(fast.layers, step.layers)]
    if isinstance(step.head, Tensor):
        fast.head_t = step.head.t()


def compile_supported(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether :class:`CompiledStep` runs for weights on ``device`` in ``dtype``."""
    return device.type == "cpu" and dtype in (torch.float32, torch.float64)


def _step(tok: Tensor, pos: Tensor, slot: Tensor, mask: Tensor, kcs: list[Tensor], vcs: list[Tensor],
          layers: list[tuple], emb: Tensor, head: Tensor, rope: Tensor, dims: tuple[int, int, int, int, float]
          ) -> Tensor:
    """One token per row. tok, pos (B,): token ids and rotary positions; slot (1,): the cache slot to write;
    mask (B, S): which of the first S cache slots each row attends to (slot included). Returns (B, V) logits."""
    H, Hkv, hd, ffn, deps = dims
    B, S = mask.shape
    G = H // Hkv
    nq, nk = H * hd, Hkv * hd
    cs = rope.index_select(0, pos)  # (B, hd/2, 2)
    cos, sin = cs[:, None, :, 0], cs[:, None, :, 1]
    keep = mask[:, None, None, :]  # (B, 1, 1, S)
    x = emb.index_select(0, tok)  # (B, D)

    def inv_norm(t: Tensor) -> Tensor:  # the folded RMSNorm (arXiv:1910.07467) factor, as in FastLlamaDecoder
        return torch.rsqrt((t * t).sum(-1, keepdim=True) + deps)

    for (wqkv, bqkv, wo, bo, wgu, bgu, wd, bd), kc, vc in zip(layers, kcs, vcs):
        qkv = add_bias(decode_matvec(x, wqkv) * inv_norm(x), bqkv)  # (B, nq + 2 nk)
        pairs = qkv[:, : nq + nk].reshape(B, H + Hkv, hd // 2, 2)
        a, b = pairs[..., 0], pairs[..., 1]
        qk = torch.stack([a * cos - b * sin, a * sin + b * cos], -1).reshape(B, H + Hkv, hd)
        kc.index_copy_(2, slot, qk[:, H:].unsqueeze(2))
        vc.index_copy_(2, slot, qkv[:, nq + nk:].reshape(B, Hkv, 1, hd))
        q = qk[:, :H].reshape(B, Hkv, G, 1, hd)
        k, v = kc[:, :, None, :S], vc[:, :, None, :S]  # (B, Hkv, 1, S, hd)
        scores = (q * k).sum(-1) * (1.0 / math.sqrt(hd))  # (B, Hkv, G, S)
        p = torch.softmax(scores.masked_fill(~keep, float("-inf")), -1)
        att = (p.unsqueeze(-1) * v).sum(-2).reshape(B, nq)  # (B, H * hd)
        x = x + add_bias(decode_matvec(att, wo), bo)
        gu = add_bias(decode_matvec(x, wgu) * inv_norm(x), bgu)
        x = x + add_bias(decode_matvec(F.silu(gu[:, :ffn]) * gu[:, ffn:], wd), bd)
    return decode_matvec(x, head) * inv_norm(x)


class CompiledStep:
    """The compiled decoding step over a :class:`FastLlamaDecoder`'s weights and cache.

    The first call compiles (seconds; Inductor caches the result on disk for later processes); one graph then
    serves every cache length of a batch size.
    """

    def __init__(self, fast: Any) -> None:
        # FastLlamaDecoder keeps contiguous (in, out) float matrices (fastest for its torch.mm of one row); the
        # reduction below wants (out, in) rows: a transposed copy, which then replaces the eager path's copy
        self.layers = [(_rows(wqkv), bqkv, _rows(wo), bo, _rows(wgu), bgu, _rows(wd), bd)
                       for wqkv, bqkv, wo, bo, wgu, bgu, wd, bd in fast.layers]
        self.emb, self.head = fast.emb, _rows(fast.head_t)
        self.rope = torch.view_as_real(fast.rope).contiguous()  # (S, hd/2, 2)
        self.dims = (fast.H, fast.Hkv, fast.hd, fast.ffn, float(fast.deps))
        self._fn = torch.compile(_step, fullgraph=True)

    def __call__(self, tok: Tensor, pos: Tensor, slot: int, mask: Tensor, k: list[Tensor], v: list[Tensor]) -> Tensor:
        """tok, pos (B,); ``slot`` the cache position to write; mask (B, slot + 1). Returns (B, V) logits."""
        torch._dynamo.mark_dynamic(mask, 1)  # the attended length changes every step: keep it symbolic
        slot_t = torch.tensor([slot], dtype=torch.long, device=tok.device)
        return self._fn(tok, pos, slot_t, mask, k, v, self.layers, self.emb, self.head, self.rope, self.dims)


class CompiledLlamaDecoder:
    """:class:`FastLlamaDecoder` with its one-token steps run by :class:`CompiledStep`.

    Prompts (several tokens at once) go through the eager fast path; both share the same state.
    """

    def __init__(self, fast: Any) -> None:
        self.fast = fast
        self.max_context = fast.max_context
        self.compiled = CompiledStep(fast)
        _share_rows(fast, self.compiled)
        self.failed: Optional[str] = None  # why compiling failed, once it has
        self.ready = False  # a compiled step has run: later calls get it without compiling again

    def init_state(self, batch_size: int) -> Any:
        # one spare slot: the attended length then never equals the cache's, so the graph never specialises on it
        return self.fast.init_state(batch_size, spare=1)

    def step(self, idx: Tensor, state: Any, attention_mask: Optional[Tensor] = None) -> tuple[Tensor, Any]:
        """As :meth:`FastLlamaDecoder.step`: the logits of the last position (B, 1, V) and the state."""
        B, T = idx.shape
        if T != 1 or not (attention_mask is None or bool(attention_mask.all())):
            return self.fast.step(idx, state, attention_mask)
        s = state.length
        if s + 1 > self.max_context:
            raise ValueError(f"cache full: {s} + 1 tokens exceed the context of {self.max_context}")
        if state.padded:  # each row's own position; the padding slots of its prompt stay masked
            state.valid[:, s] = True
        else:  # every row has seen s tokens
            state.valid[:, : s + 1] = True
            state.seen.fill_(s)
        if self.failed is not None:
            return self.fast.step(idx, state, attention_mask)
        try:
            logits = self.compiled(idx.view(B), state.seen, s, state.valid[:, : s + 1], state.k, state.v)
        except Exception as err:  # no C++ compiler, an unsupported torch build...: decode eagerly instead
            self.failed = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
            warnings.warn(f"compiled decoding is unavailable ({self.failed}); decoding without it", RuntimeWarning,
                          stacklevel=2)
            return self.fast.step(idx, state, attention_mask)
        self.ready = True
        state.seen += 1
        state.length = s + 1
        return logits.view(B, 1, -1), state
