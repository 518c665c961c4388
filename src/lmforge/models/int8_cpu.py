"""int8 x int8 matrix products on the CPU through FBGEMM, for the int8 weights of :mod:`lmforge.models.quantized`.

PyTorch ships FBGEMM's dynamic int8 linear (``quantized::linear_dynamic``): the weight is packed once (int8, one
scale per output channel, exactly the stored ``(q, scale)``), and each call quantizes the activations to 8 bits
with one scale per call (per tensor, asymmetric, from their min and max) and multiplies in integers (AVX-512 VNNI
``vpdpbusd`` where the CPU has it), as llama.cpp's Q8_0 path does with its blocks (dynamic quantization as in
arXiv:1712.05877, section 2). At batch 1 on the benchmark machine one pass over the issue-16 model's matrices took
0.75 ms this way against 5.2 ms for float32 ``torch.mm`` (BENCHMARKS.md, issue 16).

The activation scale is one per call, so it would couple the rows of a call: a row's output would depend on the
other rows in its batch (and on the rest of a prompt), which breaks "a padded row gives the same tokens as the row
alone" and makes served text depend on who else is being served. So :func:`linear_rows` calls the kernel **one row
at a time**: each row gets its own scale and the same arithmetic whatever else is in the batch (at batch 1 that is
one call, the case llama.cpp is compared on; at batch 32 the per-row calls cost about what dequantize-then-matmul
does). Which rows take it is the caller's choice: the one-token decoding steps (and the fast decoding path's
prompts) do; teacher-forced evaluation and the prompts of the model's own forward keep dequantize-then-matmul.

Packs are derived from the stored weights on first use and cached on the owner (never serialized: the
safetensors files are unchanged). Where FBGEMM is missing, the tensors are not float32 CPU tensors, or a caller
turns it off (:data:`ENABLED`), callers keep their dequantize-then-matmul path.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Optional

import torch
from torch import Tensor

__all__ = ["ENABLED", "available", "usable", "pack", "linear", "linear_rows", "stamp", "PackCache"]

# Set to False to make every int8 layer dequantize and use the float matrix product (tests compare the two).
ENABLED = True


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Whether this PyTorch build has FBGEMM's quantized kernels (x86 CPUs)."""
    return "fbgemm" in torch.backends.quantized.supported_engines


@functools.lru_cache(maxsize=None)
def _reduce_range() -> bool:
    """Quantize activations to 7 bits unless the CPU has VNNI: without it FBGEMM multiplies pairs of u8 x s8 into
    int16 (``vpmaddubsw``), which can saturate at full range (PyTorch's own x86 default keeps 7 bits for that)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return True
    return not ("avx512_vnni" in flags or "avx_vnni" in flags)


def usable(x: Tensor) -> bool:
    """Whether :func:`linear_rows` runs for activations ``x``: float32 on the CPU, FBGEMM present and enabled."""
    return ENABLED and x.dtype == torch.float32 and x.device.type == "cpu" and available()


def pack(q: Tensor, scale: Tensor, bias: Optional[Tensor] = None) -> Any:
    """FBGEMM's packed form of ``W = q * scale[:, None]`` (q int8 (N, K), scale (N,)) plus an optional float bias."""
    zero = torch.zeros(q.shape[0], dtype=torch.long)
    # torch 2.13 deprecates the quantized-tensor constructors (a warning on every call); the kernels themselves
    # are not deprecated, and the quantized tensor only lives until it is packed.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qt = torch._make_per_channel_quantized_tensor(q.detach().cpu(), scale.detach().cpu().double(), zero, 0)
        return torch.ops.quantized.linear_prepack(qt, None if bias is None else bias.detach().float().cpu())


def linear(x: Tensor, packed: Any) -> Tensor:
    """``x @ W.T (+ bias)`` for a :func:`pack`'d weight; ``x`` (..., K) float32 on the CPU."""
    return torch.ops.quantized.linear_dynamic(x, packed, _reduce_range())


def linear_rows(x: Tensor, packed: Any) -> Tensor:
    """:func:`linear` of each row of ``x`` (R, K) on its own, so that each row is rounded with its own scale and
    its result never depends on the other rows (see the module docstring)."""
    if x.shape[0] == 1:
        return linear(x, packed)
    return torch.cat([linear(row, packed) for row in x.split(1)])


def stamp(tensors: Any) -> tuple:
    """A key that changes when any of ``tensors`` is replaced or changed in place (tensors made under
    ``torch.inference_mode`` have no version counter: only their storage counts)."""
    return tuple((t.data_ptr(), -1 if t.is_inference() else t._version) for t in tensors if t is not None)


class PackCache:
    """A holder for packs on a module: a plain attribute (not a buffer, so ``state_dict`` never sees it) that copies
    and pickles as empty, so a copied module packs its own weights again."""

    def __init__(self) -> None:
        self.key: Any = None
        self.value: Any = None

    def get(self, key: Any, build: Any) -> Any:
        """The cached value for ``key``, or ``build()`` stored under it."""
        if self.key != key:
            self.value, self.key = build(), key
        return self.value

    def __deepcopy__(self, memo: dict) -> "PackCache":
        return PackCache()

    def __getstate__(self) -> dict:
        return {"key": None, "value": None}
