"""The package's shape: the import-linter layers contract of pyproject.toml (docs/architecture.md) holds, and no
module or function grows past the size limits of the style guide."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "lmforge"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
# Declarations, not logic: preset tables may be longer than a function.
ALLOWED_LONG = {("config/presets.py", "*")}


def test_the_layers_contract_holds() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("import-linter is not installed (pip install -e .[dev])")
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": str(lint.parent)}
    done = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_no_module_exceeds_the_line_limit() -> None:
    long = [f"{p.relative_to(SRC)}: {n}" for p in _modules()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
            and (str(p.relative_to(SRC)), "*") not in ALLOWED_LONG]
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_exceeds_the_line_limit() -> None:
    long = []
    for path in _modules():
        rel = str(path.relative_to(SRC))
        if (rel, "*") in ALLOWED_LONG:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES and (rel, node.name) not in ALLOWED_LONG:
                    long.append(f"{rel}:{node.lineno} {node.name} ({n} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"
