"""What the trainer trains on: a :class:`Task` supplies batches, the loss on a batch and evaluation figures.

The same :class:`~lmforge.training.trainer.Trainer` trains language models (:class:`LMTask`, here) and
translation models (``lmforge.training.tasks_translate.TranslationTask``).

Batches and ranks: for every optimiser step a task draws the *global* batch (``train.batch_size`` rows) with its
own seeded window order, identically on every rank, and hands each rank its own rows, split into ``grad_accum``
micro-batches. So the union over ranks and micro-batches is the same batch a single process would draw, and a
data-parallel run follows the single-process run (to float tolerance).
"""

from __future__ import annotations

import math
from typing import Any, Optional, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from lmforge.data.lm_dataset import _check, gather_windows, WindowSampler
from lmforge.errors import ConfigError
from lmforge.evaluation.perplexity import evaluate_lm

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
    """Next-token prediction on a token array (a memory-mapped shard store or any 1-D array).

    Training windows come from a :class:`~lmforge.data.lm_dataset.WindowSampler`: non-overlapping windows in a
    seeded order, so the rows that different ranks take from the global batch are disjoint windows, and the
    sampler's ``(epoch, pos)`` restores the data position on resume. Every evaluation scores at most
    ``eval_tokens`` validation tokens in windows spread evenly over the split (the whole split when smaller).

    Args:
        train_tokens: 1-D training ids (``PreparedData.train``).
        val_tokens: 1-D validation ids (``PreparedData.val``).
        block_size: window length T.
        batch_size: global batch size in windows.
        seed: seeds the window order (separately from the model's initialisation).
        val_meta: ``PreparedData.meta["val"]`` (chars and bytes of the validation text) for bits per character.
        eval_batch_size: windows per evaluation forward pass (default ``batch_size``).
        label_smoothing: cross-entropy label smoothing (arXiv:1512.00567); 0 uses the model's own loss.
        eval_tokens: the most validation tokens one evaluation scores (``None``: all of them).
        eval_share: an evaluation also scores at most this share of the tokens trained so far (at least one
            evaluation batch); ``None`` or 0: no such cap.
    """

    def __init__(self, train_tokens: np.ndarray, val_tokens: np.ndarray, block_size: int, batch_size: int,
                 seed: int = 1337, val_meta: Optional[dict] = None, eval_batch_size: Optional[int] = None,
                 label_smoothing: float = 0.0, eval_tokens: Optional[int] = None,
                 eval_share: Optional[float] = None) -> None:
        _check(train_tokens, block_size, 1, block_size + 1, "training split")
        _check(val_tokens, block_size, 1, 2, "validation split")
        self.train_tokens = train_tokens
        self.val_tokens = val_tokens
        self.block_size = block_size
        self.batch_size = batch_size
        self.val_meta = val_meta
        self.eval_batch_size = eval_batch_size or batch_size
        self.label_smoothing = label_smoothing
        self.eval_tokens = eval_tokens
        self.eval_share = eval_share
        #: called as ``eval_progress(windows_done, windows_total)`` during the final evaluation
        self.eval_progress: Optional[Any] = None
        self.sampler = WindowSampler(len(train_tokens), block_size, seed)
        self.device = torch.device("cpu")
        self.rank, self.world_size, self.grad_accum = 0, 1, 1
        self.rows = batch_size
        self.steps_drawn = 0

    def setup(self, *, device: torch.device, rank: int, world_size: int, grad_accum: int) -> None:
        self.device = torch.device(device)
        self.rank, self.world_size, self.grad_accum = rank, world_size, grad_accum
        self.rows = micro_batch_rows(self.batch_size, world_size, grad_accum)

    def next_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        starts = self.sampler.next_starts(self.batch_size)  # (B,) the global batch, the same on every rank
        self.steps_drawn += 1
        out = []
        non_blocking = self.device.type == "cuda"
        for m in range(self.grad_accum):
            lo = (m * self.world_size + self.rank) * self.rows  # this rank reads only its own windows
            w = torch.from_numpy(gather_windows(self.train_tokens, starts[lo:lo + self.rows], self.block_size + 1))
            xb, yb = w[:, :-1].contiguous(), w[:, 1:].contiguous()  # (b, T)
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
        """Validation figures on at most ``eval_tokens`` tokens and ``eval_share`` of the tokens trained so far
        (periodic evaluations: also at most ``max_batches`` batches)."""
        limit = self.eval_tokens
        if self.eval_share:
            trained = self.steps_drawn * self.batch_size * self.block_size
            share = max(self.eval_batch_size * self.block_size, int(trained * self.eval_share))
            limit = share if limit is None else min(limit, share)
        if max_batches is not None:
            quick = max_batches * self.eval_batch_size * self.block_size
            limit = quick if limit is None else min(limit, quick)
        return evaluate_lm(model, self.val_tokens, self.val_meta, self.block_size, self.eval_batch_size,
                           device=self.device, autocast=autocast, max_tokens=limit,
                           progress=self.eval_progress if max_batches is None else None)

    def steps_per_epoch(self) -> float:
        return max(1.0, self.sampler.windows_per_epoch / self.batch_size)

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict(), "steps_drawn": self.steps_drawn}

    def load_state_dict(self, state: dict) -> None:
        self.steps_drawn = int(state.get("steps_drawn", 0))
        if "sampler" in state:
            self.sampler.load_state_dict(state["sampler"])
        else:  # a checkpoint from before the window sampler: continue after as many windows as it had drawn
            per_epoch = max(1, self.sampler.windows_per_epoch // self.batch_size)
            self.sampler.load_state_dict({"epoch": self.steps_drawn // per_epoch,
                                          "pos": self.steps_drawn % per_epoch * self.batch_size})


def epochs_to_steps(epochs: float, task: Task) -> int:
    """Optimiser steps for ``epochs`` passes over the training data."""
    return max(1, math.ceil(epochs * task.steps_per_epoch()))
