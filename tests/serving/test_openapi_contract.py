"""Acceptance: schemathesis, with every check it has, finds no failure against a real server: every status
the server answers is documented with its error schema, and the request schemas admit exactly what the
server accepts (limits that depend on the model, such as the context and the vocabulary, included)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from serving_fakes import TINY_CORPUS

pytest.importorskip("schemathesis")


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Transformer with a 16-token context: the longest generation schemathesis can ask for is short."""
    import torch

    from lmforge.config import RunConfig
    from lmforge.models import build_model
    from lmforge.tokenizers import train_tokenizer
    from lmforge.training.checkpoint import save_run

    tokenizer = train_tokenizer("char", [TINY_CORPUS])
    out = tmp_path_factory.mktemp("contract") / "short"
    cfg = RunConfig.model_validate({"model": {"family": "transformer", "d_model": 16, "num_layers": 1,
                                              "block_size": 16, "attention": {"num_heads": 2},
                                              "vocab_size": tokenizer.vocab_size},
                                    "tokenizer": {"kind": "char"}, "out_dir": str(out)})
    torch.manual_seed(0)
    return save_run(out, cfg, build_model(cfg.model), tokenizer)


def _schemathesis() -> list[str]:
    exe = shutil.which("schemathesis") or str(Path(sys.executable).with_name("schemathesis"))
    return [exe]


@pytest.mark.slow
def test_schemathesis_finds_no_failure(serve, short_run, tmp_path):
    srv = serve(str(short_run), default_max_tokens=8)
    proc = subprocess.run([*_schemathesis(), "run", f"{srv.url}/openapi.json", "--checks", "all",
                           "--max-examples", "8", "--seed", "1", "--request-timeout", "30",
                           "--no-color"], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)  # schemathesis keeps its cache in the working directory
    report = proc.stdout[-6000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, report
    assert "No issues found" in proc.stdout or " passed" in proc.stdout, report
