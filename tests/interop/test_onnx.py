"""ONNX export: onnxruntime's logits equal lmforge's within 1e-4 at shapes other than the exported one (dynamic
batch and sequence axes), for a Llama-style run and an imported GPT-2; LoRA adapters are merged; errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
sys.path.insert(0, str(Path(__file__).parent))

from lmforge.cli.main import main  # noqa: E402
from lmforge.config import LSTMConfig, RunConfig  # noqa: E402
from lmforge.errors import ConfigError  # noqa: E402
from lmforge.interop.onnx import export_onnx  # noqa: E402
from lmforge.models import build_model  # noqa: E402
from lmforge.models.lora import apply_lora  # noqa: E402
from lmforge.models.run_folder import load_run, save_run  # noqa: E402


def _onnx_logits(path: Path, ids: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["logits"], {"input_ids": ids.numpy()})[0])


def _random_run(tmp: Path, lora: bool) -> torch.nn.Module:
    cfg = RunConfig.parse({"model": {"vocab_size": 40, "d_model": 32, "num_layers": 2, "block_size": 24,
                                     "attention": {"num_heads": 4, "num_kv_heads": 2}},
                           "train": {"lora_rank": 4} if lora else {}})
    torch.manual_seed(0)
    model = build_model(cfg.model)
    if lora:
        apply_lora(model, 4, 8.0, ["qkv", "w_out"])
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith("lora_b"):
                    p.normal_(0, 0.5)  # a trained-looking adapter (B starts at zero)
    save_run(tmp, cfg, model.eval())
    return model


@pytest.mark.slow  # the exporter takes 15-40 s
def test_onnx_logits_equal_lmforge_with_lora_merged(tmp_path, capsys):
    adapted = _random_run(tmp_path / "run", lora=True)
    assert (tmp_path / "run" / "adapter.safetensors").is_file()
    assert main(["export", str(tmp_path / "run"), "--format", "onnx", "--out", str(tmp_path / "onnx")]) == 0
    assert "onnxruntime logits within" in capsys.readouterr().out
    for shape in [(1, 1), (2, 5), (4, 24)]:  # neither the exported batch nor length
        ids = torch.randint(0, 40, shape, generator=torch.Generator().manual_seed(sum(shape)))
        with torch.no_grad():
            want = adapted(ids)[0]
        torch.testing.assert_close(_onnx_logits(tmp_path / "onnx" / "model.onnx", ids), want, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_imported_gpt2_and_mistral_export_to_onnx(tmp_path):
    from hf_fixtures import build_checkpoint

    from lmforge.interop.hf_import import import_hf

    for arch in ("gpt2", "mistral"):  # learned positions + LayerNorm + GELU; a sliding window mask
        build_checkpoint(arch, tmp_path / arch)
        import_hf(tmp_path / arch, tmp_path / f"run-{arch}")
        model = load_run(tmp_path / f"run-{arch}").model
        info = export_onnx(model, tmp_path / f"{arch}.onnx")
        assert info["max_abs_diff"] <= 1e-4
        ids = torch.randint(0, 100, (3, 17), generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            torch.testing.assert_close(_onnx_logits(tmp_path / f"{arch}.onnx", ids), model(ids)[0], atol=1e-4, rtol=0)


def test_only_transformers_export(tmp_path):
    lstm = build_model(LSTMConfig(vocab_size=20, embedding_dim=8, hidden_dim=8, num_layers=1))
    with pytest.raises(ConfigError, match="supports transformer models"):
        export_onnx(lstm, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
