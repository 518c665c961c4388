"""Export a Transformer to ONNX (``lmforge export --format onnx``), checked with onnxruntime at export time.

The graph maps ``input_ids`` (int64, batch x sequence) to ``logits`` (float32, batch x sequence x vocab), with
both axes dynamic (sequence up to the model's context). It is produced by PyTorch's ``torch.export``-based ONNX
exporter (``torch.onnx.export(dynamo=True)``, which needs ``onnxscript``; the older TorchScript exporter has no
``rms_norm``), then run by onnxruntime on two inputs of different shapes from the exported ones: the export is
refused (and no file is left) unless its logits are within ``atol`` of the model's. LoRA adapters are merged by
the loader before export, so the graph holds merged weights.

Requires the ``onnx`` extra: ``pip install 'lmforge[onnx]'`` (onnx, onnxruntime, onnxscript).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lmforge.errors import CheckpointError, ConfigError
from lmforge.utils.files import atomic_path, atomic_write_json
from lmforge.models.run_folder import load_model

__all__ = ["export_onnx", "verify_onnx", "export_model_dir_onnx"]

log = logging.getLogger(__name__)


class _Logits(nn.Module):
    """``input_ids -> logits``: the one output an ONNX consumer needs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.model(input_ids)[0]


def _require() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ConfigError(f"ONNX export needs {err.name}: pip install 'lmforge[onnx]'") from None


def verify_onnx(path: str | Path, model: nn.Module, shapes: tuple[tuple[int, int], ...] = ((1, 3), (3, 11)),
                seed: int = 0) -> float:
    """The largest absolute difference between onnxruntime's logits for ``path`` and ``model``'s, over random
    inputs of ``shapes`` (batch, sequence)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(seed)
    vocab, block = model.config.vocab_size, model.config.block_size
    worst = 0.0
    for b, t in shapes:
        ids = torch.randint(0, vocab, (b, min(t, block)), generator=g)
        got = torch.from_numpy(session.run(["logits"], {"input_ids": ids.numpy()})[0])
        with torch.no_grad():
            want = model(ids)[0].float()
        worst = max(worst, float((got - want).abs().max()))
    return worst


def export_onnx(model: nn.Module, path: str | Path, atol: float = 1e-4) -> dict[str, Any]:
    """Writes ``model`` (a Transformer) as an ONNX graph and checks it with onnxruntime.

    Args:
        model: a :class:`~lmforge.models.transformer.Transformer` (exported in float32).
        path: the ``.onnx`` file to write (atomically).
        atol: the largest logit difference from the model that the check accepts.

    Returns:
        ``{"path", "max_abs_diff", "opset"}``.

    Raises:
        ConfigError: not a Transformer, or the onnx extra is missing.
        CheckpointError: the exported graph's logits differ from the model's by more than ``atol``.
    """
    _require()
    config = getattr(model, "config", None)
    if getattr(config, "family", None) != "transformer":
        raise ConfigError(f"ONNX export supports transformer models (this one is {getattr(config, 'family', type(model).__name__)!r})")
    model = copy.deepcopy(model).float().eval().cpu() if next(model.parameters()).dtype != torch.float32 else model.eval()
    block = config.block_size
    example = torch.zeros(2, min(8, block), dtype=torch.long)
    dims = {"input_ids": {0: torch.export.Dim("batch", min=1, max=4096),
                          1: torch.export.Dim("sequence", min=1, max=block)}}
    path = Path(path)
    with atomic_path(path) as tmp, _quiet():
        program = torch.onnx.export(_Logits(model), (example,), str(tmp), dynamo=True, input_names=["input_ids"],
                                    output_names=["logits"], dynamic_shapes=dims, verbose=False, external_data=False)
        opset = int(program.model.opset_imports.get("", 0)) if program is not None else 0
        diff = verify_onnx(tmp, model)
        if not diff <= atol:
            raise CheckpointError(f"the ONNX graph's logits differ from the model's by {diff:.2e} (> {atol:g}); "
                                  "nothing was written; report this model's config")
    log.info("exported %s (onnxruntime max |logit difference| %.2e)", path, diff)
    return {"path": str(path), "max_abs_diff": diff, "opset": opset}


@contextlib.contextmanager
def _quiet() -> Any:
    """The exporter's progress lines and warnings stay out of the user's output."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_model_dir_onnx(model_dir: str | Path, out_dir: str | Path, atol: float = 1e-4) -> dict[str, Any]:
    """Exports a run or model folder to ``out_dir/model.onnx`` (LoRA adapters merged), with the run's
    ``tokenizer.json`` and model ``config.json`` beside it."""

    model = load_model(model_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = export_onnx(model, out / "model.onnx", atol=atol)
    atomic_write_json(out / "config.json", model.config.model_dump(mode="json"))
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.save(out / "tokenizer.json")
    return info

