"""``loss.png``: training and validation loss against steps and against wall time (matplotlib, Agg)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

from lmforge.utils.files import atomic_write_bytes

__all__ = ["plot_losses"]


def _series(records: Sequence[dict], key: str, x: str) -> tuple[list[float], list[float]]:
    pts = [(r[x], r[key]) for r in records if r.get(key) is not None and r.get(x) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_losses(records: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """Draws ``train_loss`` and ``val_loss`` of ``records`` (from ``metrics.jsonl``) against ``step`` and
    against ``elapsed`` seconds, side by side, and writes a PNG atomically.

    Args:
        records: dicts with ``step``, ``elapsed`` and some of ``train_loss`` / ``val_loss``.
        path: where the PNG goes.
        title: an optional figure title.

    Returns:
        ``path`` as a ``Path``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # the OO API needs no global pyplot state

    fig = Figure(figsize=(10, 4), dpi=100)
    for i, (xkey, xlabel) in enumerate((("step", "step"), ("elapsed", "training time (s)"))):
        ax = fig.add_subplot(1, 2, i + 1)
        for key, label, style in (("train_loss", "train", "-"), ("val_loss", "validation", "o-")):
            xs, ys = _series(records, key, xkey)
            if xs:
                ax.plot(xs, ys, style, label=label, markersize=3)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("loss (nats/token)")
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
