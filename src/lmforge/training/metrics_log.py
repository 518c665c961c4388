"""``metrics.jsonl``: one JSON line per evaluation, appended as training goes, trimmed on resume."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from lmforge.utils.files import atomic_write_text

__all__ = ["MetricsLog", "read_metrics"]


def _clean(value: Any) -> Any:
    # JSON has no NaN/inf; write them as null so every line stays valid JSON.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` (an unreadable last line, from a kill mid-write, is ignored)."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


class MetricsLog:
    """Appends records to ``metrics.jsonl``.

    Args:
        path: the file.
        resume_step: when resuming, records after this step (written after the checkpoint being resumed)
            are dropped so the log matches the restored state; ``None`` starts a fresh log.
    """

    def __init__(self, path: str | Path, resume_step: int | None = None) -> None:
        self.path = Path(path)
        if resume_step is None:
            atomic_write_text(self.path, "")
        else:
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict) -> None:
        """Appends one record as a JSON line (flushed and fsynced)."""
        line = json.dumps({k: _clean(v) for k, v in record.items()}) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def records(self) -> list[dict]:
        """Everything logged so far."""
        return read_metrics(self.path)
