"""Learning-rate schedules: pure functions of the step and of the fraction of the budget used.

Every schedule warms up linearly over ``warmup_steps`` and then follows its shape over the *progress* ``p`` in
``[0, 1]``: the fraction of the training budget already spent. With ``max_steps`` (or ``epochs``) the trainer
measures progress in steps after warm-up; with only a ``time_budget`` it measures it in seconds, so a decaying
schedule ends its decay when the time runs out (time-aware decay). ``SCHEDULES`` maps each name of
``TrainConfig.schedule`` to its shape; a test checks that the two agree.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

from lmforge.registry import Registry

__all__ = ["SCHEDULES", "lr_factor", "LRSchedule"]

# shape(p, step, warmup_steps, min_ratio, decay_fraction) -> multiplier of the peak learning rate.
Shape = Callable[[float, int, int, float, float], float]

SCHEDULES: Registry[Shape] = Registry("schedule")


@SCHEDULES.register("constant")
def _constant(p: float, step: int, warmup: int, min_ratio: float, decay_fraction: float) -> float:
    return 1.0


@SCHEDULES.register("cosine")
def _cosine(p: float, step: int, warmup: int, min_ratio: float, decay_fraction: float) -> float:
    # Cosine annealing without restarts (arXiv:1608.03983) down to min_ratio.
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))


@SCHEDULES.register("linear")
def _linear(p: float, step: int, warmup: int, min_ratio: float, decay_fraction: float) -> float:
    return 1.0 - (1.0 - min_ratio) * p


@SCHEDULES.register("wsd")
def _wsd(p: float, step: int, warmup: int, min_ratio: float, decay_fraction: float) -> float:
    # Warmup-stable-decay (arXiv:2404.06395): hold the peak, then decay linearly over the last decay_fraction.
    start = 1.0 - decay_fraction
    if p <= start:
        return 1.0
    return 1.0 - (1.0 - min_ratio) * (p - start) / decay_fraction


@SCHEDULES.register("inverse_sqrt")
def _inverse_sqrt(p: float, step: int, warmup: int, min_ratio: float, decay_fraction: float) -> float:
    # The original Transformer's schedule (arXiv:1706.03762): peak at the end of warm-up, then 1/sqrt(step).
    w = max(1, warmup)
    return math.sqrt(w / max(w, step + 1))


def lr_factor(name: str, step: int, progress: float, warmup_steps: int, min_ratio: float = 0.1,
              decay_fraction: float = 0.2, warmup_fraction: Optional[float] = None) -> float:
    """The multiplier of the peak learning rate at optimiser step ``step`` (0-based).

    Args:
        name: a name in ``SCHEDULES``.
        step: optimiser steps already taken.
        progress: fraction of the budget spent after warm-up, clamped to ``[0, 1]``.
        warmup_steps: linear warm-up length in steps (0 for none).
        min_ratio: where decaying schedules end, as a fraction of the peak.
        decay_fraction: ``wsd`` only: the final fraction of the budget that decays.
        warmup_fraction: warm-up also ends once ``progress`` reaches this fraction: with a time budget, a slow
            (or busy) machine that reaches few steps does not spend most of its budget warming up.

    Returns:
        A float in ``(0, 1]``.
    """
    shape = SCHEDULES.get(name)
    p = min(1.0, max(0.0, progress))
    factor = shape(p, step, warmup_steps, min_ratio, decay_fraction)
    if warmup_steps and step < warmup_steps:
        warm = (step + 1) / warmup_steps
        if warmup_fraction:
            warm = max(warm, p / warmup_fraction)
        factor *= min(1.0, warm)
    return factor


class LRSchedule:
    """Applies a named schedule to an optimiser's parameter groups.

    Args:
        optimizer: a ``torch.optim.Optimizer``; each group's peak is stored as ``initial_lr``.
        name, warmup_steps, min_ratio, decay_fraction, warmup_fraction: as in :func:`lr_factor`.
    """

    def __init__(self, optimizer, name: str, warmup_steps: int, min_ratio: float = 0.1,
                 decay_fraction: float = 0.2, warmup_fraction: Optional[float] = None) -> None:
        SCHEDULES.get(name)  # fail early on an unknown name
        self.optimizer = optimizer
        self.name = name
        self.warmup_steps = warmup_steps
        self.min_ratio = min_ratio
        self.decay_fraction = decay_fraction
        self.warmup_fraction = warmup_fraction
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.last_factor = 1.0

    def set(self, step: int, progress: float) -> float:
        """Sets every group's learning rate for ``step`` and returns the first group's new rate."""
        self.last_factor = lr_factor(self.name, step, progress, self.warmup_steps, self.min_ratio, self.decay_fraction,
                                     self.warmup_fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * self.last_factor
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        """What is needed to check a resumed run uses the same schedule."""
        return {"name": self.name, "warmup_steps": self.warmup_steps, "min_ratio": self.min_ratio,
                "decay_fraction": self.decay_fraction, "warmup_fraction": self.warmup_fraction,
                "last_factor": self.last_factor}

    def load_state_dict(self, state: dict) -> None:
        """Restores the last factor (the schedule itself is recomputed from step and progress)."""
        self.last_factor = float(state.get("last_factor", 1.0))
