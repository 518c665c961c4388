"""The run-folder format, in one place: what a saved model folder holds and the one loader, :func:`load_run`.

Two kinds of folder, both loaded by :func:`load_run`:

* a **run folder** (``lmforge train``, ``lmforge finetune``, :func:`save_run`)::

      config.yaml          the full resolved RunConfig (task, model, tokenizer, data, train)
      model.safetensors    the last weights; best.safetensors: the best validation loss, when it differs
      tokenizer.json       or src_tokenizer.json + tgt_tokenizer.json (a translation run with two vocabularies)
      summary.json         the figures (``chat_template`` for fine-tuned chat models)
      trainer_state.pt     optimizer, schedule and RNG states (written and read by lmforge.training.checkpoint)
      metrics.jsonl, loss.png

* a **model folder** (:func:`save_model`; what the chatbot entry points write)::

      config.json          the model config (``{"family": ..., ...}``)
      model.safetensors    the weights; their metadata records the family, the config and a checksum
      tokenizer.json       when a tokenizer was attached

Every file is written atomically (temporary file, then rename). Weights go through safetensors
(:mod:`lmforge.models.weights`); nothing is ever unpickled here.

Example:
    >>> run = load_run("runs/latest")  # doctest: +SKIP
    >>> run.model, run.tokenizer.vocab_size, run.summary["val_loss"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn

from lmforge.config import RunConfig
from lmforge.config.base import read_config_file
from lmforge.config.model import ModelConfig
from lmforge.errors import CheckpointError, ConfigError, LMForgeError
from lmforge.models.lora import load_weights_with_adapters, save_weights_with_adapters
from lmforge.models.quantized import quantize_model
from lmforge.models.registry import MODELS, _resolve, build_model
from lmforge.models.weights import (
    build_for_weights,
    config_dict,
    count_parameters,
    file_sha256,
    load_weights,
    read_metadata,
    save_weights,
    unwrap_model,
)
from lmforge.tokenizers import load_tokenizer
from lmforge.utils.device import resolve_device
from lmforge.utils.files import atomic_path, atomic_write_json

__all__ = [
    "Run", "load_run", "save_run", "read_summary", "save_model", "load_model", "config_class_for",
    "save_weights", "load_weights", "read_metadata", "count_parameters", "unwrap_model", "file_sha256",
    "CONFIG_FILE", "RUN_CONFIG_FILE", "WEIGHTS_FILE", "BEST_WEIGHTS_FILE", "TOKENIZER_FILE", "SRC_TOKENIZER_FILE",
    "TGT_TOKENIZER_FILE", "SUMMARY_FILE", "STATE_FILE",
]

CONFIG_FILE = "config.json"  # a model folder's model config
RUN_CONFIG_FILE = "config.yaml"  # a run folder's RunConfig
WEIGHTS_FILE = "model.safetensors"
BEST_WEIGHTS_FILE = "best.safetensors"
TOKENIZER_FILE = "tokenizer.json"
SRC_TOKENIZER_FILE = "src_tokenizer.json"
TGT_TOKENIZER_FILE = "tgt_tokenizer.json"
SUMMARY_FILE = "summary.json"
STATE_FILE = "trainer_state.pt"  # written by lmforge.training.checkpoint


@dataclass
class Run:
    """A loaded run folder.

    Attributes:
        config: the run's :class:`RunConfig` (for a model folder, one built around its model config).
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



def save_model(model: nn.Module, directory: str | Path, tokenizer: Any = None) -> Path:
    """Writes ``config.json``, ``model.safetensors`` and (when given) ``tokenizer.json`` into ``directory``.

    Each file is written atomically. An existing ``tokenizer.json`` is left alone when ``tokenizer`` is None.

    Args:
        model: a model built by :func:`~lmforge.models.build_model` (anything with a pydantic ``config``).
        directory: the folder (created if needed).
        tokenizer: an lmforge tokenizer with ``save(path)``; defaults to ``model.tokenizer`` when set.

    Returns:
        The folder's path.
    """
    directory = Path(directory)
    inner = unwrap_model(model)
    cfg = config_dict(inner)
    if cfg is None:
        raise ConfigError(f"{type(inner).__name__} has no pydantic `config` attribute; save_model needs one (use save_weights)")
    if tokenizer is None:
        tokenizer = getattr(model, "tokenizer", None) or getattr(inner, "tokenizer", None)
    vocab = cfg.get("vocab_size")
    tok_vocab = getattr(tokenizer, "vocab_size", None)
    if tokenizer is not None and isinstance(vocab, int) and isinstance(tok_vocab, int) and tok_vocab > vocab:
        raise ConfigError(
            f"the tokenizer has {tok_vocab} tokens but the model's vocab_size is {vocab}; "
            f"build the model with vocab_size={tok_vocab}"
        )
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_json(directory / CONFIG_FILE, cfg)
    save_weights(inner, directory / WEIGHTS_FILE)
    if tokenizer is not None:
        tokenizer.save(directory / TOKENIZER_FILE)
    return directory


def _read_model_config(directory: Path) -> Any:
    """The model config in ``directory``: config.json, or config.yaml (a bare model config or a RunConfig)."""
    for name in (CONFIG_FILE, "config.yaml", "config.yml"):
        if (directory / name).is_file():
            data = read_config_file(directory / name)
            break
    else:
        raise CheckpointError(f"{directory} has no {CONFIG_FILE}; point to a folder written by save_model or a run folder")
    if "family" not in data and isinstance(data.get("model"), dict):  # a run folder's RunConfig
        data = {"family": "transformer", **data["model"]}
    return _parse_config(data, source=str(directory / name))


def config_class_for(family: str) -> type:
    """The config class of a registered family: ``config_class`` on its module class, else the built-in one.

    Raises:
        ConfigError: the family is not registered (the message lists the registered ones).
        CheckpointError: the family's module declares no ``config_class`` and is not built in.
    """
    config_class = getattr(_resolve(MODELS.get(family)), "config_class", None)
    if config_class is not None:
        return config_class
    for cls in typing.get_args(typing.get_args(ModelConfig)[0]):
        if cls.model_fields["family"].default == family:
            return cls
    raise CheckpointError(f"model family {family!r} has no config class; set `config_class` on its module class")


def _parse_config(data: dict[str, Any], source: str) -> Any:
    """Validates a model config dict with its family's config class."""
    family = data.get("family")
    if not isinstance(family, str):
        raise CheckpointError(f"{source} has no 'family' key; it is not an lmforge model config")
    return config_class_for(family).parse(data, source=source)


def _rebuild_quantized(model: nn.Module, path: Path, recorded: Any = None) -> None:
    """Replaces the float layers by int8/int4 ones (models.quantized) when the weights file says they are
    quantized (its metadata, written by save_weights) or the run config records it (``quantization``)."""
    raw = read_metadata(path).get("quantization")
    spec = json.loads(raw) if raw else (recorded.to_dict() if recorded is not None else None)
    if spec:
        quantize_model(model, int(spec["bits"]), int(spec.get("group_size", 32)))


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Loads a folder written by :func:`save_model` (or a run folder); never unpickles anything.

    Args:
        directory: the model folder.
        device: where to put the model (``"auto"``: CUDA when available, else CPU).

    Returns:
        The model in eval mode, with ``.tokenizer`` set to the saved tokenizer, or ``None`` when there is none.

    Raises:
        CheckpointError: a missing folder or file, or weights that do not match the config.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"model folder {directory} not found; check the path, or save/train a model there first")
    config = _read_model_config(directory)
    model = build_for_weights(config, directory / WEIGHTS_FILE)  # a bf16/fp16 checkpoint stays in its dtype
    _rebuild_quantized(model, directory / WEIGHTS_FILE)
    load_weights_with_adapters(model, directory / WEIGHTS_FILE)  # LoRA adapters merged
    model.to(resolve_device(device))
    model.eval()
    tokenizer = None
    if (directory / TOKENIZER_FILE).is_file():
        tokenizer = load_tokenizer(directory / TOKENIZER_FILE)
    model.tokenizer = tokenizer
    return model


def _tokenizer_files(tokenizers: Any) -> dict[str, Any]:
    if tokenizers is None:
        return {}
    if isinstance(tokenizers, Mapping):
        return dict(tokenizers)
    return {TOKENIZER_FILE: tokenizers}


def save_run(run_dir: str | Path, config: RunConfig, model: nn.Module, tokenizers: Any = None, *,
             summary: Optional[dict] = None, weights_file: str = WEIGHTS_FILE) -> Path:
    """Writes a run folder's config, tokenizer(s), weights and summary (each file atomically).

    Args:
        run_dir: the folder (created if missing).
        config: the resolved run config, written to ``config.yaml``.
        model: the model (DDP / compiled wrappers are unwrapped).
        tokenizers: a tokenizer (written as ``tokenizer.json``) or a mapping file name -> tokenizer
            (e.g. ``{"src_tokenizer.json": s, "tgt_tokenizer.json": t}``); ``None`` writes none.
        summary: when given, written to ``summary.json``.
        weights_file: the weights' file name (``best.safetensors`` for the best checkpoint).

    Returns:
        The run folder as a ``Path``.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config.save(run_dir / RUN_CONFIG_FILE)
    for name, tok in _tokenizer_files(tokenizers).items():
        with atomic_path(run_dir / name) as tmp:
            tok.save(tmp)
    save_weights_with_adapters(unwrap_model(model), run_dir / weights_file)  # LoRA: base + adapter.safetensors
    if summary is not None:
        atomic_write_json(run_dir / SUMMARY_FILE, summary)
    return run_dir


def read_summary(run_dir: str | Path) -> Optional[dict]:
    """``summary.json`` of a run folder, or ``None`` when missing or unreadable."""
    try:
        return json.loads((Path(run_dir) / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _load_config(run_dir: Path) -> RunConfig:
    path = run_dir / RUN_CONFIG_FILE
    if not path.is_file():
        if (run_dir / CONFIG_FILE).is_file():  # a model folder: its model config, as a run of its task
            model = _read_model_config(run_dir)
            task = "translate" if model.family.startswith("seq2seq") else "lm"
            return RunConfig(task=task, model=model, out_dir=str(run_dir))
        raise CheckpointError(f"{run_dir} is not an lmforge run folder (no {RUN_CONFIG_FILE}); pass a folder written by `lmforge train`")
    try:
        return RunConfig.from_yaml(path)
    except ConfigError as err:
        raise CheckpointError(f"{path} is not a valid run config ({err}); the run folder is damaged") from None


def _tokenizers(run_dir: Path, task: str) -> tuple[Any, Any, Any]:
    """(tokenizer, src_tokenizer, tgt_tokenizer) of a run folder."""
    if (run_dir / SRC_TOKENIZER_FILE).is_file() or (run_dir / TGT_TOKENIZER_FILE).is_file():
        src_tok = load_tokenizer(run_dir / SRC_TOKENIZER_FILE)
        tgt_tok = load_tokenizer(run_dir / TGT_TOKENIZER_FILE)
        return tgt_tok, src_tok, tgt_tok
    if (run_dir / TOKENIZER_FILE).is_file():
        tokenizer = load_tokenizer(run_dir / TOKENIZER_FILE)
        return (tokenizer, tokenizer, tokenizer) if task == "translate" else (tokenizer, None, None)
    return None, None, None


def load_run(run_dir: str | Path, device: str | torch.device = "cpu", weights: str = "last") -> Run:
    """Loads a run folder (``config.yaml``) or a model folder (``config.json``), as described above.

    Args:
        run_dir: the folder.
        device: where to put the model (``"auto"``: see :func:`lmforge.utils.device.resolve_device`).
        weights: ``"last"`` (``model.safetensors``) or ``"best"`` (``best.safetensors`` when present, else the last).

    Returns:
        A :class:`Run` with the model in eval mode.

    Raises:
        CheckpointError: a missing folder or file, a damaged config, truncated or corrupted weights, or weights
            from another model family or vocabulary.
    """
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
    tokenizer, src_tok, tgt_tok = _tokenizers(run_dir, config.task)
    try:
        model = build_for_weights(config.model, path)  # a bf16/fp16 checkpoint stays in its dtype
    except LMForgeError:
        raise
    except Exception as err:  # a config that validates but cannot be built
        raise CheckpointError(f"{run_dir}: the model in {RUN_CONFIG_FILE} cannot be built ({err})") from None
    _rebuild_quantized(model, path, config.quantization)
    load_weights_with_adapters(model, path)  # LoRA adapters merged
    model.to(resolve_device(device))
    model.eval()
    return Run(config=config, model=model, tokenizer=tokenizer, path=run_dir, summary=read_summary(run_dir),
               src_tokenizer=src_tok, tgt_tokenizer=tgt_tok)
