"""Model weights as safetensors: nothing is ever unpickled.

Tied weights (one tensor under two names) are stored once and their other names are recorded in the metadata;
the model being loaded into ties them itself, so they stay tied. Loading checks the family, the vocabulary and
every tensor's shape first, and turns each mismatch into a :class:`~lmforge.errors.CheckpointError` that names
both sides and the fix. The functions work for any ``nn.Module`` with a ``config`` attribute, so a family added
through ``MODELS.add`` saves and loads without changes here. The folder around the weights is
:mod:`lmforge.models.run_folder`.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from lmforge.errors import CheckpointError
from lmforge.models.registry import build_model, upgrade_state_dict
from lmforge.utils.files import atomic_path
from safetensors.torch import save_file
from safetensors import SafetensorError
from safetensors.torch import load_file

__all__ = [
    "weights_dtype", "build_for_weights", "master_weights", "save_weights", "load_weights", "read_metadata", "count_parameters", "unwrap_model", "file_sha256", "config_dict"]

_FORMAT = "lmforge"


# ---------------------------------------------------------------------------------------------- helpers


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """The number of parameters, each shared (tied) tensor counted once; works on the meta device too."""
    return sum(p.numel() for p in unwrap_model(model).parameters() if p.requires_grad or not trainable_only)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under ``torch.compile`` (``_orig_mod``) or DistributedDataParallel (``module``), so saved
    names never carry ``_orig_mod.`` or ``module.`` prefixes."""
    while True:
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def config_dict(model: nn.Module) -> Optional[dict[str, Any]]:
    config = getattr(model, "config", None)
    if config is None:
        return None
    if hasattr(config, "to_dict"):
        return config.to_dict()
    if hasattr(config, "model_dump"):
        return config.model_dump(mode="json")
    return None


def _describe(family: Optional[str], cfg: Optional[dict[str, Any]]) -> str:
    """'an lstm model (vocab 65)' / 'a seq2seq_transformer model (vocab 8000 -> 8000)'."""
    fam = family or "unknown-family"
    article = "an" if fam[:1].lower() in "aeiou" or fam.lower().startswith(("lstm", "rnn")) else "a"  # "an LSTM"
    return f"{article} {fam} model ({_vocab_text(cfg or {})})"


def _vocab_text(cfg: dict[str, Any]) -> str:
    if "vocab_size" in cfg:
        return f"vocab {cfg['vocab_size']}"
    if "src_vocab_size" in cfg:
        return f"vocab {cfg['src_vocab_size']} -> {cfg.get('tgt_vocab_size')}"
    return "vocab unknown"


def _vocab_key(cfg: dict[str, Any]) -> Any:
    return cfg.get("vocab_size", (cfg.get("src_vocab_size"), cfg.get("tgt_vocab_size")))


def _as_bytes(t: torch.Tensor) -> memoryview:
    """The raw bytes of a contiguous CPU tensor of any dtype (bfloat16 included)."""
    flat = t.reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy())


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(_as_bytes(t))
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- weights


def save_weights(model: nn.Module, path: str | Path, extra_metadata: Optional[dict[str, str]] = None) -> None:
    """Writes the model's weights to a ``.safetensors`` file, atomically.

    Tensors that share memory (tied weights) are written once; the metadata records their other names, the
    model family, its config and a SHA-256 of the tensor data.

    Args:
        model: any ``nn.Module`` (a ``torch.compile``-d or DDP-wrapped one is unwrapped first).
        path: the file to write.
        extra_metadata: more string key/values for the safetensors header.
    """

    model = unwrap_model(model)
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[Any, ...], str] = {}
    for name, t in model.state_dict().items():
        if t.device.type == "meta":
            raise CheckpointError(f"cannot save {name}: the model is on the meta device; materialise it first (to_empty)")
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = t.detach().to("cpu").contiguous()
    cfg = config_dict(model)
    quant = getattr(model, "quantization", None)  # models.quantized: the loaders rebuild int8/int4 layers first
    metadata = {
        "format": _FORMAT,
        "family": str((cfg or {}).get("family") or type(model).__name__),
        "config": json.dumps(cfg) if cfg is not None else "null",
        "aliases": json.dumps(aliases),
        "sha256": _checksum(tensors),
        **({"quantization": json.dumps(quant)} if quant else {}),
        **(extra_metadata or {}),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def read_metadata(path: str | Path) -> dict[str, str]:
    """The safetensors header metadata of ``path``, after checking that the file is complete.

    Raises:
        CheckpointError: the file is missing, not safetensors, truncated or has a corrupted header.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} not found; check the path, or train/save a model there first")
    size = path.stat().st_size
    fix = "re-save the model, or restore the file from a backup"
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is truncated ({size} bytes, not even a safetensors header); {fix}")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise CheckpointError(
                f"{path} is truncated or not a safetensors file (header claims {n:,} bytes, file has {size:,}); {fix}"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a mapping")
    except (UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{path} has a corrupted safetensors header ({err}); {fix}") from None
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (KeyError, TypeError, ValueError, IndexError):
            raise CheckpointError(f"{path} has a corrupted safetensors header (entry {name!r}); {fix}") from None
    if 8 + n + end > size:
        raise CheckpointError(
            f"{path} is truncated: its tensors need {8 + n + end:,} bytes but the file has {size:,}; {fix}"
        )
    meta = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}


_HALF = {"BF16": torch.bfloat16, "F16": torch.float16}


def weights_dtype(path: str | Path) -> Optional[torch.dtype]:
    """bfloat16 or float16 when every floating tensor of a safetensors file has that dtype, else None."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n).decode("utf-8"))
    codes = {v.get("dtype") for k, v in header.items() if k != "__metadata__" and str(v.get("dtype", "")).startswith(("F", "BF"))}
    return _HALF.get(codes.pop()) if len(codes) == 1 else None


def build_for_weights(config: Any, path: str | Path) -> nn.Module:
    """The model of ``config``, built directly in the dtype of a half-precision weights file (an imported bf16 or
    fp16 checkpoint), so loading it never makes a float32 copy; float32 otherwise. The file is checked first
    (a truncated or corrupted one is a one-line :class:`CheckpointError`)."""
    read_metadata(path)
    dtype = weights_dtype(path)
    if dtype is None:
        return build_model(config)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return build_model(config)
    finally:
        torch.set_default_dtype(previous)


def master_weights(model: nn.Module, frozen: bool = False) -> nn.Module:
    """``model`` ready to train: a bf16/fp16 model (an imported checkpoint) becomes float32, since optimiser
    updates below half precision's resolution would be lost; ``frozen`` (LoRA, whose adapters are float32
    already) keeps it as it is."""
    if not frozen and any(p.dtype in (torch.bfloat16, torch.float16) for p in model.parameters()):
        return model.float()
    return model


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> nn.Module:
    """Loads a ``.safetensors`` file written by :func:`save_weights` into ``model`` (in place) and returns it.

    Args:
        model: the model to fill; its parameters keep their device and dtype, and tied weights stay tied.
        path: the weights file.
        strict: every tensor of the model must be in the file and vice versa.

    Raises:
        CheckpointError: the file is missing, truncated or corrupted, holds another family or vocabulary, or
            its tensors do not fit the model; the message names both sides and the fix.
    """

    path = Path(path)
    meta = read_metadata(path)
    target = unwrap_model(model)
    want_cfg = config_dict(target)
    differs = _check_compatible(path, meta, want_cfg)
    hint = f"it was saved with {differs}; " if differs else ""

    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path} could not be read ({err}); re-save the model or restore the file") from None
    if "sha256" in meta and _checksum(tensors) != meta["sha256"]:
        raise CheckpointError(f"{path} is corrupted (its checksum does not match its data); re-save the model or restore the file")
    aliases = json.loads(meta.get("aliases", "{}") or "{}")
    for alias, source in aliases.items():
        if source in tensors:
            tensors[alias] = tensors[source]

    tensors = upgrade_state_dict(target, tensors)
    expected = target.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    wrong = [
        f"{k} (file {tuple(tensors[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected
        if k in tensors and tensors[k].shape != expected[k].shape
    ]
    if wrong:
        raise CheckpointError(
            f"{path} does not fit this model: {len(wrong)} tensor(s) differ in shape, e.g. {'; '.join(wrong[:3])}; "
            f"{hint}load it with the config it was saved with (config.json beside it)"
        )
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}")
        raise CheckpointError(
            f"{path} does not fit this model ({'; '.join(parts)}); {hint}load it with the config it was saved with"
        )
    target.load_state_dict(tensors, strict=strict)
    return model


def _check_compatible(path: Path, meta: dict[str, str], want_cfg: Optional[dict[str, Any]]) -> str:
    """Raises on another family or vocabulary; returns the other config differences as text ('' if none)."""
    if meta.get("format") != _FORMAT or want_cfg is None:
        return ""  # a plain safetensors file, or a model without a config: the shape checks still apply
    try:
        have_cfg = json.loads(meta.get("config", "null"))
    except ValueError:
        raise CheckpointError(f"{path} has corrupted metadata (config); re-save the model") from None
    have_family = meta.get("family")
    want_family = want_cfg.get("family")
    if have_cfg is None or not isinstance(have_cfg, dict):
        return ""
    if have_family != want_family or _vocab_key(have_cfg) != _vocab_key(want_cfg):
        raise CheckpointError(
            f"{path.name} holds {_describe(have_family, have_cfg)} but the config asks for "
            f"{_describe(want_family, want_cfg)}; load it with its own config (config.json beside it, or "
            f"`load_model` on its folder), or point to a checkpoint of the model you configured"
        )
    diffs = [
        f"{k}={have_cfg[k]!r} (config: {want_cfg[k]!r})"
        for k in sorted(set(have_cfg) & set(want_cfg))
        if have_cfg[k] != want_cfg[k]
    ]
    return ", ".join(diffs)


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
