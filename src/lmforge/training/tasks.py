"""What the trainer trains on: a :class:`Task` supplies batches, the loss on a batch and evaluation figures.

The same :class:`~lmforge.training.trainer.Trainer` trains language models (:class:`LMTask`, here) and
translation models (``lmforge.training.tasks_translate.TranslationTask``).

Batches and ranks: for every optimiser step a task draws the *global* batch (``train.batch_size`` rows) with its
own seeded generator, identically on every rank, and hands each rank its own rows, split into ``grad_accum``
micro-batches. So the union over ranks and micro-batches is the same batch a single process would draw, and a
data-parallel run follows the single-process run (to float tolerance).
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Optional, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.data import sample_batch
from lmforge.data.lm_dataset import _check
from lmforge.errors import ConfigError
from lmforge.evaluation.perplexity import evaluate_lm, lm_figures, score_batches

__all__ = ["Task", "LMTask", "micro_batch_rows"]


@runtime_checkable
class Task(Protocol):
    """The contract between a kind of training and the trainer."""

    def setup(self, *, device: torch.device, rank: int, world_size: int, grad_accum: int) -> None:
        """Called once by the trainer before the first batch."""
        ...

    def next_batches(self) -> list[Any]:
        """This rank's micro-batches (``grad_accum`` of them, already on the device) for the next step."""
        ...

    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        """The mean loss of ``batch`` (a scalar that is backpropagated)."""
        ...

    def batch_tokens(self, batch: Any) -> int:
        """How many target tokens ``batch`` trains on (for tokens per second)."""
        ...

    def evaluate(self, model: torch.nn.Module, max_batches: Optional[int] = None) -> dict[str, Any]:
        """Validation figures; must include ``loss``. ``max_batches=None`` means the whole validation split
        (the final figures); a number means a quick, fixed subset (periodic evaluation)."""
        ...

    def steps_per_epoch(self) -> float:
        """Optimiser steps (at the global batch size) in one pass over the training data."""
        ...

    def state_dict(self) -> dict:
        """The data position (generator states and counters), for exact resumption."""
        ...

    def load_state_dict(self, state: dict) -> None:
        """Restores :meth:`state_dict`."""
        ...


def micro_batch_rows(batch_size: int, world_size: int, grad_accum: int) -> int:
    """Rows per micro-batch on one rank; the global batch must divide evenly."""
    parts = world_size * grad_accum
    if batch_size % parts:
        raise ConfigError(
            f"train.batch_size ({batch_size}) must be divisible by ranks x train.grad_accum ({world_size} x {grad_accum}); "
            f"use e.g. train.batch_size={max(parts, batch_size // parts * parts)}"
        )
    return batch_size // parts


class LMTask:
    """Next-token prediction on a token array.

    Args:
        train_tokens: 1-D training ids (``LMData.train``).
        val_tokens: 1-D validation ids (``LMData.val``).
        block_size: window length T.
        batch_size: global batch size in windows.
        seed: seeds the window sampler (separately from the model's initialisation).
        val_meta: ``LMData.meta["val"]`` (chars and bytes of the validation text) for bits per character.
        eval_batch_size: windows per evaluation forward pass (default ``batch_size``).
        label_smoothing: cross-entropy label smoothing (arXiv:1512.00567); 0 uses the model's own loss.
    """

    def __init__(self, train_tokens: np.ndarray, val_tokens: np.ndarray, block_size: int, batch_size: int,
                 seed: int = 1337, val_meta: Optional[dict] = None, eval_batch_size: Optional[int] = None,
                 label_smoothing: float = 0.0) -> None:

        _check(train_tokens, block_size, 1, block_size + 1, "training split")
        _check(val_tokens, block_size, 1, 2, "validation split")
        self.train_tokens = train_tokens
        self.val_tokens = val_tokens
        self.block_size = block_size
        self.batch_size = batch_size
        self.val_meta = val_meta
        self.eval_batch_size = eval_batch_size or batch_size
        self.label_smoothing = label_smoothing
        self.generator = torch.Generator().manual_seed(seed)
        self.device = torch.device("cpu")
        self.rank, self.world_size, self.grad_accum = 0, 1, 1
        self.rows = batch_size
        self.steps_drawn = 0

    def setup(self, *, device: torch.device, rank: int, world_size: int, grad_accum: int) -> None:
        self.device = torch.device(device)
        self.rank, self.world_size, self.grad_accum = rank, world_size, grad_accum
        self.rows = micro_batch_rows(self.batch_size, world_size, grad_accum)

    def next_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:

        x, y = sample_batch(self.train_tokens, self.block_size, self.batch_size, self.generator)  # (B, T) global
        self.steps_drawn += 1
        out = []
        non_blocking = self.device.type == "cuda"
        for m in range(self.grad_accum):
            lo = (m * self.world_size + self.rank) * self.rows
            xb, yb = x[lo:lo + self.rows], y[lo:lo + self.rows]  # (b, T)
            if non_blocking:
                xb, yb = xb.pin_memory(), yb.pin_memory()
            out.append((xb.to(self.device, non_blocking=non_blocking), yb.to(self.device, non_blocking=non_blocking)))
        return out

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        if self.label_smoothing == 0.0:
            _, loss = model(x, y)
            return loss
        logits, _ = model(x)
        return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1),  # (B*T, V)
                               ignore_index=-100, label_smoothing=self.label_smoothing)

    def batch_tokens(self, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
        return int(batch[1].numel())

    def evaluate(self, model: torch.nn.Module, max_batches: Optional[int] = None,
                 autocast: Any = None) -> dict[str, Any]:

        if max_batches is None:
            return evaluate_lm(model, self.val_tokens, self.val_meta, self.block_size, self.eval_batch_size,
                               device=self.device, autocast=autocast)
        return self._quick_eval(model, max_batches, autocast, lm_figures)

    def _quick_eval(self, model: torch.nn.Module, max_batches: int, autocast: Any, lm_figures: Any) -> dict[str, Any]:
        # A fixed set of windows spread evenly over the validation split, so successive evaluations compare.
        n = len(self.val_tokens) - 1
        T = min(self.block_size, n)
        windows = min(max_batches * self.eval_batch_size, max(1, n // T))
        starts = np.linspace(0, n - T, windows).astype(np.int64)

        def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for b in range(0, windows, self.eval_batch_size):
                index = starts[b:b + self.eval_batch_size, None] + np.arange(T + 1)[None, :]  # (B, T+1)
                w = torch.from_numpy(np.asarray(self.val_tokens[index], dtype=np.int64))
                yield w[:, :-1], w[:, 1:]  # (B, T)

        total, count = score_batches(model, batches(), self.device, autocast)
        return lm_figures(total, count, n, self.val_meta)

    def steps_per_epoch(self) -> float:
        return max(1.0, (len(self.train_tokens) - 1) / (self.batch_size * self.block_size))

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "steps_drawn": self.steps_drawn}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.steps_drawn = int(state.get("steps_drawn", 0))


def epochs_to_steps(epochs: float, task: Task) -> int:
    """Optimiser steps for ``epochs`` passes over the training data."""
    return max(1, math.ceil(epochs * task.steps_per_epoch()))
