"""``llama_toy`` from tests/inference (the tiny Llama-compatible Transformers), importable from tests/models."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("_llama_toy", Path(__file__).resolve().parents[1] / "inference" / "llama_toy.py")
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)
llama_toy = _mod.llama_toy
