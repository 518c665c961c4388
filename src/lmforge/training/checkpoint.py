"""Checkpoints: a run folder (:mod:`lmforge.models.run_folder`, the one format and loader) plus the trainer's state.

``trainer_state.pt`` holds the optimizer, schedule, grad scaler, RNG states, step and data position; it records
the SHA-256 of the weights it belongs to, so resuming from a pair that comes from two different saves is refused
with a clear message instead of silently mixing them. It loads with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file
from torch import nn

from lmforge.config import RunConfig
from lmforge.errors import CheckpointError
from lmforge.models import run_folder
from lmforge.models.registry import upgrade_state_dict
from lmforge.models.run_folder import (
    BEST_WEIGHTS_FILE,
    RUN_CONFIG_FILE,
    SRC_TOKENIZER_FILE,
    STATE_FILE,
    SUMMARY_FILE,
    TGT_TOKENIZER_FILE,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    Run,
    file_sha256,
    load_run,
    read_summary,
    unwrap_model,
)
from lmforge.utils.files import atomic_path

__all__ = [
    "optimizer_mismatch_fix",
    "Run", "save_run", "load_run", "save_trainer_state", "load_trainer_state", "file_sha256",
    "capture_rng_state", "restore_rng_state", "unwrap_model", "read_summary",
    "CONFIG_FILE", "WEIGHTS_FILE", "BEST_WEIGHTS_FILE", "STATE_FILE", "SUMMARY_FILE", "TOKENIZER_FILE",
    "SRC_TOKENIZER_FILE", "TGT_TOKENIZER_FILE",
]

CONFIG_FILE = RUN_CONFIG_FILE
STATE_FORMAT = 1


def save_run(run_dir: str | Path, config: RunConfig, model: nn.Module, tokenizers: Any = None, *,
             trainer_state: Optional[dict] = None, summary: Optional[dict] = None,
             weights_file: str = WEIGHTS_FILE) -> Path:
    """:func:`lmforge.models.run_folder.save_run`, then (when given) ``trainer_state`` to ``trainer_state.pt``
    together with the SHA-256 of the weights just written."""
    run_dir = run_folder.save_run(run_dir, config, model, tokenizers, summary=summary, weights_file=weights_file)
    if trainer_state is not None:
        trainer_state = {**trainer_state, "weights_sha256": file_sha256(run_dir / weights_file)}
        save_trainer_state(run_dir / STATE_FILE, trainer_state)
    return run_dir


def save_trainer_state(path: str | Path, state: dict) -> None:
    """``torch.save`` of ``state`` (tensors, numbers, strings, lists, dicts) to ``path``, atomically."""
    with atomic_path(path) as tmp:
        torch.save({"format": STATE_FORMAT, **state}, tmp)


def load_trainer_state(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Loads a ``trainer_state.pt`` with ``weights_only=True``; a missing, truncated or foreign file raises
    :class:`CheckpointError` naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no trainer state at {path}; the run cannot be resumed (train it again without --resume)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError, OSError) as err:
        first = (str(err).splitlines() or [type(err).__name__])[0][:160]
        raise CheckpointError(
            f"{path} is truncated or corrupted ({first}); delete it and train again, or resume from a good copy"
        ) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or "step" not in state:
        raise CheckpointError(f"{path} is not an lmforge trainer state (format {STATE_FORMAT}); it cannot be resumed")
    return state


def capture_rng_state() -> dict:
    """The Python, torch CPU and CUDA random states (for exact resumption)."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Restores what :func:`capture_rng_state` returned."""
    if "python" in state:
        py = state["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def optimizer_mismatch_fix(model: nn.Module, weights: str | Path) -> str:
    """What to do when a run's saved optimizer state does not fit ``model``: for weights an older lmforge saved
    (their names are renamed on load, as the seq2seq Transformer's separate Q/K/V became one fused matrix), the
    optimizer's per-parameter state no longer lines up, so the fix is a new optimizer from those weights."""
    tensors = load_file(str(weights))
    if set(upgrade_state_dict(model, dict(tensors))) != set(tensors):
        return (f"its weights were saved by an older lmforge (its layers have been renamed or fused since), so "
                f"its optimizer state cannot be carried over; continue training its weights with a new optimizer: "
                f"`lmforge train --init-from {Path(weights).parent}` (generate, eval and translate load it as it is)")
    return "resume with the run's own config.yaml"
