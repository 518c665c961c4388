"""Runs the ```python blocks of a docs/entry-points page, with sizes substituted where the real ones are slow."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs" / "entry-points"


def doc_text(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def doc_code(name: str) -> str:
    """The page's ```python blocks joined in order."""
    blocks = re.findall(r"```python\n(.*?)```", doc_text(name), flags=re.S)
    assert blocks, f"{name} has no python blocks"
    return "\n".join(blocks)


def assert_lines_in_doc(name: str, snippet: str) -> None:
    """Every line of the issue's snippet appears verbatim in the page's code (so the page shows it as written)."""
    code = doc_code(name)
    for line in snippet.strip().splitlines():
        assert line.rstrip() in code, f"{name} lost the line {line!r}"


def run_doc(name: str, subs: dict[str, str] | None = None) -> dict:
    """Executes the page's code after replacing each ``old`` by ``new`` (every ``old`` must occur)."""
    code = doc_code(name)
    for old, new in (subs or {}).items():
        assert old in code, f"{old!r} is no longer in {name}; update the test's size substitutions"
        code = code.replace(old, new)
    namespace: dict = {"__name__": f"doc_{name}"}
    exec(compile(code, str(DOCS / name), "exec"), namespace)  # noqa: S102 - our own documentation
    return namespace
