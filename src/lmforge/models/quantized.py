"""Weight-only int8 and int4 quantization of a model's linear layers and LSTM matrices.

Only the stored weights are quantized (the activations are quantized per call only inside FBGEMM's int8 kernels,
below):

* **int8**: symmetric, one scale per output channel: ``W[n, k] ~= q[n, k] * scale[n]`` with ``q`` in
  [-127, 127] (the per-channel absmax scheme of LLM.int8(), arXiv:2208.07339, without its outlier split).
* **int4**: asymmetric, one scale and minimum per group of ``group_size`` input channels:
  ``W[n, k] ~= q[n, k] * scale[n, g] + low[n, g]`` with ``q`` in [0, 15] and ``g = k // group_size`` (grouped
  min-max quantization as in GPTQ's round-to-nearest baseline, arXiv:2210.17323). A matrix whose half width
  ``K/2`` is not a multiple of ``group_size`` uses the divisor of ``K/2`` closest to it (the scales' shape
  records it). Scales and minimums are stored in float16, as llama.cpp's 4-bit blocks store theirs. Two values share a byte:
  the low nibble of column ``j`` holds ``q[:, j]`` and the high nibble ``q[:, j + K/2]`` (half-split), so a
  kernel unpacks one half of the row with ``& 15`` and the other with ``>> 4``, no interleaving.

The stored layout is portable (plain int8/uint8 tensors in safetensors). On a CPU with FBGEMM, eager int8 layers
(and the LSTM's int8 matrices) run FBGEMM's dynamic int8 kernels (:mod:`lmforge.models.int8_cpu`): the activations
are quantized to 8 bits per call too, and the products are integer. Elsewhere (CUDA, float64, no FBGEMM) and for
int4, eager layers dequantize and call the float matrix product: PyTorch 2.13's weight-only CPU kernels
(``aten._weight_int8pack_mm``, ``aten._weight_int4pack_mm_for_cpu``) were measured slower than that on the
benchmark machine, at every batch size (BENCHMARKS.md, issue 16). The compiled decoding step reads the integer
weights inside a fused reduction (:func:`matvec`).

Embeddings stay float (a lookup reads one row). A tied output head gets its own quantized copy.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from lmforge.errors import ConfigError
from lmforge.models import int8_cpu

__all__ = [
    "QuantLinear", "QuantLSTM", "quantize_model", "dequantize_model", "quantization_of", "quantize_weight",
    "dequantize_weight", "matvec", "decode_weight", "decode_mm", "decode_addmm", "decode_matvec",
]

log = logging.getLogger(__name__)

QWeight = tuple[Tensor, ...]  # int8: (q, scale); int4: (packed, scale, low)


def quantize_weight(w: Tensor, bits: int, group_size: int = 32) -> QWeight:
    """Quantizes a float matrix ``w`` (N, K) as described in the module docstring.

    Returns:
        int8: ``(q int8 (N, K), scale (N,))``; int4: ``(packed uint8 (N, K/2), scale (N, K/G), low (N, K/G))``.
    """
    w = w.detach().float()
    n, k = w.shape
    if bits == 8:
        scale = (w.abs().amax(1) / 127.0).clamp(min=1e-12)
        return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale
    if bits != 4:
        raise ConfigError(f"quantization bits must be 8 or 4, got {bits}")
    if k % 2:
        raise ConfigError(f"int4 needs even matrix widths; a ({n} x {k}) matrix is not: use int8")
    # groups never straddle the two halves: the divisor of K/2 closest to group_size (the smaller on a tie)
    group_size = min((d for d in range(1, k // 2 + 1) if (k // 2) % d == 0), key=lambda d: (abs(d - group_size), d))
    wg = w.view(n, k // group_size, group_size)
    low, high = wg.amin(-1), wg.amax(-1)
    scale, low = ((high - low) / 15.0).half(), low.half()  # stored in float16; q is computed against the stored values
    s32, l32 = scale.float()[..., None], low.float()[..., None]
    q = torch.where(s32 > 0, torch.round((wg - l32) / s32.clamp(min=1e-30)), 0).clamp(0, 15).to(torch.uint8).view(n, k)
    return (q[:, : k // 2] | (q[:, k // 2:] << 4)).contiguous(), scale, low


def dequantize_weight(qw: QWeight, dtype: torch.dtype = torch.float32) -> Tensor:
    """The float matrix (N, K) that ``qw`` (from :func:`quantize_weight`) stands for."""
    if len(qw) == 2:
        q, scale = qw
        return q.to(dtype) * scale.to(dtype)[:, None]
    packed, scale, low = qw
    n = packed.shape[0]
    groups = scale.shape[1]
    q = torch.cat([packed & 15, packed >> 4], 1).to(dtype).view(n, groups, -1)
    return (q * scale.to(dtype)[..., None] + low.to(dtype)[..., None]).view(n, -1)


def matvec(x: Tensor, qw: Union[Tensor, QWeight]) -> Tensor:
    """``x @ W.T`` for one row ``x`` (1, K), written as elementwise products and sums that TorchInductor fuses
    into a single pass over the (integer) weights: the dequantization happens inside the reduction, so a step
    reads 1 byte (int8) or half a byte (int4) per weight instead of 4. Eager, it is correct but slow: it is
    meant to run under ``torch.compile``. ``qw`` may also be a float (N, K) matrix."""
    if isinstance(qw, Tensor):
        return (x * qw).sum(-1).unsqueeze(0)
    if len(qw) == 2:
        q, scale = qw
        return ((x * q.to(x.dtype)).sum(-1) * scale).unsqueeze(0)
    packed, scale, low = qw
    n, half = packed.shape
    groups = scale.shape[1]
    g = 2 * half // groups
    xg = x.view(2, groups // 2, g)  # the two halves of the row, each in groups
    lo = (packed & 15).to(x.dtype).view(n, groups // 2, g)
    hi = (packed >> 4).to(x.dtype).view(n, groups // 2, g)
    y = ((xg[0] * lo).sum(-1) * scale[:, : groups // 2]).sum(-1) + ((xg[1] * hi).sum(-1) * scale[:, groups // 2:]).sum(-1)
    return (y + (x.view(groups, g).sum(-1) * low).sum(-1)).unsqueeze(0)


# ---------------------------------------------------------------------------------------- decoding-path weights
# The fast decoding path (models/transformer/decode.py, compiled.py) holds each matrix either as a float (K, N)
# tensor or, for a quantized layer, as a tuple ``(gain, packed, *parts)``: the parts of :func:`quantize_weight`
# (rows = outputs), their FBGEMM pack for int8 on a CPU that has it (else None), and an optional input gain (K,)
# applied to ``x`` first (the RMSNorm gain that the float path folds into its matrices; folding it into integer
# weights would round them a second time).


def decode_weight(layer: nn.Module, gain: Optional[Tensor] = None, rows: Any = None) -> Optional[QWeight]:
    """``(gain, packed, *parts)`` of a :class:`QuantLinear` for the decoding path (``rows`` reorders the output
    rows of every part), or ``None`` when ``layer`` is not quantized."""
    if not isinstance(layer, QuantLinear):
        return None
    parts = layer.qweight_parts
    if rows is not None:
        parts = tuple(rows(t) for t in parts)
    parts = tuple(t.contiguous() for t in parts)
    packed = None
    if len(parts) == 2 and parts[0].device.type == "cpu" and int8_cpu.available():
        packed = int8_cpu.pack(*parts)
    return (None if gain is None else gain.detach().float(), packed, *parts)


def decode_mm(x: Tensor, w: Union[Tensor, QWeight], step: bool = True) -> Tensor:
    """``x @ w`` for a float (K, N) matrix, or ``(x * gain) @ W.T`` for a decoding-path tuple: FBGEMM's int8
    product row by row where it runs and ``step`` (each row is one sequence's new token), else dequantized (the
    positions of a prompt: one float product, consistent across batches as a float model's is)."""
    if isinstance(w, Tensor):
        return torch.mm(x, w)
    gain, packed, *parts = w
    x = x if gain is None else x * gain
    if step and packed is not None and int8_cpu.usable(x):
        return int8_cpu.linear_rows(x, packed)
    return F.linear(x, dequantize_weight(tuple(parts), x.dtype))


def decode_addmm(x: Tensor, a: Tensor, w: Union[Tensor, QWeight], step: bool = True) -> Tensor:
    """``x + a @ w`` (see :func:`decode_mm`)."""
    return torch.addmm(x, a, w) if isinstance(w, Tensor) else x + decode_mm(a, w, step)


def decode_matvec(x: Tensor, w: Union[Tensor, QWeight]) -> Tensor:
    """``x @ W.T`` inside the compiled step: ``w`` is a float (N, K) matrix or a decoding-path tuple; one row
    is a fused reduction over the (integer) weights (:func:`matvec`), more rows a matrix product."""
    if isinstance(w, Tensor):
        return matvec(x, w) if x.shape[0] == 1 else torch.mm(x, w.t())
    gain, _, *parts = w  # the FBGEMM pack is an opaque object the compiled graph cannot take (see compiled.py)
    x = x if gain is None else x * gain
    if x.shape[0] == 1:
        return matvec(x, tuple(parts))
    return F.linear(x, dequantize_weight(tuple(parts), x.dtype))


def _register(module: nn.Module, prefix: str, qw: QWeight) -> None:
    names = ("qweight", "scale") if len(qw) == 2 else ("qweight", "scale", "low")
    for name, t in zip(names, qw):
        module.register_buffer(prefix + name, t)


def _get(module: nn.Module, prefix: str) -> QWeight:
    low = getattr(module, prefix + "low", None)
    base = (getattr(module, prefix + "qweight"), getattr(module, prefix + "scale"))
    return base if low is None else (*base, low)


class QuantLinear(nn.Module):
    """A linear layer with int8 or int4 weights (buffers ``qweight``, ``scale`` and for int4 ``low``) and a
    float bias; its output equals ``nn.Linear`` with the dequantized weight, up to the rounding of the activations
    where FBGEMM's int8 kernel runs (:mod:`lmforge.models.int8_cpu`).

    Args:
        linear: the float layer to quantize.
        bits: 8 or 4.
        group_size: input channels per int4 group.
    """

    def __init__(self, linear: nn.Linear, bits: int, group_size: int = 32) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bits, self.group_size = bits, group_size
        _register(self, "", quantize_weight(linear.weight, bits, group_size))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self.residual = getattr(linear, "residual", False)
        self._packs = int8_cpu.PackCache()  # FBGEMM's packed weight, built on first use; never saved

    @property
    def qweight_parts(self) -> QWeight:
        """``(qweight, scale)`` or ``(qweight, scale, low)``, as :func:`matvec` takes them."""
        return _get(self, "")

    def dequantize(self, dtype: Optional[torch.dtype] = None) -> Tensor:
        """The float weight (out, in) this layer stands for."""
        return dequantize_weight(self.qweight_parts, dtype or (torch.float32 if self.bias is None else self.bias.dtype))

    @property
    def weight(self) -> Tensor:
        """The dequantized float weight (out, in), computed on each read, for code that reads ``.weight``
        of a linear layer (its device and dtype, or its values)."""
        return self.dequantize()

    def forward(self, x: Tensor) -> Tensor:
        """One position per row (a decoding step: ``x`` (B, K) or (B, 1, K)) takes FBGEMM's int8 product row by row
        where it runs; a sequence (prompts, evaluation) the dequantized float product."""
        one_position = x.dim() <= 2 or x.shape[-2] == 1
        if self.bits == 8 and one_position and int8_cpu.usable(x) and self.qweight.device.type == "cpu":
            return int8_cpu.linear_rows(x.reshape(-1, x.shape[-1]), self._pack()).view(*x.shape[:-1], -1)
        return F.linear(x, self.dequantize(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def _pack(self) -> Any:
        """The FBGEMM pack of the current weights (rebuilt after a load or an in-place change)."""
        return self._packs.get(int8_cpu.stamp((self.qweight, self.scale, self.bias)), lambda: int8_cpu.pack(self.qweight, self.scale, self.bias))

    def extra_repr(self) -> str:
        extra = f", group_size={self.group_size}" if self.bits == 4 else ""
        return f"in={self.in_features}, out={self.out_features}, int{self.bits}{extra}, bias={self.bias is not None}"


class QuantLSTM(nn.Module):
    """A unidirectional ``nn.LSTM`` whose ``weight_ih``/``weight_hh`` matrices are int8/int4 (buffers
    ``qweight_ih_l{k}``, ...); biases stay float. ``forward`` takes and returns what ``nn.LSTM`` does (tensors
    or packed sequences) and runs PyTorch's fused LSTM on the dequantized matrices, or, for one int8 token of one
    row on a CPU with FBGEMM, the cell on FBGEMM's int8 products (:mod:`lmforge.models.int8_cpu`).

    Args:
        lstm: the float LSTM (batch_first or not; not bidirectional, no projections).
        bits: 8 or 4.
        group_size: input channels per int4 group.
    """

    def __init__(self, lstm: nn.LSTM, bits: int, group_size: int = 32) -> None:
        super().__init__()
        if lstm.bidirectional or getattr(lstm, "proj_size", 0):
            raise ConfigError("only unidirectional LSTMs without projections can be quantized")
        self.num_layers, self.hidden_size, self.batch_first = lstm.num_layers, lstm.hidden_size, lstm.batch_first
        self.input_size, self.dropout, self.bias = lstm.input_size, lstm.dropout, lstm.bias
        self.bits, self.group_size = bits, group_size
        for k in range(self.num_layers):
            for kind in ("ih", "hh"):
                _register(self, f"{kind}_l{k}_", quantize_weight(getattr(lstm, f"weight_{kind}_l{k}"), bits, group_size))
                if lstm.bias:
                    b = getattr(lstm, f"bias_{kind}_l{k}").detach().clone()
                    self.register_parameter(f"bias_{kind}_l{k}", nn.Parameter(b, requires_grad=False))
        self._packs = int8_cpu.PackCache()  # FBGEMM's packed cells, built on first use; never saved

    def matrices(self, layer: int) -> tuple[QWeight, QWeight]:
        """The quantized ``(weight_ih, weight_hh)`` of ``layer``."""
        return _get(self, f"ih_l{layer}_"), _get(self, f"hh_l{layer}_")

    def _flat_weights(self, dtype: torch.dtype) -> list[Tensor]:
        flat = []
        for k in range(self.num_layers):
            for kind, qw in zip(("ih", "hh"), self.matrices(k)):
                flat.append(dequantize_weight(qw, dtype))
            if self.bias:
                flat += [getattr(self, f"bias_ih_l{k}").to(dtype), getattr(self, f"bias_hh_l{k}").to(dtype)]
        return flat

    def _packed(self) -> list[tuple[Any, Any]]:
        """FBGEMM packs ``(weight_ih + bias_ih, weight_hh + bias_hh)`` per layer (rebuilt after a load or an
        in-place change)."""
        def build() -> list[tuple[Any, Any]]:
            out = []
            for k in range(self.num_layers):
                (qi, si), (qh, sh) = self.matrices(k)
                b_ih, b_hh = (getattr(self, f"bias_{kind}_l{k}", None) for kind in ("ih", "hh"))
                out.append((int8_cpu.pack(qi, si, b_ih), int8_cpu.pack(qh, sh, b_hh)))
            return out
        return self._packs.get(int8_cpu.stamp([*self.buffers(), *self.parameters()]), build)

    def _one_token(self, x: Tensor, hx: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """One token per row on FBGEMM, row by row: the LSTM cell (arXiv:1503.04069 gives the equations) written
        out, two int8 products a layer (0.16 ms against 0.40 ms for the float LSTM at 1 thread, lstm-small sizes,
        one row)."""
        h0, c0 = hx
        inp, hs, cs = x.reshape(-1, x.shape[-1]), [], []
        for k, (w_ih, w_hh) in enumerate(self._packed()):
            gates = int8_cpu.linear_rows(inp, w_ih).add_(int8_cpu.linear_rows(h0[k].reshape(inp.shape[0], -1), w_hh))
            i, f, g, o = gates.chunk(4, 1)  # PyTorch's gate order
            c = torch.sigmoid(f).mul_(c0[k]).add_(torch.sigmoid(i).mul_(torch.tanh(g)))
            inp = torch.sigmoid(o).mul_(torch.tanh(c))
            hs.append(inp)
            cs.append(c)
        return inp.view(*x.shape[:-1], self.hidden_size), (torch.stack(hs), torch.stack(cs))

    def forward(self, x: Any, hx: Optional[tuple[Tensor, Tensor]] = None) -> tuple[Any, tuple[Tensor, Tensor]]:
        packed = isinstance(x, PackedSequence)
        data = x.data if packed else x
        if hx is None:
            batch = int(x.batch_sizes[0]) if packed else data.shape[0 if self.batch_first else 1]
            z = data.new_zeros(self.num_layers, batch, self.hidden_size)
            hx = (z, z)
        one_token = data.dim() == 3 and data.shape[1 if self.batch_first else 0] == 1
        if self.bits == 8 and not packed and not self.training and one_token and int8_cpu.usable(data):
            return self._one_token(data, hx)
        weights = self._flat_weights(data.dtype)
        drop = self.dropout if self.training else 0.0
        if not packed:
            out, h, c = torch._VF.lstm(data, hx, weights, self.bias, self.num_layers, drop, self.training, False,
                                       self.batch_first)
            return out, (h, c)
        order, back = x.sorted_indices, x.unsorted_indices
        if order is not None:
            hx = (hx[0].index_select(1, order), hx[1].index_select(1, order))
        out, h, c = torch._VF.lstm(data, x.batch_sizes, hx, weights, self.bias, self.num_layers, drop, self.training,
                                   False)
        if back is not None:
            h, c = h.index_select(1, back), c.index_select(1, back)
        return PackedSequence(out, x.batch_sizes, order, back), (h, c)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, int{self.bits}"


def _children(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    return [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()]


def quantize_model(model: nn.Module, bits: int, group_size: int = 32) -> nn.Module:
    """Replaces every ``nn.Linear`` and ``nn.LSTM`` of ``model`` by its quantized form, in place.

    Embeddings stay float. The model's output then equals the float model's with each matrix replaced by its
    dequantized approximation; ``model.quantization`` records ``{"bits", "group_size"}``.

    Args:
        model: a float model (any family); already-quantized layers are left alone.
        bits: 8 or 4.
        group_size: input channels per int4 group (at most; see :func:`quantize_weight`).

    Returns:
        ``model``.

    Raises:
        ConfigError: ``bits`` is not 8 or 4, or an int4 matrix has an odd width.
    """
    if bits not in (8, 4):
        raise ConfigError(f"quantization bits must be 8 or 4, got {bits}")
    count = 0
    for parent, name, child in _children(model):
        if isinstance(child, nn.Linear):
            layer: nn.Module = QuantLinear(child, bits, group_size)
        elif isinstance(child, nn.LSTM):
            layer = QuantLSTM(child, bits, group_size)
        else:
            continue
        setattr(parent, name, layer.train(child.training))  # an eval model stays in eval mode (LSTM dropout)
        count += 1
    model.quantization = {"bits": bits, "group_size": group_size}
    log.info("quantized %d layers to int%d", count, bits)
    return model


def dequantize_model(model: nn.Module) -> nn.Module:
    """Replaces each :class:`QuantLinear` by an ``nn.Linear`` holding its dequantized weight, in place (for
    exporters that read float weights). Returns ``model``."""
    for parent, name, child in _children(model):
        if isinstance(child, QuantLinear):
            lin = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None,
                            device=child.scale.device, dtype=child.scale.dtype)
            with torch.no_grad():
                lin.weight.copy_(child.dequantize())
                if child.bias is not None:
                    lin.bias.copy_(child.bias)
            setattr(parent, name, lin)
        elif isinstance(child, QuantLSTM):
            raise ConfigError("dequantize_model does not convert a quantized LSTM back to float")
    model.__dict__.pop("quantization", None)
    return model


def quantization_of(model: nn.Module) -> Optional[dict[str, int]]:
    """``{"bits", "group_size"}`` when ``model`` holds quantized layers, else ``None``."""
    q = getattr(model, "quantization", None)
    if q is not None:
        return q
    for m in model.modules():
        if isinstance(m, (QuantLinear, QuantLSTM)):
            return {"bits": m.bits, "group_size": m.group_size}
    return None
