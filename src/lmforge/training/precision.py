"""Device and numeric precision: which device, which autocast dtype, and whether a gradient scaler is needed.

``auto`` picks bf16 autocast on GPUs that support it, fp16 with a gradient scaler on older GPUs, and fp32 on
CPU and MPS (where mixed precision rarely pays off for small models). fp16 always comes with a scaler: without
one small gradients underflow and losses turn to NaN (arXiv:1710.03740).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ContextManager

import torch

from lmforge.errors import ConfigError
from lmforge.utils.device import resolve_device

__all__ = ["resolve_device", "Precision", "resolve_precision"]



@dataclass
class Precision:
    """The resolved numeric setting: ``name`` is fp32, bf16 or fp16."""

    name: str
    device_type: str

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype, or ``None`` for plain fp32."""
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    @property
    def needs_scaler(self) -> bool:
        """fp16 needs loss scaling; bf16 has fp32's exponent range and does not."""
        return self.name == "fp16"

    def autocast(self) -> ContextManager:
        """A context for forward passes: autocast to :attr:`dtype`, or nothing for fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def grad_scaler(self):
        """A ``torch.amp.GradScaler``, enabled only for fp16."""
        return torch.amp.GradScaler(self.device_type, enabled=self.needs_scaler)


def resolve_precision(name: str, device: torch.device) -> Precision:
    """Turns ``auto|fp32|bf16|fp16`` into a :class:`Precision` for ``device``, refusing what cannot work."""
    dev = device.type
    if name == "auto":
        if dev == "cuda":
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            name = "fp32"
    if name not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"unknown precision {name!r}; choose one of: auto, fp32, bf16, fp16")
    if name == "fp16" and dev == "cpu":
        raise ConfigError("fp16 training is not supported on CPU; use --precision bf16 or fp32")
    if name == "bf16" and dev == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("this GPU has no bf16 support; use --precision fp16 (with loss scaling) or fp32")
    return Precision(name, dev)
