"""AdamW with weight decay on matrices only, fused when the device has a fused kernel."""

from __future__ import annotations

import logging

import torch
from torch import nn

__all__ = ["param_groups", "build_optimizer"]

log = logging.getLogger(__name__)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Splits trainable parameters into a decayed group (tensors of 2 or more dimensions: weight matrices and
    embeddings) and an undecayed one (biases, norm gains and other 1-D tensors), as in AdamW practice
    (arXiv:1711.05101). Tied parameters appear once."""
    decay, no_decay, seen = [], [], set()
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _fused_ok(device_type: str) -> bool:
    # Fused AdamW has kernels for these devices in PyTorch >= 2.4; on CPU it is several times faster.
    return device_type in ("cuda", "cpu", "mps", "xpu")


def build_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.1, betas: tuple[float, float] = (0.9, 0.99),
                    device_type: str = "cpu", fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`.

    Args:
        model: the module to optimise.
        lr: peak learning rate.
        weight_decay: decoupled weight decay for matrices.
        betas: Adam's moment coefficients.
        device_type: where the parameters live; decides whether the fused kernel is used.
        fused: force the fused kernel on or off; ``None`` chooses by device.

    Returns:
        A ``torch.optim.AdamW``.
    """
    groups = param_groups(model, weight_decay)
    use_fused = _fused_ok(device_type) if fused is None else fused
    if use_fused:
        try:
            return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)
        except (RuntimeError, TypeError) as err:  # an older torch or an unsupported device
            log.info("fused AdamW unavailable (%s); using the default implementation", err)
    return torch.optim.AdamW(groups, lr=lr, betas=betas)
