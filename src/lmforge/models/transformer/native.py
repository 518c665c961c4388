"""The decoding step in C (``native_step.c``), for Llama-style Transformers on a CPU.

A small model's decoding step at batch 1 costs more in per-operation overhead (a hundred or so PyTorch calls,
each a few microseconds of Python and dispatch) than in arithmetic, and PyTorch's one-row matrix products read
the weights at about half the memory bandwidth a plain loop reaches. ``native_step.c`` runs the whole step
(embedding, every layer, head) as one call: one OpenMP parallel region, each matrix streamed once for all rows,
float32 matrices in panels of 64 columns multiplied with AVX-512 fused multiply-adds (6 input rows at a time, so
that a batch or a prompt runs at close to the CPU's arithmetic peak) and int8 matrices as integer products
(AVX-512 VNNI panels; rows of dot products on other CPUs) of each input row rounded to 8 bits with its own
scale. The same call feeds prompts (several new tokens a row) for float32 models. It is what
:class:`~lmforge.models.transformer.decode.FastLlamaDecoder` runs by default (BENCHMARKS.md, issue 16, has the
figures against llama.cpp).

The source ships with the package and is compiled on first use with the system's C compiler (``$CC``, else
``cc``/``gcc``; ``-O3 -march=native -fopenmp -ffp-contract=off``) into ``$XDG_CACHE_HOME/lmforge/native`` (``~/.cache/...``),
keyed by the source, the compiler and the CPU, then loaded with :mod:`ctypes` (which releases the GIL during
the call). PyTorch's own OpenMP runtime (``libgomp.so.1``, already loaded) serves the parallel region. Where no
compiler works, :func:`library` returns ``None`` (:func:`unavailable_reason` says why); then, and with
``LMFORGE_NATIVE=0`` in the environment (:data:`ENABLED`), the PyTorch step runs instead: the same results to
float rounding (tests compare the logits and the greedy tokens).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import mmap
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor


__all__ = ["ENABLED", "NativeStep", "Panels", "build", "library", "supports", "unavailable_reason"]

log = logging.getLogger(__name__)

# Set to False (or LMFORGE_NATIVE=0 in the environment) to decode with the PyTorch step.
ENABLED = os.environ.get("LMFORGE_NATIVE", "1") != "0"

_SOURCE = Path(__file__).with_name("native_step.c")
_P = ctypes.c_void_p
_I = ctypes.c_int64


class _Mat(ctypes.Structure):
    _fields_ = [("w", _P), ("q", _P), ("scale", _P), ("rowsum", _P), ("gain", _P), ("bias", _P), ("n", _I), ("k", _I)]


class _Layer(ctypes.Structure):
    _fields_ = [("qkv", _Mat), ("o", _Mat), ("gu", _Mat), ("down", _Mat)]


class _Model(ctypes.Structure):
    _fields_ = [("L", _I), ("D", _I), ("H", _I), ("Hkv", _I), ("hd", _I), ("ffn", _I), ("deps", ctypes.c_float),
                ("emb", _P), ("rope", _P), ("head", _Mat), ("layers", ctypes.POINTER(_Layer))]


_failure: str | None = None


def unavailable_reason() -> str | None:
    """Why :func:`library` is ``None`` (no compiler, the compiler's error), or ``None`` when it loads."""
    library()
    return _failure


def _cpu_key() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        flags = platform.processor()
    return flags


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled step (built once per machine and cached on disk), or ``None`` where it cannot be built
    (:func:`unavailable_reason` says why)."""
    global _failure
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        _failure = f"built only on x86-64 Linux for now (this is {platform.system()} {platform.machine()})"
        return None
    try:
        lib = build("-march=native")
    except (OSError, subprocess.SubprocessError) as err:
        _failure = f"could not build or load the C decoding step: {err}"
        log.info("%s; decoding with the PyTorch step", _failure)
        return None
    _failure = None
    return lib


def build(arch: str) -> ctypes.CDLL:
    """Compiles ``native_step.c`` for ``arch`` (a ``-march=`` flag) into the cache, unless it is there, and loads it.

    Raises:
        OSError: no C compiler, or it failed (its last line of output is in the message).
    """
    cc = _compiler()
    if cc is None:
        raise OSError("no C compiler found (set CC, or install gcc)")
    # -ffp-contract=off: no multiply and add fused unless the source says so; otherwise the compiler fuses them in
    # some of a kernel's unrolled copies (one per count of rows) and not in others, and a row's result would
    # depend on how many rows share its group
    flags = ["-O3", arch, "-fopenmp", "-shared", "-fPIC", "-std=gnu11", "-ffp-contract=off"]
    key = hashlib.sha256(b"\0".join([_SOURCE.read_bytes(), cc.encode(), " ".join(flags).encode(), _cpu_key().encode(),
                                     torch.__version__.encode()])).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lmforge" / "native"
    target = cache / f"native_step-{key}.so"
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
        os.close(fd)
        try:
            done = subprocess.run([cc, *flags, str(_SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True,
                                  timeout=120)
            if done.returncode != 0:
                lines = done.stderr.strip().splitlines() or ["no output"]
                first = next((line for line in lines if "error" in line), lines[-1])
                raise OSError(f"{Path(cc).name} failed: {first.strip()}")
            os.replace(tmp, target)  # atomic: a concurrent build finds a whole file or none
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        _prune(cache, keep=target)
    lib = ctypes.CDLL(str(target))
    lib.lmf_step.restype = ctypes.c_int
    lib.lmf_step.argtypes = [ctypes.POINTER(_Model), _I, _I, _P, _P, _I, _P, _I, _P, ctypes.c_int, _P, _P, _I, _I,
                             _P, ctypes.c_int]
    lib.lmf_int8_panels.restype = ctypes.c_int
    lib.lmf_int8_panels.argtypes = []
    return lib


def _prune(cache: Path, keep: Path, most: int = 6) -> None:
    """Removes all but the ``most`` newest builds (older lmforge versions, other CPUs) from ``cache``. A process
    that has one loaded keeps its mapping (unlinking a loaded library is safe on Linux)."""
    def age(f: Path) -> float:
        try:
            return -f.stat().st_mtime
        except OSError:  # removed meanwhile by another process
            return 0.0

    for old in sorted((b for b in cache.glob("native_step-*.so") if b != keep), key=age)[most - 1:]:
        try:
            old.unlink()
        except OSError:
            pass


def _arena(tensors: list[Tensor]) -> list[Tensor]:
    """Copies of ``tensors`` laid out one after another, in the order given, in one block of memory that the
    kernel is asked to back with 2 MiB pages (``madvise(MADV_HUGEPAGE)``; Linux's transparent huge pages, where
    they are enabled). A step then streams its weights as one sequence with few TLB misses: on the benchmark
    machine a one-row pass over 52 MB of float32 rows took 1.6-1.9 ms on huge pages against 2.9-3.3 ms on 4 KiB
    pages (BENCHMARKS.md, issue 16)."""
    huge = 1 << 21
    offsets, total = [], 0
    for t in tensors:
        offsets.append(total)
        total += -(-t.numel() * t.element_size() // 64) * 64
    block = mmap.mmap(-1, total + huge, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # private: shared memory gets no huge pages
    start = -ctypes.addressof(ctypes.c_char.from_buffer(block)) % huge
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            block.madvise(mmap.MADV_HUGEPAGE, start, total + huge - start)
        except OSError:  # a kernel without transparent huge pages: ordinary pages
            pass
    out = []
    for t, off in zip(tensors, offsets):
        view = torch.frombuffer(block, dtype=t.dtype, count=t.numel(), offset=start + off).view(t.shape)
        out.append(view.copy_(t))
    return out


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


PANEL = 64  # native_step.c's LMF_PANEL


class Panels:
    """A float matrix in the C step's layout: ``data`` (panels, k, 64), panel ``p`` holding output columns
    ``64p .. 64p + 63`` as ``k`` rows (zero past the last column); ``n`` outputs of ``k`` inputs, in ``parts``
    matrices of ``n / parts`` outputs packed one after the other (SwiGLU's gate and up)."""

    def __init__(self, data: Tensor, n: int, k: int, parts: int = 1) -> None:
        self.data, self.n, self.k, self.parts = data, n, k, parts

    def rows(self) -> Tensor:
        """The matrix as contiguous (out, in) rows (a copy)."""
        n = self.n // self.parts
        per = -(-n // PANEL)
        return torch.cat([p.permute(1, 0, 2).reshape(self.k, -1)[:, :n].t()
                          for p in self.data.split(per)]).contiguous()


def _int8(w: tuple, parts: int, panels: bool) -> tuple:
    """An int8 decoding-path tuple ``(gain, pack, q, scale)`` as the C step takes it: ``(gain, rowsum, q, scale,
    n, k)``, with ``q`` (n, k) rows, or with ``panels`` in panels of 64 columns of 4-byte groups (``parts``
    matrices of n / parts rows each packed on its own): panel p, group i holds bytes ``4i .. 4i + 3`` of rows
    ``64p .. 64p + 63``, zero past the last row and the last byte (native_step.c, qpanel_i8)."""
    gain, _, q, scale = w
    q, scale = q.contiguous(), scale.float().contiguous()
    n, k = q.shape
    rowsum = q.sum(1, dtype=torch.int32).contiguous()
    if panels:
        packed = []
        for part in q.chunk(parts, dim=0):
            part = torch.nn.functional.pad(part, (0, -k % 4, 0, -part.shape[0] % PANEL))  # (rows, bytes) padded
            packed.append(part.view(-1, PANEL, part.shape[1] // 4, 4).permute(0, 2, 1, 3))
        q = torch.cat(packed).contiguous()
    return gain, rowsum, q, scale, n, k


def _c_layout(w: Any, parts: int = 1, int8_panels: bool = False) -> Any:
    """A decoding-path matrix in the C step's layout: a float (in, out) matrix as :class:`Panels` (``parts`` > 1:
    its columns are that many matrices side by side, each packed on its own, as SwiGLU's gate and up); an int8
    tuple through :func:`_int8`."""
    if not isinstance(w, Tensor):
        return _int8(w, parts, int8_panels)
    k, n = w.shape
    packed = []
    for part in w.detach().float().chunk(parts, dim=1):
        pad = -part.shape[1] % PANEL
        part = torch.nn.functional.pad(part, (0, pad))  # (k, multiple of 64)
        packed.append(part.view(k, -1, PANEL).permute(1, 0, 2))
    return Panels(torch.cat(packed).contiguous(), n, k, parts)


def supports(w: Any) -> bool:
    """Whether a decoding-path matrix (a float (in, out) tensor or an int8 tuple) runs in the C step."""
    if isinstance(w, Tensor):
        return w.dtype == torch.float32 and w.device.type == "cpu"
    return len(w) == 4  # (gain, packed, q, scale): int8; int4 tuples have a fifth part


def _in_arena(layers: list[tuple], head: Any) -> tuple[list[tuple], Any]:
    """``layers`` and ``head`` with their float panels and int8 weights moved into one :func:`_arena`, in the
    order a step reads them."""
    def matrix(m: Any) -> Any:  # the tensor of a decoding-path matrix: float panels, or int8's q
        return m.data if isinstance(m, Panels) else m[2]

    mats = [matrix(m) for layer in layers for m in layer[0::2]] + [matrix(head)]
    moved = dict(zip(map(id, mats), _arena(mats)))

    def redo(m: Any) -> Any:
        return Panels(moved[id(m.data)], m.n, m.k, m.parts) if isinstance(m, Panels) else (*m[:2], moved[id(m[2])], *m[3:])

    return [tuple(redo(m) if i % 2 == 0 else m for i, m in enumerate(layer)) for layer in layers], redo(head)


class NativeStep:
    """The C step over the weights of a :class:`~lmforge.models.transformer.decode.FastLlamaDecoder`.

    Its float matrices are :class:`Panels` (``layers`` and ``head``, in the decoder's order), streamed once per
    step; a float decoder then keeps these as its only copy (every one of its steps runs here).
    """

    def __init__(self, fast: Any, lib: ctypes.CDLL | None = None) -> None:
        self.lib = lib or library()
        if self.lib is None:
            raise RuntimeError(_failure or "the C decoding step is unavailable")
        q8 = bool(self.lib.lmf_int8_panels())  # whether this build takes int8 matrices as panels too
        layers = [(_c_layout(wqkv, 1, q8), bqkv, _c_layout(wo, 1, q8), bo, _c_layout(wgu, 2, q8), bgu,
                   _c_layout(wd, 1, q8), bd) for wqkv, bqkv, wo, bo, wgu, bgu, wd, bd in fast.layers]
        self.layers, self.head = _in_arena(layers, _c_layout(fast.head_t, 1, q8))
        layers, head = self.layers, self.head
        self._keep: list[Tensor] = []  # every tensor the structures point at stays alive with this object
        rope = torch.view_as_real(fast.rope).contiguous().float()
        emb = fast.emb.contiguous()
        self._keep += [rope, emb]
        self.emb_rows = emb.shape[0]
        self._layers = (_Layer * len(layers))()
        for i, (wqkv, bqkv, wo, bo, wgu, bgu, wd, bd) in enumerate(layers):
            ly = self._layers[i]
            ly.qkv, ly.o, ly.gu, ly.down = (self._mat(wqkv, bqkv), self._mat(wo, bo), self._mat(wgu, bgu),
                                            self._mat(wd, bd))
        self._model = _Model(fast.L, fast.D, fast.H, fast.Hkv, fast.hd, fast.ffn, float(fast.deps), emb.data_ptr(),
                             rope.data_ptr(), self._mat(head, None), self._layers)
        self.vocab = int(head.n if isinstance(head, Panels) else head[4])
        self.quantized = not isinstance(head, Panels) or any(not isinstance(m, Panels) for ly in layers for m in ly[0::2])

    def _mat(self, w: Any, bias: Tensor | None) -> _Mat:
        b = None if bias is None else bias.detach().float().contiguous()
        if isinstance(w, Panels):
            self._keep += [t for t in (w.data, b) if t is not None]
            return _Mat(w.data.data_ptr(), None, None, None, None, _ptr(b), w.n, w.k)
        gain, rowsum, q, scale, n, k = w
        gain = None if gain is None else gain.float().contiguous()
        self._keep += [t for t in (q, scale, rowsum, gain, b) if t is not None]
        return _Mat(None, q.data_ptr(), scale.data_ptr(), rowsum.data_ptr(), _ptr(gain), _ptr(b), n, k)

    def check_ids(self, lo: int, hi: int, ids: Any) -> None:
        """Raises ``IndexError`` (naming ``ids``) unless the token ids from ``lo`` to ``hi`` are rows of the
        embedding table, which C reads unchecked."""
        if lo < 0 or hi >= self.emb_rows:
            shown = ids.tolist() if isinstance(ids, Tensor) else ids
            raise IndexError(f"token ids must be in [0, {self.emb_rows}), got {shown}")

    def __call__(self, tok: Tensor, pos: Tensor, slot: int, valid: Tensor | None, k: list[Tensor],
                 v: list[Tensor]) -> Tensor:
        """tok, pos (B,) or (B, T) int64: T new tokens per row (one for a decoding step, more for a prompt), their
        keys/values going to cache slots ``slot .. slot + T - 1``; valid (B, >= slot + T) bool, the slots each row
        attends to (``None``: all, causally); k, v per layer (B, Hkv, S, hd) float32 views whose last two
        dimensions are contiguous. Returns the logits of each row's last token (B, V)."""
        B = tok.shape[0]
        T = tok.shape[1] if tok.dim() == 2 else 1
        tok, pos = tok.contiguous(), pos.contiguous()
        if B:
            self.check_ids(int(tok.min()), int(tok.max()), tok)
        k0 = k[0]
        if k0.stride(3) != 1 or k0.stride(2) != k0.shape[3] or any(t.stride() != k0.stride() for t in (*k, *v)):
            raise ValueError("the caches must share one layout with contiguous last two dimensions")
        if slot + T > k0.shape[2]:
            raise ValueError(f"cache full: {slot} + {T} tokens exceed its {k0.shape[2]} slots")
        kcs = (_P * len(k))(*(t.data_ptr() for t in k))  # per call, so that calls from several threads never mix
        vcs = (_P * len(v))(*(t.data_ptr() for t in v))
        vstride = 0
        if valid is not None:
            if valid.stride(1) != 1:
                valid = valid.contiguous()
            vstride = valid.stride(0)
        logits = torch.empty(B, self.vocab, dtype=torch.float32)
        rc = self.lib.lmf_step(ctypes.byref(self._model), B, T, tok.data_ptr(), pos.data_ptr(), slot,
                               _ptr(valid), vstride, None, 0, kcs, vcs, k0.stride(0), k0.stride(1), logits.data_ptr(),
                               torch.get_num_threads())
        if rc != 0:
            raise MemoryError("the C decoding step could not allocate its scratch memory")
        return logits
