"""The chatbot entry points' training job: a model with its tokenizer, trained on a list of documents by the
shared :class:`~lmforge.training.trainer.Trainer` (AdamW, warmup + cosine schedule, gradient clipping); the
:class:`lmforge.compat.chatbot.TrainingPipeline` calls it."""

from __future__ import annotations

import tempfile
import warnings
from typing import Any, Optional, Sequence

import torch

from lmforge.config import RunConfig
from lmforge.errors import DataError
from lmforge.training.tasks import epochs_to_steps
from lmforge.training.trainer import Trainer
from lmforge.utils.device import resolve_device
from lmforge.workflows.lm_run import lm_task

__all__ = ["train_chatbot_model"]


def _precision(use_mixed_precision: bool, device: torch.device) -> str:
    if not use_mixed_precision:
        return "fp32"
    if device.type == "cuda":
        return "auto"  # bf16 where supported, else fp16 with loss scaling
    warnings.warn(f"mixed precision needs a CUDA GPU; training on {device.type} in float32 instead",
                  RuntimeWarning, stacklevel=4)
    return "fp32"


def train_chatbot_model(model: Any, tokenizer: Any, documents: Sequence[str], *, source: Any = None,
                        val_fraction: float = 0.1, device: str = "auto", seed: int = 1337, epochs: float = 1,
                        learning_rate: float = 1e-3, batch_size: int = 16, use_mixed_precision: bool = False,
                        block_size: Optional[int] = None, max_steps: Optional[int] = None,
                        time_budget: Optional[float] = None, progress: Any = None) -> dict:
    """Trains ``model`` for ``epochs`` passes over the documents' training split (or ``max_steps`` /
    ``time_budget``, whichever ends first), evaluating on the last ``val_fraction``; returns the trainer's summary.

    ``block_size`` defaults to the model's context, at most 128, and shorter when the text is short; mixed
    precision runs on a CUDA GPU only (elsewhere a warning and float32).
    """
    dev = resolve_device(device)
    with tempfile.TemporaryDirectory(prefix="lmforge-chatbot-") as cache:
        def block_for(n_train: int) -> int:
            block = block_size or min(getattr(model, "max_context", None) or 128, 128, n_train - 1)
            if block < 2:
                raise DataError(f"the training text of {source} is only {n_train} tokens; "
                                "add more text to the dataset folder")
            return block

        task, block = lm_task(documents, val_fraction, tokenizer, cache, block_for, batch_size, seed)
        steps = epochs_to_steps(epochs, task) if max_steps is None else min(max_steps, epochs_to_steps(epochs, task))
        train = dict(batch_size=batch_size, lr=learning_rate, epochs=epochs, max_steps=max_steps,
                     time_budget=time_budget, precision=_precision(use_mixed_precision, dev),
                     warmup_steps=min(100, steps // 10), sample_tokens=0, seed=seed,
                     eval_interval=max(1, min(250, steps)))
        config = RunConfig.parse({"model": model.config.to_dict(), "data": {"block_size": block}, "train": train},
                                 source="TrainingPipeline")
        return Trainer(config, model, task, tokenizers=tokenizer, progress=progress, device=dev).fit()
