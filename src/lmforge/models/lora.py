"""LoRA: low-rank adapters on frozen linear layers (Hu et al., arXiv:2106.09685).

A target ``nn.Linear`` with weight W (out, in) becomes :class:`LoRALinear`: ``y = x W^T + b + (alpha / r) *
dropout(x) A^T B^T`` with A (r, in) drawn like a linear layer's weight and B (out, r) zero, so training starts
from the base model exactly. A and B are float32 even on a bf16/fp16 base (a laptop fine-tune of an imported
half-precision checkpoint keeps its updates exact). Only A and B train; W and every other base parameter are frozen.

The adapted layer keeps the ``weight``/``bias`` names of the layer it replaces, so the base weights save and
load as before; :func:`save_adapter` writes A and B (with rank, alpha and targets in the metadata) to their own
safetensors file beside them, and :func:`merge_lora` folds ``W + (alpha / r) B A`` back into plain linear layers
(what inference and every export use).

Targets are module names matched on their last component: for the Transformer ``qkv`` and ``o_proj``
(attention), ``w_in`` and ``w_out`` (feed-forward) and ``lm_head``.

Example:
    >>> apply_lora(model, rank=8, alpha=16, targets=["qkv", "o_proj"])  # doctest: +SKIP
    >>> merge_lora(model)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.errors import CheckpointError, ConfigError
from lmforge.models.weights import load_weights, save_weights
from lmforge.utils.files import atomic_path
from safetensors.torch import save_file
from safetensors import safe_open

__all__ = ["LoRALinear", "apply_lora", "merge_lora", "has_lora", "lora_parameters", "save_adapter", "load_adapter",
           "adapter_path", "lora_detached", "lora_from_config", "save_weights_with_adapters", "load_weights_with_adapters", "DEFAULT_TARGETS"]

DEFAULT_TARGETS = ("qkv", "o_proj", "w_in", "w_out")


class LoRALinear(nn.Linear):
    """A frozen linear layer plus a trainable rank-``r`` update scaled by ``alpha / r``.

    Args:
        base: the layer to adapt (its weight and bias are taken over, not copied).
        rank: r, the rank of the update.
        alpha: the scaling numerator (``alpha / r`` multiplies the update).
        dropout: dropout on the adapter's input (training only).
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.rank, self.alpha, self.scaling = rank, float(alpha), float(alpha) / rank
        w = base.weight
        dtype = torch.float32 if w.dtype in (torch.bfloat16, torch.float16) else w.dtype  # adapters train in fp32
        self.lora_a = nn.Parameter(torch.empty(rank, self.in_features, device=w.device, dtype=dtype))
        self.lora_b = nn.Parameter(torch.zeros(self.out_features, rank, device=w.device, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # as nn.Linear initialises a weight
        self.lora_dropout = nn.Dropout(dropout)
        for name in ("residual",):  # keep the markers the model's initialisation reads
            if hasattr(base, name):
                setattr(self, name, getattr(base, name))

    def forward(self, x: Tensor) -> Tensor:
        update = F.linear(F.linear(self.lora_dropout(x).to(self.lora_a.dtype), self.lora_a), self.lora_b)  # (..., out)
        return F.linear(x, self.weight, self.bias) + (update * self.scaling).to(x.dtype)

    def delta(self) -> Tensor:
        """The weight update ``(alpha / r) B A`` (out, in)."""
        return (self.lora_b @ self.lora_a) * self.scaling

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding ``W + (alpha / r) B A`` and the bias."""
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(self.weight + self.delta().to(self.weight.dtype))
            if self.bias is not None:
                out.bias.copy_(self.bias)
        for name in ("residual",):
            if hasattr(self, name):
                setattr(out, name, getattr(self, name))
        return out

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, rank={self.rank}, alpha={self.alpha}"


def _targets(model: nn.Module, targets: Sequence[str]) -> list[tuple[nn.Module, str, nn.Linear]]:
    found = []
    for name, module in model.named_modules():
        for child_name, child in module.named_children():
            if child_name in targets and isinstance(child, nn.Linear) and not isinstance(child, LoRALinear):
                found.append((module, child_name, child))
    return found


def apply_lora(model: nn.Module, rank: int, alpha: float = 16.0, targets: Sequence[str] = DEFAULT_TARGETS,
               dropout: float = 0.0) -> nn.Module:
    """Freezes every parameter of ``model`` and adapts its ``targets`` linear layers with LoRA (in place).

    Args:
        model: any module (a Transformer: targets ``qkv``, ``o_proj``, ``w_in``, ``w_out``, ``lm_head``).
        rank: r (>= 1).
        alpha: scaling numerator; the update is multiplied by ``alpha / rank``.
        targets: the last component of the names of the linear layers to adapt.
        dropout: dropout on the adapters' input.

    Returns:
        ``model``, with ``lora_config`` set to ``{"rank", "alpha", "targets", "dropout"}``.

    Raises:
        ConfigError: a bad rank, or targets that name no linear layer (the message lists the ones there are).
    """
    if rank < 1:
        raise ConfigError(f"LoRA rank must be at least 1 (got {rank})")
    tied = getattr(getattr(model, "config", None), "tie_embeddings", False)
    if "lm_head" in targets and tied:
        raise ConfigError("lm_head is tied to the embeddings in this model; adapt it by leaving it out of --lora-targets")
    found = _targets(model, targets)
    names = {n for _, n, _ in found}
    missing = sorted(set(targets) - names)
    if missing or not found:
        have = sorted({n for m in model.modules() for n, c in m.named_children() if isinstance(c, nn.Linear)})
        raise ConfigError(f"LoRA targets {', '.join(missing or targets)} name no linear layer of this model; "
                          f"choose from {', '.join(have)}")
    for p in model.parameters():
        p.requires_grad_(False)
    for parent, name, child in found:
        setattr(parent, name, LoRALinear(child, rank, alpha, dropout))
    model.lora_config = {"rank": rank, "alpha": float(alpha), "targets": sorted(names), "dropout": dropout}
    return model


def lora_from_config(model: nn.Module, train: Any) -> nn.Module:
    """``model`` adapted as a :class:`~lmforge.config.train.TrainConfig` says (``lora_rank`` > 0 and no adapters
    yet), else unchanged; what the trainer calls before building its optimiser."""
    if train.lora_rank and not has_lora(model):
        apply_lora(model, train.lora_rank, train.lora_alpha, train.lora_targets, train.lora_dropout)
    return model


def has_lora(model: nn.Module) -> bool:
    """Whether ``model`` holds LoRA adapters."""
    return any(isinstance(m, LoRALinear) for m in model.modules())


def lora_parameters(model: nn.Module) -> dict[str, Tensor]:
    """The adapter tensors by their state-dict names (``...qkv.lora_a``...)."""
    return {k: v for k, v in model.state_dict().items() if k.endswith((".lora_a", ".lora_b"))}


def merge_lora(model: nn.Module) -> nn.Module:
    """Replaces every :class:`LoRALinear` by a plain linear layer with the merged weight (in place); the result
    computes what the adapted model computes. Parameters become trainable again."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, name, child.merged())
    for p in model.parameters():
        p.requires_grad_(True)
    if hasattr(model, "lora_config"):
        del model.lora_config
    return model


@contextlib.contextmanager
def lora_detached(model: nn.Module) -> Iterator[None]:
    """Within the block the adapters are out of ``model.state_dict()`` (to save or load the base weights)."""
    held = []
    for m in model.modules():
        if isinstance(m, LoRALinear):
            held.append((m, m._parameters.pop("lora_a"), m._parameters.pop("lora_b")))
    try:
        yield
    finally:
        for m, a, b in held:
            m._parameters["lora_a"], m._parameters["lora_b"] = a, b


def adapter_path(weights: str | Path) -> Path:
    """Where the adapters of a weights file live: ``model.safetensors`` -> ``adapter.safetensors``,
    ``best.safetensors`` -> ``best.adapter.safetensors``."""
    weights = Path(weights)
    stem = "" if weights.stem == "model" else f"{weights.stem}."
    return weights.with_name(f"{stem}adapter.safetensors")


def save_adapter(model: nn.Module, path: str | Path) -> None:
    """Writes the adapters (A and B of every adapted layer) with rank, alpha and targets in the metadata."""

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in lora_parameters(model).items()}
    meta = {"format": "lmforge-lora", "lora": json.dumps(getattr(model, "lora_config", {}))}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_adapter(model: nn.Module, path: str | Path, merge: bool = False) -> nn.Module:
    """Applies the adapters saved by :func:`save_adapter` to ``model`` (adapting it first when it has none);
    with ``merge`` folds them into plain linear layers.

    Raises:
        CheckpointError: the file is missing, corrupted or does not fit the model.
    """

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"LoRA adapter file {path} not found; the run's adapters are missing")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        settings = json.loads(meta["lora"])
    except Exception as err:  # safetensors' own error types, or missing metadata
        raise CheckpointError(f"{path} is not a readable LoRA adapter file ({err}); restore it or fine-tune again") from None
    if not has_lora(model):
        apply_lora(model, settings["rank"], settings["alpha"], settings["targets"], settings.get("dropout", 0.0))
    mine = lora_parameters(model)
    if set(mine) != set(tensors) or any(mine[k].shape != tensors[k].shape for k in mine):
        raise CheckpointError(f"{path} does not fit this model (different layers or rank); it belongs to another base")
    with torch.no_grad():
        params = dict(model.named_parameters())
        for k, t in tensors.items():
            params[k].copy_(t)
    return merge_lora(model) if merge else model


def save_weights_with_adapters(model: nn.Module, path: str | Path) -> None:
    """Writes a run's weights file; with adapters, the frozen base weights there and the adapters beside them
    (:func:`adapter_path`). Without adapters, a stale adapter file beside ``path`` is removed."""
    if has_lora(model):
        save_adapter(model, adapter_path(path))
        with lora_detached(model):
            save_weights(model, path)
        return
    save_weights(model, path)
    adapter_path(path).unlink(missing_ok=True)


def load_weights_with_adapters(model: nn.Module, path: str | Path) -> nn.Module:
    """Loads what :func:`save_weights_with_adapters` wrote: into an adapted model (resuming a LoRA run) base and
    adapters separately; into a plain model the base weights with the adapters merged (inference, export)."""
    if has_lora(model):
        with lora_detached(model):
            load_weights(model, path)
        return load_adapter(model, adapter_path(path))
    load_weights(model, path)
    if adapter_path(path).is_file():
        load_adapter(model, adapter_path(path), merge=True)
    return model
