"""Figures of a prepared corpus (as light-llm's ``llm-analyse``): documents, characters, bytes, tokens, characters
per token, the unknown-token rate, a document-length histogram and the most frequent tokens.

Everything is computed in one streamed pass over the shards and their indexes, so it works on any size.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np

from lmforge.data.pipeline import SPLITS
from lmforge.data.prepare import PreparedData
from lmforge.data.shards import INDEX_COLUMNS
from lmforge.utils.files import atomic_path

__all__ = ["corpus_stats", "plot_stats"]

_DOC, _TOKENS, _CHARS = (INDEX_COLUMNS.index(c) for c in ("doc", "tokens", "chars"))


def _doc_lengths(table: np.ndarray, column: int) -> np.ndarray:
    """Per-document sums of ``column`` over every segment (a document cut across splits counts once)."""
    if not len(table):
        return np.zeros(0, dtype=np.int64)
    sums = np.bincount(table[:, _DOC], weights=table[:, column]).astype(np.int64)
    return sums[np.bincount(table[:, _DOC]) > 0]


def _histogram(lengths: np.ndarray) -> list[dict]:
    """Counts per power-of-two bin: ``[lo, hi)`` for lo = 1, 2, 4, ..."""
    if not len(lengths):
        return []
    top = int(np.ceil(np.log2(max(2, int(lengths.max()) + 1))))
    edges = np.r_[0, 2 ** np.arange(1, top + 1)]
    counts, _ = np.histogram(lengths, bins=edges)
    used = np.flatnonzero(counts)
    return [{"lo": int(edges[i]), "hi": int(edges[i + 1]), "count": int(counts[i])} for i in range(used[0], used[-1] + 1)]


def corpus_stats(data: PreparedData, top: int = 20) -> dict[str, Any]:
    """The figures of both splits together (and per split).

    Args:
        data: a prepared corpus (:func:`~lmforge.data.prepare.prepare` or :func:`~lmforge.data.prepare.load_prepared`).
        top: how many of the most frequent tokens to list.

    Returns:
        ``documents``, ``chars``, ``bytes``, ``tokens``, ``chars_per_token``, ``bytes_per_token``,
        ``unk_rate`` (share of tokens that are ``<unk>``), ``doc_tokens`` and ``doc_chars`` (length
        histograms: ``[{"lo", "hi", "count"}]``), ``doc_tokens_mean``/``median``/``max``, ``top_tokens``
        (``[{"id", "token", "count", "share"}]``), ``splits`` (the per-split counts) and ``skipped``.
    """
    meta = data.meta
    vocab = int(meta.get("vocab_size") or 0)
    counts = np.zeros(max(vocab, 1), dtype=np.int64)
    tables = []
    for split in SPLITS:
        tokens = getattr(data, split)
        for chunk in tokens.iter_chunks():
            counts += np.bincount(chunk, minlength=len(counts))[:len(counts)]
        tables.append(tokens.segments())
    table = np.concatenate(tables)
    doc_tokens, doc_chars = _doc_lengths(table, _TOKENS), _doc_lengths(table, _CHARS)
    total = {k: sum(int(meta[s][k]) for s in SPLITS) for k in ("chars", "bytes", "tokens")}
    total = {"documents": len(doc_tokens), **total}
    order = np.argsort(-counts, kind="stable")[:top]
    tok = data.tokenizer
    unk = getattr(tok, "unk_id", None)

    def name(i: int) -> str:
        return tok.decode([i], skip_special=False) if tok is not None else str(i)

    return {
        **total,
        "chars_per_token": total["chars"] / total["tokens"] if total["tokens"] else None,
        "bytes_per_token": total["bytes"] / total["tokens"] if total["tokens"] else None,
        "unk_rate": float(counts[unk] / total["tokens"]) if total["tokens"] and unk is not None and unk < len(counts) else None,
        "doc_tokens": _histogram(doc_tokens), "doc_chars": _histogram(doc_chars),
        "doc_tokens_mean": float(doc_tokens.mean()) if len(doc_tokens) else 0.0,
        "doc_tokens_median": float(np.median(doc_tokens)) if len(doc_tokens) else 0.0,
        "doc_tokens_max": int(doc_tokens.max()) if len(doc_tokens) else 0,
        "top_tokens": [{"id": int(i), "token": name(int(i)), "count": int(counts[i]),
                        "share": float(counts[i] / max(1, total["tokens"]))} for i in order if counts[i]],
        "splits": {s: dict(meta[s]) for s in SPLITS},
        "tokenizer": {"kind": meta.get("tokenizer_kind"), "vocab_size": vocab},
        "skipped": meta.get("skipped") or {},
        "folder": str(data.cache_dir) if data.cache_dir else None,
    }


def plot_stats(stats: dict, path: str | os.PathLike, title: Optional[str] = None) -> None:
    """Draws the document-length histograms and the top tokens into one PNG (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, key, what in ((axes[0], "doc_tokens", "tokens"), (axes[1], "doc_chars", "characters")):
        bins = stats[key]
        ax.bar(range(len(bins)), [b["count"] for b in bins])
        ax.set_xticks(range(len(bins)), [f"<{b['hi']:,}" for b in bins], rotation=60, fontsize=7)
        ax.set_title(f"document length ({what})")
        ax.set_ylabel("documents")
    top = stats["top_tokens"][:20]
    axes[2].barh(range(len(top))[::-1], [t["share"] for t in top])
    axes[2].set_yticks(range(len(top))[::-1], [repr(t["token"])[1:-1][:12] for t in top], fontsize=7)
    axes[2].set_title("most frequent tokens (share)")
    fig.suptitle(title or f"{stats['documents']:,} documents, {stats['tokens']:,} tokens")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
