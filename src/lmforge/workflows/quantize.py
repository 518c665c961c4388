"""``quantize_run``: a run folder's weights as int8/int4, written as a new run folder that loads like any other.

The new folder holds the same ``config.yaml`` with a ``quantization`` section (bits, group size), the quantized
``model.safetensors`` (integer tensors plus float scales), the tokenizer, and a ``summary.json`` that records
where it came from. Training figures are not copied: they describe the float model (measure the quantized one
with ``lmforge eval``).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from lmforge.config.quantization import QuantizationConfig
from lmforge.errors import CheckpointError, ConfigError
from lmforge.models.quantized import quantize_model
from lmforge.models.run_folder import TOKENIZER_FILE, load_run, save_run

__all__ = ["quantize_run", "size_report"]

log = logging.getLogger(__name__)

# summary keys that stay true after quantization (the rest are the float model's measurements)
_KEEP = ("chat_template", "preset", "tokenizer")


def quantize_run(run_dir: str | Path, out_dir: str | Path, bits: int = 8, group_size: int = 32,
                 weights: str = "last") -> Path:
    """Writes ``run_dir``'s model with int8 or int4 weights to ``out_dir`` (a complete run folder).

    Args:
        run_dir: a float run folder (``lmforge train``/``finetune``).
        out_dir: the folder to write; it must not exist yet, or be empty.
        bits: 8 or 4.
        group_size: input channels per int4 group.
        weights: ``"last"`` or ``"best"``: which of the run's weights to quantize.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        CheckpointError: the run cannot be loaded, or it is already quantized.
        ConfigError: bad ``bits``/``group_size``, or ``out_dir`` is a non-empty folder or the run itself.
    """
    src, out = Path(run_dir), Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} already exists and is not an empty folder; choose a new --out folder")
    if out.resolve() == src.resolve():
        raise ConfigError("--out must differ from the run folder (the float run is kept)")
    spec = QuantizationConfig(bits=bits, group_size=group_size)
    run = load_run(src, device="cpu", weights=weights)
    if run.config.quantization is not None:
        raise CheckpointError(f"{src} is already quantized ({run.config.quantization.name}); quantize the float run")
    model = quantize_model(run.model, spec.bits, spec.group_size)
    config = run.config.model_copy(update={"quantization": spec})
    summary: dict[str, Any] = {k: v for k, v in (run.summary or {}).items() if k in _KEEP}
    summary.update({"quantized_from": str(src.resolve()), "quantization": spec.to_dict(), "weights": weights,
                    "run_dir": str(out)})
    out.parent.mkdir(parents=True, exist_ok=True)
    # write everything into a temporary sibling folder, then rename: an interrupted run leaves no half folder
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_run(tmp, config, model, None, summary=summary)
        for name in os.listdir(src):
            if name.endswith(TOKENIZER_FILE):  # tokenizer.json, or src_/tgt_tokenizer.json of a translation run
                shutil.copy2(src / name, tmp / name)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %s (%s) from %s", out, spec.name, src)
    return out


def size_report(run_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """The weight file sizes of the float and quantized runs (bytes) and their ratio."""
    a = (Path(run_dir) / "model.safetensors").stat().st_size
    b = (Path(out_dir) / "model.safetensors").stat().st_size
    return {"float_bytes": a, "quantized_bytes": b, "ratio": round(b / a, 4)}
