"""Run folders: save and load a trained model with its config, tokenizer(s), trainer state and figures.

A run folder holds ``config.yaml`` (the full resolved :class:`~lmforge.config.RunConfig`), ``tokenizer.json``
(or ``src_tokenizer.json`` + ``tgt_tokenizer.json`` for a translation run with two vocabularies),
``model.safetensors`` (the last weights), ``best.safetensors`` (the weights with the best validation loss, when
it differs from the last), ``trainer_state.pt`` (optimizer, schedule, grad scaler, RNG states, step and data
position), ``metrics.jsonl``, ``summary.json`` and ``loss.png``.

Every file is written atomically (temporary file, then rename), so a kill during a save leaves each file whole.
``trainer_state.pt`` records the SHA-256 of the weights it belongs to; resuming from a pair that comes from two
different saves is refused with a clear message instead of silently mixing them. Weights load only through
safetensors; the trainer state loads with ``torch.load(..., weights_only=True)``.

Example:
    >>> run = load_run("runs/latest")  # doctest: +SKIP
    >>> run.model, run.tokenizer.vocab_size, run.summary["val_loss"]  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import pickle
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn

from lmforge.config import RunConfig
from lmforge.errors import CheckpointError, ConfigError, LMForgeError
from lmforge.utils.io import atomic_path, atomic_write_json

__all__ = [
    "Run", "save_run", "load_run", "save_trainer_state", "load_trainer_state", "file_sha256",
    "capture_rng_state", "restore_rng_state", "unwrap_model", "read_summary",
    "CONFIG_FILE", "WEIGHTS_FILE", "BEST_WEIGHTS_FILE", "STATE_FILE", "SUMMARY_FILE", "TOKENIZER_FILE",
]

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
BEST_WEIGHTS_FILE = "best.safetensors"
STATE_FILE = "trainer_state.pt"
SUMMARY_FILE = "summary.json"
TOKENIZER_FILE = "tokenizer.json"
SRC_TOKENIZER_FILE = "src_tokenizer.json"
TGT_TOKENIZER_FILE = "tgt_tokenizer.json"
STATE_FORMAT = 1


@dataclass
class Run:
    """A loaded run folder.

    Attributes:
        config: the run's :class:`RunConfig`.
        model: the model in eval mode on the requested device.
        tokenizer: the tokenizer (for translation runs, the target-side one).
        src_tokenizer: translation runs: the source-side tokenizer (the same object as ``tgt_tokenizer`` for a
            joint vocabulary); ``None`` for language models.
        tgt_tokenizer: translation runs: the target-side tokenizer; ``None`` for language models.
        path: the run folder.
        summary: the contents of ``summary.json``, or ``None`` when the run has none yet.
    """

    config: RunConfig
    model: nn.Module
    tokenizer: Any
    path: Path
    summary: Optional[dict] = None
    src_tokenizer: Any = None
    tgt_tokenizer: Any = None


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers, so saved names
    never carry ``module.`` or ``_orig_mod.`` prefixes."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- weights (through lmforge.models.io: safetensors, tied weights kept, family/vocab checks) ---

def _save_weights(model: nn.Module, path: Path) -> None:
    from lmforge.models.io import save_weights

    save_weights(unwrap_model(model), path)


def _load_weights(model: nn.Module, path: Path) -> None:
    from lmforge.models.io import load_weights

    load_weights(model, path)


def _save_tokenizer(tokenizer: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        tokenizer.save(tmp)


def _tokenizer_files(tokenizers: Any) -> dict[str, Any]:
    if tokenizers is None:
        return {}
    if isinstance(tokenizers, Mapping):
        return dict(tokenizers)
    return {TOKENIZER_FILE: tokenizers}


def save_run(run_dir: str | Path, config: RunConfig, model: nn.Module, tokenizers: Any = None, *,
             trainer_state: Optional[dict] = None, summary: Optional[dict] = None,
             weights_file: str = WEIGHTS_FILE) -> Path:
    """Writes a run folder (each file atomically).

    Args:
        run_dir: the folder (created if missing).
        config: the resolved run config, written to ``config.yaml``.
        model: the model (DDP / compiled wrappers are unwrapped).
        tokenizers: a tokenizer (written as ``tokenizer.json``) or a mapping file name -> tokenizer
            (e.g. ``{"src_tokenizer.json": s, "tgt_tokenizer.json": t}``); ``None`` writes none.
        trainer_state: when given, written to ``trainer_state.pt`` together with the SHA-256 of the weights.
        summary: when given, written to ``summary.json``.
        weights_file: the weights' file name (``best.safetensors`` for the best checkpoint).

    Returns:
        The run folder as a ``Path``.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config.save(run_dir / CONFIG_FILE)
    for name, tok in _tokenizer_files(tokenizers).items():
        _save_tokenizer(tok, run_dir / name)
    weights = run_dir / weights_file
    _save_weights(model, weights)
    if trainer_state is not None:
        trainer_state = {**trainer_state, "weights_sha256": file_sha256(weights)}
        save_trainer_state(run_dir / STATE_FILE, trainer_state)
    if summary is not None:
        atomic_write_json(run_dir / SUMMARY_FILE, summary)
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


def read_summary(run_dir: str | Path) -> Optional[dict]:
    """``summary.json`` of a run folder, or ``None`` when missing or unreadable."""
    path = Path(run_dir) / SUMMARY_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _load_config(run_dir: Path) -> RunConfig:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not an lmforge run folder (no {CONFIG_FILE}); pass a folder written by `lmforge train`")
    try:
        return RunConfig.from_yaml(path)
    except ConfigError as err:
        raise CheckpointError(f"{path} is not a valid run config ({err}); the run folder is damaged") from None


def _load_tokenizer_file(path: Path) -> Any:
    from lmforge.tokenizers import load_tokenizer

    return load_tokenizer(path)


def load_run(run_dir: str | Path, device: str | torch.device = "cpu", weights: str = "last") -> Run:
    """Loads a run folder written by :func:`save_run` (or ``lmforge train``).

    Args:
        run_dir: the run folder.
        device: where to put the model.
        weights: ``"last"`` (``model.safetensors``) or ``"best"`` (``best.safetensors`` when present, else the last).

    Returns:
        A :class:`Run` with the model in eval mode.

    Raises:
        CheckpointError: a missing folder or file, a damaged config, truncated or corrupted weights, or weights
            from another model family or vocabulary.
    """
    from lmforge.models import build_model

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder {run_dir} does not exist; pass a folder written by `lmforge train`")
    config = _load_config(run_dir)
    if weights not in ("last", "best"):
        raise CheckpointError(f"unknown weights {weights!r}; choose 'last' or 'best'")
    path = run_dir / WEIGHTS_FILE
    if weights == "best" and (run_dir / BEST_WEIGHTS_FILE).is_file():
        path = run_dir / BEST_WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir} has no {path.name}; the run did not save weights (train it again)")
    src_tok = tgt_tok = None
    if (run_dir / SRC_TOKENIZER_FILE).is_file() or (run_dir / TGT_TOKENIZER_FILE).is_file():
        src_tok = _load_tokenizer_file(run_dir / SRC_TOKENIZER_FILE)
        tgt_tok = _load_tokenizer_file(run_dir / TGT_TOKENIZER_FILE)
        tokenizer = tgt_tok
    elif (run_dir / TOKENIZER_FILE).is_file():
        tokenizer = _load_tokenizer_file(run_dir / TOKENIZER_FILE)
        if config.task == "translate":
            src_tok = tgt_tok = tokenizer
    else:
        tokenizer = None
    try:
        model = build_model(config.model)
    except LMForgeError:
        raise
    except Exception as err:  # a config that validates but cannot be built
        raise CheckpointError(f"{run_dir}: the model in {CONFIG_FILE} cannot be built ({err})") from None
    if config.quantization is not None:  # written by `lmforge quantize`: int8/int4 layers before the weights
        from lmforge.models.quantized import quantize_model

        quantize_model(model, config.quantization.bits, config.quantization.group_size)
    _load_weights(model, path)
    model.to(device)
    model.eval()
    return Run(config=config, model=model, tokenizer=tokenizer, path=run_dir, summary=read_summary(run_dir),
               src_tokenizer=src_tok, tgt_tokenizer=tgt_tok)
