"""Ranking documents by cosine similarity of their embeddings, an on-disk index, and retrieval metrics.

The index (:class:`SearchIndex`) is one ``.npz`` file holding the unit vectors, the documents and a key made
from the documents and the embedder (weights, tokenizer, pooling). :func:`load_or_build_index` reuses a saved
index when the key matches and rebuilds it (atomically) when the documents or the model changed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from lmforge.errors import DataError
from lmforge.utils.files import atomic_open

__all__ = [
    "SearchIndex",
    "SearchHit",
    "load_or_build_index",
    "read_texts",
    "recall_at_k",
    "mean_reciprocal_rank",
    "evaluate_retrieval",
]

INDEX_FORMAT = "lmforge-search-index/1"


@dataclass
class SearchHit:
    """One ranked document: its index in the collection, cosine score and text."""

    index: int
    score: float
    text: str


def read_texts(path: str | Path) -> list[str]:
    """Texts from a file: ``.jsonl`` with a ``"text"`` field per line, else one text per non-empty line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist; pass a text file (one document a line) or a .jsonl with a 'text' field")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text (byte {err.start}); convert it to UTF-8") from None
    texts: list[str] = []
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                obj = json.loads(line)
                texts.append(str(obj["text"]))
            except (ValueError, KeyError, TypeError):
                raise DataError(f"{path}:{n} is not a JSON object with a 'text' field; fix that line") from None
        else:
            texts.append(line)
    if not texts:
        raise DataError(f"{path} holds no texts; write one document per line")
    return texts


def _key(docs: Sequence[str], embedder_fingerprint: str) -> str:
    h = hashlib.sha256(embedder_fingerprint.encode())
    for d in docs:
        h.update(hashlib.sha256(d.encode("utf-8")).digest())
    return h.hexdigest()[:32]


class SearchIndex:
    """Document vectors plus the documents, searchable by cosine similarity.

    Example:
        >>> index = SearchIndex.build(embedder, ["a cat sat", "stocks fell"])  # doctest: +SKIP
        >>> index.search(embedder, "kitten", top_k=1)[0].text  # doctest: +SKIP
        'a cat sat'
    """

    def __init__(self, vectors: np.ndarray, docs: Sequence[str], key: str) -> None:
        self.vectors = np.asarray(vectors, dtype=np.float32)
        self.docs = list(docs)
        self.key = key

    @classmethod
    def build(cls, embedder: Any, docs: Sequence[str]) -> "SearchIndex":
        """Embeds ``docs`` with ``embedder`` (an :class:`~lmforge.inference.embeddings.Embedder`)."""
        return cls(embedder.embed(list(docs)), docs, _key(docs, embedder.fingerprint()))

    def rank(self, query_vectors: np.ndarray, top_k: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
        """``(indices (Q, k), scores (Q, k))`` of the best documents per query vector, best first."""
        scores = np.atleast_2d(query_vectors).astype(np.float32) @ self.vectors.T  # (Q, N), unit vectors
        k = scores.shape[1] if top_k is None else min(top_k, scores.shape[1])
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return order, np.take_along_axis(scores, order, axis=1)

    def search(self, embedder: Any, query: str, top_k: int = 5) -> list[SearchHit]:
        """The ``top_k`` documents most similar to ``query``."""
        order, scores = self.rank(embedder.embed([query]), top_k)
        return [SearchHit(int(i), float(s), self.docs[int(i)]) for i, s in zip(order[0], scores[0])]

    def save(self, path: str | Path) -> None:
        """Writes the index as one ``.npz`` (no pickled objects), atomically."""
        meta = json.dumps({"format": INDEX_FORMAT, "key": self.key, "n": len(self.docs)})
        with atomic_open(path, "wb") as f:
            np.savez(f, vectors=self.vectors, docs=np.array(self.docs, dtype=np.str_), meta=np.array(meta))

    @classmethod
    def load(cls, path: str | Path) -> "SearchIndex":
        """Reads an index written by :meth:`save`; DataError if it is not one."""
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("format") != INDEX_FORMAT:
                    raise ValueError("format")
                return cls(z["vectors"], [str(d) for d in z["docs"]], meta["key"])
        except (OSError, ValueError, KeyError) as err:
            raise DataError(f"{path} is not a readable lmforge search index ({err}); delete it to rebuild it") from None


def load_or_build_index(embedder: Any, docs: Sequence[str], path: str | Path) -> tuple[SearchIndex, bool]:
    """The saved index at ``path`` when it was built from these ``docs`` with this embedder; otherwise a new
    one, saved there. Returns ``(index, rebuilt)``."""
    path = Path(path)
    key = _key(docs, embedder.fingerprint())
    if path.is_file():
        try:
            index = SearchIndex.load(path)
            if index.key == key:
                return index, False
        except DataError:
            pass
    index = SearchIndex(embedder.embed(list(docs)), docs, key)
    index.save(path)
    return index, True


def _relevant_sets(relevant: Iterable[Any]) -> list[set[int]]:
    return [set(r) if isinstance(r, (set, list, tuple, frozenset)) else {int(r)} for r in relevant]


def recall_at_k(ranked: Sequence[Sequence[int]], relevant: Sequence[Any], k: int) -> float:
    """Mean over queries of the fraction of a query's relevant documents found in its top ``k``."""
    rel = _relevant_sets(relevant)
    scores = [len(set(list(r)[:k]) & g) / len(g) for r, g in zip(ranked, rel) if g]
    return float(np.mean(scores)) if scores else 0.0


def mean_reciprocal_rank(ranked: Sequence[Sequence[int]], relevant: Sequence[Any]) -> float:
    """Mean over queries of 1 / (rank of the first relevant document), 0 when none is ranked."""
    rel = _relevant_sets(relevant)
    total = []
    for r, g in zip(ranked, rel):
        rr = 0.0
        for pos, doc in enumerate(r, 1):
            if doc in g:
                rr = 1.0 / pos
                break
        total.append(rr)
    return float(np.mean(total)) if total else 0.0


def evaluate_retrieval(embedder: Any, queries: Sequence[str], docs: Sequence[str], relevant: Sequence[Any],
                       ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Recall@k for each ``k`` and MRR of ``embedder`` on a labelled set (``relevant[i]``: the index, or set of
    indices, of the documents relevant to ``queries[i]``)."""
    index = SearchIndex.build(embedder, docs)
    order, _ = index.rank(embedder.embed(list(queries)))
    ranked = order.tolist()
    out = {f"recall@{k}": recall_at_k(ranked, relevant, k) for k in ks}
    out["mrr"] = mean_reciprocal_rank(ranked, relevant)
    return out
