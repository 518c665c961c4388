"""Attention heatmaps: one PNG per translated sentence, source tokens across, target tokens down (matplotlib, Agg).

Each row is the attention of the decoder while it predicted that target token; a row sums to 1 over the source
tokens. Reading the diagonal-ish bands shows which source words each output word drew on (Bahdanau et al.,
arXiv:1409.0473, figure 3, made these plots the usual way to inspect a translation model).
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from lmforge.inference.attention_maps import attention_maps
from lmforge.utils.files import atomic_write_bytes

__all__ = ["plot_attention", "write_attention_plots", "plot_translation_attention"]

CELL_INCHES = 0.32  # each token's share of the figure, so long sentences stay readable


def plot_attention(weights: Any, source_tokens: Sequence[str], target_tokens: Sequence[str], path: str | Path,
                   title: str = "") -> np.ndarray:
    """Draws one heatmap and writes it as a PNG atomically.

    Args:
        weights: ``(len(target_tokens), len(source_tokens))`` attention weights.
        source_tokens: labels of the columns.
        target_tokens: labels of the rows.
        path: where the PNG goes.
        title: the figure's title (e.g. the source sentence and its translation).

    Returns:
        The array the figure shows (as matplotlib holds it), ``(targets, sources)``.

    Raises:
        ValueError: ``weights`` does not have one row per target token and one column per source token.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # the OO API needs no global pyplot state

    data = np.asarray(weights, dtype=np.float32)
    if data.shape != (len(target_tokens), len(source_tokens)):
        raise ValueError(f"attention weights of shape {data.shape} do not match {len(target_tokens)} target x "
                         f"{len(source_tokens)} source tokens")
    width = max(4.0, 1.8 + CELL_INCHES * len(source_tokens))
    height = max(3.0, 1.4 + CELL_INCHES * len(target_tokens))
    fig = Figure(figsize=(width, height), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(data, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(source_tokens)), labels=list(source_tokens), rotation=90, fontsize=8)
    ax.set_yticks(range(len(target_tokens)), labels=list(target_tokens), fontsize=8)
    ax.set_xlabel("source tokens")
    ax.set_ylabel("target tokens")
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    if title:
        ax.set_title(title, fontsize=9, wrap=True)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return np.asarray(image.get_array())


def _slug(text: str, n: int = 40) -> str:
    return re.sub(r"[^0-9A-Za-z]+", "_", text).strip("_")[:n] or "empty"


def write_attention_plots(maps: Sequence[Any], out_dir: str | Path) -> list[Path]:
    """Writes ``<out_dir>/<NNNN>_<source words>.png`` for each attention map, numbered from 1 in input order.

    Args:
        maps: :class:`~lmforge.inference.attention_maps.AttentionMap` objects (``weights``, ``source_tokens``,
            ``target_tokens``, ``source``, ``translation``, ``what``).
        out_dir: the folder (created if missing).

    Returns:
        The files written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    width = max(4, len(str(len(maps))))
    files = []
    for i, m in enumerate(maps, start=1):
        path = out / f"{i:0{width}d}_{_slug(m.source)}.png"
        plot_attention(m.weights, m.source_tokens, m.target_tokens, path,
                       title=f"{m.source}\n→ {m.translation}\n({m.what})")
        files.append(path)
    return files


def plot_translation_attention(translator: Any, texts: Sequence[str], out_dir: str | Path, beam: int = 5,
                               layer: Optional[int] = None, head: Optional[int] = None,
                               max_len: Optional[int] = None, batch_size: int = 32) -> tuple[list[str], list[Path]]:
    """Translates ``texts`` and writes one attention heatmap per sentence into ``out_dir``.

    Args:
        translator: a :class:`~lmforge.inference.translate.Translator`.
        texts: source sentences.
        out_dir: where the PNGs go.
        beam, max_len, batch_size: as in ``Translator.translate``.
        layer, head: which attention to show (from 1; default: the mean over the last layer's heads).

    Returns:
        ``(translations, files)``: the translations in order, and the PNGs written.
    """
    maps = attention_maps(translator, texts, beam=beam, layer=layer, head=head, max_len=max_len,
                          batch_size=batch_size)
    return [m.translation for m in maps], write_attention_plots(maps, out_dir)
