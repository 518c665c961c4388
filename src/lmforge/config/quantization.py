"""How a run's weights are quantized: the ``quantization`` section of a run's ``config.yaml``.

A run written by ``lmforge quantize`` records it, and loading rebuilds the quantized layers before reading the
weights (see :mod:`lmforge.models.quantized`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from lmforge.config.base import StrictModel

__all__ = ["QuantizationConfig"]


class QuantizationConfig(StrictModel):
    """Weight-only quantization of a model's linear layers and LSTM matrices (activations stay float).

    Attributes:
        bits: 8 (symmetric, one scale per output channel) or 4 (asymmetric, one scale and minimum per group of
            ``group_size`` input channels).
        group_size: input channels per int4 group (unused for int8).
    """

    bits: Literal[8, 4] = 8
    group_size: int = 32

    @field_validator("group_size")
    @classmethod
    def _positive_even(cls, v: int) -> int:
        if v < 2 or v % 2:
            raise ValueError(f"group_size must be an even number >= 2, got {v}")
        return v

    @property
    def name(self) -> str:
        """``int8`` or ``int4``."""
        return f"int{self.bits}"
