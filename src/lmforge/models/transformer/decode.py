"""The Transformer's fast incremental decoding path: the same model, far fewer operations per token.

At batch 1 a small model's decoding step costs more in per-operation overhead than in arithmetic. For a
Transformer whose config is Llama-compatible (RMSNorm, pre-norm, RoPE, SwiGLU, mha/gqa/mqa, causal mask; see
:func:`llama_incompatibilities`), :class:`FastLlamaDecoder` decodes with:

* the model's own parameters read once (its Q/K/V and gate/up are already fused matrices), so a layer is four
  matrix products;
* RMSNorm (arXiv:1910.07467) folded into the next matrix: ``rms(x) * g @ W.T == (x @ (W * g * sqrt(D)).T) /
  sqrt(|x|^2 + D * eps)``, one cheap vector norm per row instead of a normalised copy of ``x``;
* rotary embeddings (arXiv:2104.09864) as one complex multiplication: the Q and K projection rows are permuted
  from Llama's half-split layout to interleaved pairs (the same permutation on Q and K leaves every dot
  product, hence attention, unchanged);
* residual adds fused into the output projections (``addmm``), a preallocated cache, no attention mask while no
  row is padded, and the output head on the last position only.

It implements ``init_state``/``step`` like the model, so the generation loop uses it when :func:`fast_decoder`
accepts the model, and the model's own ``step`` otherwise. Tests check its logits against the model's.
One-token steps can also run ``torch.compile``'d (:mod:`lmforge.models.transformer.compiled`).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from lmforge.models.quantized import decode_addmm, decode_mm, decode_weight
from lmforge.models.transformer import native
from lmforge.models.transformer.compiled import CompiledLlamaDecoder, add_bias, compile_supported
from lmforge.models.transformer.positions import rope_inv_freq, rope_settings

__all__ = ["FastLlamaDecoder", "compile_decoding", "fast_decoder", "llama_incompatibilities"]


@dataclass
class _State:
    k: list[Tensor]  # per layer (B, Hkv, S, hd)
    v: list[Tensor]  # per layer (B, Hkv, S, hd)
    valid: Tensor  # (B, S) real tokens (kept up to date once a call is padded)
    seen: Tensor  # (B,) real tokens per row (idem)
    length: int = 0
    padded: bool = False


def _interleave_rows(w: Tensor, heads: int, hd: int) -> Tensor:
    """Reorders each head's output rows from half-split (x1..., x2...) to interleaved pairs (x1, x2, ...)."""
    rest = w.shape[1:]
    return w.reshape(heads, 2, hd // 2, *rest).transpose(1, 2).reshape(heads * hd, *rest)


class FastLlamaDecoder:
    """Decoding-only execution of a Llama-compatible :class:`~lmforge.models.transformer.Transformer`.

    Args:
        model: the Transformer (its weights are copied; :func:`fast_decoder` rebuilds when they change).
    """

    def __init__(self, model: Any) -> None:
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.compiled: Optional[Any] = None  # its CompiledLlamaDecoder, built on first request
        self._native: Any = None  # its NativeStep (one-token steps in C), built on the first step; False: none
        c = model.config
        self.L = c.num_layers
        H, Hkv, hd = c.attention.num_heads, c.attention.kv_heads, c.head_size
        self.H, self.Hkv, self.hd = H, Hkv, hd
        self.nq, self.nk = H * hd, Hkv * hd
        self.D = D = c.d_model
        self.deps = D * c.norm.eps  # eps scaled by D: the norm below is |x|, not the RMS
        self.max_context = model.max_context
        root = math.sqrt(D)

        def f64(t: Optional[Tensor]) -> Optional[Tensor]:
            return None if t is None else t.detach().to(self.device, torch.float64)

        def w(t: Optional[Tensor]) -> Optional[Tensor]:
            return None if t is None else t.to(self.dtype).contiguous()

        def fold(mat: Tensor, gain: Tensor) -> Tensor:  # (out, in) * (in,): RMSNorm gain and sqrt(D) folded in
            return w(f64(mat) * (f64(gain) * root)[None, :])

        def perm(t: Tensor) -> Tensor:  # [q | k | v] rows (any dtype) with q and k rows made interleaved pairs
            q, k, v = t.split([self.nq, self.nk, self.nk], dim=0)
            return torch.cat([_interleave_rows(q, H, hd), _interleave_rows(k, Hkv, hd), v], 0)

        def rows(t: Optional[Tensor]) -> Optional[Tensor]:
            return None if t is None else perm(f64(t))

        def mat(layer: Any, gain: Optional[Tensor] = None, qkv: bool = False) -> Any:
            """(in, out) float matrix, or an int8/int4 layer's (gain, *parts) read as stored (models.quantized)"""
            quant = decode_weight(layer, None if gain is None else f64(gain) * root, perm if qkv else None)
            if quant is not None:
                return quant
            t = rows(layer.weight) if qkv else f64(layer.weight)
            return (w(t) if gain is None else fold(t, gain)).t().contiguous()  # (in, out): torch.mm of one row is fastest so

        self.emb = w(model.tok_emb.weight.detach())
        self.head_t = mat(model.lm_head, model.norm_f.weight)
        self.layers = []
        for block in model.blocks:
            attn, ffn = block.attn, block.ffn
            self.layers.append((
                mat(attn.qkv, block.norm_attn.weight, qkv=True), w(rows(attn.qkv.bias)),
                mat(attn.o_proj), w(_detach(attn.o_proj.bias)),
                mat(ffn.w_in, block.norm_ffn.weight), w(_detach(ffn.w_in.bias)),
                mat(ffn.w_out), w(_detach(ffn.w_out.bias)),
            ))
        self.ffn = c.ffn_hidden
        # rotary table e^{i * pos * theta_j}, frequencies scaled as the model's (arXiv:2306.15595, 2407.21783)
        inv = rope_inv_freq(hd, **rope_settings(c), dtype=torch.float64)  # linear or llama3 scaling
        ang = torch.outer(torch.arange(self.max_context, dtype=torch.float64), inv)  # (S, hd/2)
        ctype = torch.complex128 if self.dtype == torch.float64 else torch.complex64
        self.rope = torch.polar(torch.ones_like(ang), ang).to(ctype).to(self.device)  # (S, hd/2)

    def init_state(self, batch_size: int, spare: int = 0) -> _State:
        """An empty cache for ``batch_size`` rows (``max_context`` positions, plus ``spare`` unused ones)."""
        slots = self.max_context + spare
        shape = (batch_size, self.Hkv, slots, self.hd)
        # uninitialised: attention only reads slots already written (padding slots are written too)
        mk = lambda: torch.empty(shape, device=self.device, dtype=self.dtype)  # noqa: E731
        return _State([mk() for _ in range(self.L)], [mk() for _ in range(self.L)],
                      torch.zeros(batch_size, slots, dtype=torch.bool, device=self.device),
                      torch.zeros(batch_size, dtype=torch.long, device=self.device))

    def _inv_norm(self, x: Tensor) -> Tensor:
        """1 / sqrt(|x|^2 + D * eps) per row (the folded RMSNorm factor)."""
        return torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().add_(self.deps).rsqrt_()

    def step(self, idx: Tensor, state: _State, attention_mask: Optional[Tensor] = None) -> tuple[Tensor, _State]:
        """Feeds ``idx`` (B, T); returns the logits of the last position (B, 1, V) and the state (in place)."""
        B, T = idx.shape
        s = state.length
        S = s + T
        if S > self.max_context:
            raise ValueError(f"cache full: {s} + {T} tokens exceed the context of {self.max_context}")
        all_real = attention_mask is None or bool(attention_mask.all())
        if T == 1 and all_real:
            return self._decode_one(idx, state), state
        step = self.native_step()
        if step is not None and not step.quantized:  # int8 prompts: one dequantized float product (below)
            if not state.padded and all_real:  # every row has seen s tokens
                pos = torch.arange(s, S, device=idx.device).expand(B, T)
                logits = step(idx, pos, s, None, state.k, state.v)
            else:
                logits = step(idx, self._positions(idx, state, attention_mask), s, state.valid, state.k, state.v)
            state.length = S
            return logits.view(B, 1, -1), state
        if not state.padded and all_real:
            rot = self.rope[s:S].view(1, T, 1, -1)  # every row has seen s tokens
        else:
            rot = self.rope[self._positions(idx, state, attention_mask)].view(B, T, 1, -1)
        mask, causal = self._mask(state, s, T, B, idx.device)
        H, Hkv, hd, nq, nk = self.H, self.Hkv, self.hd, self.nq, self.nk
        x = F.embedding(idx, self.emb).view(B * T, self.D)  # (B*T, D)
        for i, (wqkv, bqkv, wo, bo, wgu, bgu, wd, bd) in enumerate(self.layers):
            qkv = add_bias(decode_mm(x, wqkv, False).mul_(self._inv_norm(x)), bqkv).view(B, T, nq + 2 * nk)
            qk = torch.view_as_real(torch.view_as_complex(qkv[..., :nq + nk].reshape(B, T, H + Hkv, hd // 2, 2)) * rot)
            qk = qk.view(B, T, H + Hkv, hd)  # rotary embedding applied
            state.k[i][:, :, s:S] = qk[:, :, H:].transpose(1, 2)
            state.v[i][:, :, s:S] = qkv[..., nq + nk:].view(B, T, Hkv, hd).transpose(1, 2)
            att = F.scaled_dot_product_attention(qk[:, :, :H].transpose(1, 2), state.k[i][:, :, :S], state.v[i][:, :, :S],
                                                 attn_mask=mask, is_causal=causal, enable_gqa=H != Hkv)  # (B, H, T, hd)
            x = add_bias(decode_addmm(x, att.transpose(1, 2).reshape(B * T, nq), wo, False), bo)
            gu = add_bias(decode_mm(x, wgu, False).mul_(self._inv_norm(x)), bgu)
            x = add_bias(decode_addmm(x, F.silu(gu[:, : self.ffn]).mul_(gu[:, self.ffn:]), wd, False), bd)
        state.length = S
        last = x.view(B, T, self.D)[:, -1]  # (B, D): its logits are a step's (int8: row by row)
        return decode_mm(last, self.head_t).mul_(self._inv_norm(last)).view(B, 1, -1), state

    def _decode_one(self, idx: Tensor, state: _State) -> Tensor:
        """One new (real) token per row, everything 2-D. Without padding in the cache: no mask and one rotary
        row for all; with left padding from the prompt: each row's own position and a key mask."""
        B = idx.size(0)
        s = state.length
        S = s + 1
        step = self.native_step()
        if step is not None:
            if state.padded:  # each row's own position; the padding slots of its prompt stay masked
                state.valid[:, s] = True
                logits = step(idx.view(B), state.seen, s, state.valid, state.k, state.v)
                state.seen += 1
            else:  # every row has seen s tokens
                logits = step(idx.view(B), torch.full((B,), s, dtype=torch.long), s, None, state.k, state.v)
            state.length = S
            return logits.view(B, 1, -1)
        H, Hkv, hd, nq, nk = self.H, self.Hkv, self.hd, self.nq, self.nk
        mask = None
        if state.padded:
            rot = self.rope[state.seen].view(B, 1, -1)  # (B, 1, hd/2)
            state.valid[:, s] = True
            state.seen += 1
            mask = state.valid[:, :S].view(B, 1, 1, S)
        else:
            rot = self.rope[s]  # (hd/2,)
        x = F.embedding(idx.view(B), self.emb)  # (B, D)
        for i, (wqkv, bqkv, wo, bo, wgu, bgu, wd, bd) in enumerate(self.layers):
            qkv = add_bias(decode_mm(x, wqkv).mul_(self._inv_norm(x)), bqkv)  # (B, nq + 2 nk)
            qk = torch.view_as_real(torch.view_as_complex(qkv[:, :nq + nk].view(B, H + Hkv, hd // 2, 2)) * rot)
            kc, vc = state.k[i], state.v[i]
            kc[:, :, s] = qk[:, H:].view(B, Hkv, hd)
            vc[:, :, s] = qkv[:, nq + nk:].view(B, Hkv, hd)
            att = F.scaled_dot_product_attention(qk[:, :H].view(B, H, 1, hd), kc[:, :, :S], vc[:, :, :S],
                                                 attn_mask=mask, enable_gqa=H != Hkv)  # (B, H, 1, hd)
            x = add_bias(decode_addmm(x, att.view(B, nq), wo), bo)
            gu = add_bias(decode_mm(x, wgu).mul_(self._inv_norm(x)), bgu)
            x = add_bias(decode_addmm(x, F.silu(gu[:, : self.ffn]).mul_(gu[:, self.ffn:]), wd), bd)
        state.length = S
        return decode_mm(x, self.head_t).mul_(self._inv_norm(x)).view(B, 1, -1)

    def native_step(self) -> Optional[Any]:
        """The one-token step in C (:mod:`lmforge.models.transformer.native`), built on first use, where it runs:
        float32 or int8 weights on a CPU with a working C compiler (else ``None``: the PyTorch step runs)."""
        if self._native is None:
            self._native = False
            mats = [m for layer in self.layers for m in layer[0::2]] + [self.head_t]
            if (native.ENABLED and self.device.type == "cpu" and self.dtype == torch.float32
                    and all(native.supports(m) for m in mats) and native.library() is not None):
                self._native = step = native.NativeStep(self)
                if not step.quantized:  # every step of a float model runs in C: keep one copy, its panels
                    self.layers = [tuple(s if i % 2 == 0 else f for i, (f, s) in enumerate(zip(fl, sl)))
                                   for fl, sl in zip(self.layers, step.layers)]
                    self.head_t = step.head
        return self._native or None

    def _positions(self, idx: Tensor, state: _State, attention_mask: Optional[Tensor]) -> Tensor:
        """Each new token's position (B, T), counting each row's real tokens; marks them in ``valid``."""
        B, T = idx.shape
        s = state.length
        if not state.padded:  # the first padded call: record what the unpadded calls implied
            state.valid[:, :s] = True
            state.seen.fill_(s)
            state.padded = True
        real = torch.ones_like(idx, dtype=torch.bool) if attention_mask is None else attention_mask.to(idx.device).bool()
        pos = (state.seen.view(B, 1) + real.long().cumsum(1) - 1).clamp(min=0)  # (B, T)
        state.valid[:, s:s + T] = real
        state.seen += real.sum(1)
        return pos

    @staticmethod
    def _mask(state: _State, s: int, T: int, B: int, device: torch.device) -> tuple[Optional[Tensor], bool]:
        S = s + T
        if state.padded:
            ar = torch.arange(S, device=device)
            allowed = state.valid[:, None, :S] & (ar.view(1, 1, S) <= ar[s:].view(1, T, 1))  # (B, T, S)
            allowed = allowed | ~state.valid[:, s:S].view(B, T, 1)  # padded queries see all (their output is unused)
            return allowed.view(B, 1, T, S), False
        if T > 1 and s > 0:
            ar = torch.arange(S, device=device)
            return (ar.view(1, S) <= ar[s:].view(T, 1)).view(1, 1, T, S), False
        return None, T > 1


def _detach(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.detach()


def llama_incompatibilities(config: Any) -> list[str]:
    """The settings of a Transformer ``config`` that a Llama model cannot express (and that the fast path
    therefore does not run), as ``key=value (Llama needs X)`` strings; empty when it is Llama-compatible."""
    c, a = config, config.attention
    wanted = [
        ("norm.type", c.norm.type, "rmsnorm"),
        ("norm.placement", c.norm.placement, "pre"),
        ("positional.encoding", c.positional.encoding, "rope"),
        ("ffn.variant", c.ffn.variant, "swiglu"),
        ("attention.mask_type", a.mask_type, "causal"),
        ("parallel_layers", c.parallel_layers, False),
        ("scale_embeddings", c.scale_embeddings, False),
    ]
    problems = [f"{key}={value!r} (Llama needs {want!r})" for key, value, want in wanted if value != want]
    if a.variant == "complex":
        problems.append("attention.variant='complex' (Llama needs mha, gqa or mqa)")
    return problems


_CACHE: "weakref.WeakKeyDictionary[Any, tuple[tuple, FastLlamaDecoder]]" = weakref.WeakKeyDictionary()


def _weights_key(model: Any) -> tuple:
    # parameters' (and int8/int4 weights') identities, devices, dtypes and in-place version counters: an
    # optimizer step or a load changes it
    return tuple((id(p), p.device, p.dtype, p._version) for p in (*model.parameters(), *model.buffers()))


_COMPILE: "weakref.WeakSet[Any]" = weakref.WeakSet()


def compile_decoding(model: Any, enabled: bool = True) -> bool:
    """Makes generation on ``model`` use the compiled one-token step unless a call says otherwise (what
    ``--compile`` of ``lmforge generate|chat|serve`` does), except where the C step runs
    (:mod:`lmforge.models.transformer.native`), which is faster and stays. Returns whether the model and device
    support compiling (a Llama-style Transformer in float32/64 on a CPU); when they do not, generation stays
    eager."""
    if not enabled:
        _COMPILE.discard(model)
        return False
    fast = fast_decoder(model)
    if fast is None:
        return False
    if not compile_supported(fast.device, fast.dtype):
        return False
    _COMPILE.add(model)
    return True


# Without a say from the caller, one-token steps are compiled when a call decodes at least this many tokens per
# row: compiling costs 15 s cold and a few seconds from Inductor's disk cache on the 2-core benchmark machine (much
# more under load). Since the eager step stores its float matrices for a fast one-row torch.mm and runs int8 on
# FBGEMM, compiling saves only about 1.3 ms a token in float32 and 0.7 ms in int8 at batch 1 on the issue-16 model
# (BENCHMARKS.md, "CPU inference: int8/int4 weights and llama.cpp"), so a cold compile pays back after ~10,000
# tokens: in practice the eager path, unless --compile (servers, chat) asks for it.
AUTO_COMPILE_TOKENS = 8192


def fast_decoder(model: Any, compile: Optional[bool] = None, tokens: int = 0) -> Optional[Any]:
    """The fast path for ``model`` (built once, reused while its weights do not change), or ``None`` when the
    model is not a Llama-compatible Transformer.

    With ``compile=True``, one-token steps run a ``torch.compile``'d step
    (:class:`~lmforge.models.transformer.compiled.CompiledLlamaDecoder`) where it is supported (CPU,
    float32/64, int8/int4 weights); ``False`` keeps the eager fast path. ``None`` (the default) picks the faster
    path for the work: compiled when :func:`compile_decoding` was called for the model (servers, chat), when the
    model's step has run compiled already in this process, or when the call decodes ``tokens`` >=
    :data:`AUTO_COMPILE_TOKENS` per row; eager otherwise."""
    cfg = getattr(model, "config", None)
    if getattr(cfg, "family", None) != "transformer" or not hasattr(model, "tok_emb"):
        return None
    if llama_incompatibilities(cfg):
        return None
    if any(hasattr(m, "lora_a") for m in model.modules()):
        return None  # LoRA adapters (models/lora.py) live outside the weights this path reads
    p = next(model.parameters(), None)
    if p is None or p.dtype not in (torch.float32, torch.float64) or p.device.type not in ("cpu", "cuda"):
        return None  # complex rotary maths needs float32/64; other dtypes and devices use the model's own step
    key = _weights_key(model)
    hit = _CACHE.get(model)
    if hit is not None and hit[0] == key:
        fast = hit[1]
    else:
        fast = FastLlamaDecoder(model)
        _CACHE[model] = (key, fast)
    auto = model in _COMPILE or tokens >= AUTO_COMPILE_TOKENS or (fast.compiled is not None and fast.compiled.ready)
    if compile is None and auto and fast.native_step() is not None:
        auto = False  # the C step is faster than the compiled one: only compile=True compiles
    if compile or (compile is None and auto):
        if compile_supported(fast.device, fast.dtype):
            if fast.compiled is None:
                fast.compiled = CompiledLlamaDecoder(fast)
            return fast.compiled
    return fast
