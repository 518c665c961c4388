"""Text embeddings from a language model's final hidden states.

:class:`Embedder` encodes texts, runs ``model.hidden_states`` on right-padded batches with an attention mask,
pools over the real tokens only (``POOLING``: ``mean`` by default, or ``last``), and L2-normalises. Texts are
grouped by length (dynamic padding), and padding never reaches a real token's state (the CausalLM contract),
so a text's vector does not depend on what it was batched with.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from lmforge.inference.generation import model_device
from lmforge.registry import Registry

__all__ = ["Embedder", "POOLING", "weights_fingerprint", "cosine_similarity"]

Pooling = Callable[[Tensor, Tensor], Tensor]
POOLING: Registry[Pooling] = Registry("pooling")


@POOLING.register("mean")
def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """Mean of the hidden states (B, T, D) over real tokens (``mask`` (B, T) is 1 for them)."""
    m = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


@POOLING.register("last")
def last_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """The hidden state of each row's last real token (right padding)."""
    last = mask.long().sum(1).clamp_min(1) - 1  # (B,)
    return hidden[torch.arange(hidden.size(0), device=hidden.device), last]


def weights_fingerprint(model: Any) -> str:
    """SHA-256 over the model's parameter names, shapes and values (identifies the weights, for caches)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def cosine_similarity(queries: np.ndarray, docs: np.ndarray) -> np.ndarray:
    """Cosine similarity (Q, N) of row vectors (normalised here, so any vectors work)."""
    q = queries / np.maximum(np.linalg.norm(queries, axis=-1, keepdims=True), 1e-12)
    d = docs / np.maximum(np.linalg.norm(docs, axis=-1, keepdims=True), 1e-12)
    return q @ d.T


class Embedder:
    """Turns texts into unit-length vectors with a language model.

    Args:
        model: a CausalLM (Transformer or LSTM).
        tokenizer: its tokenizer.
        pooling: ``"mean"`` (default) or ``"last"`` (see ``POOLING``).
        batch_size: texts per forward pass.
        max_length: tokens kept per text (the first ones); default the model's context (no limit for an LSTM).

    Example:
        >>> vecs = Embedder(model, tok).embed(["a cat", "a dog"])  # doctest: +SKIP
        >>> vecs.shape, float((vecs[0] ** 2).sum())  # doctest: +SKIP
        ((2, 256), 1.0)
    """

    def __init__(self, model: Any, tokenizer: Any, pooling: str = "mean", batch_size: int = 32,
                 max_length: Optional[int] = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self._pool = POOLING.get(pooling)
        self.batch_size = max(1, int(batch_size))
        self.max_length = max_length if max_length is not None else getattr(model, "max_context", None)

    @property
    def dim(self) -> int:
        """Vector width (the model's hidden size)."""
        return int(self.model.hidden_size)

    def fingerprint(self) -> str:
        """Identifies what the vectors depend on: weights, tokenizer, pooling and truncation."""
        tok = self.tokenizer.fingerprint() if hasattr(self.tokenizer, "fingerprint") else type(self.tokenizer).__name__
        key = f"{weights_fingerprint(self.model)}|{tok}|{self.pooling}|{self.max_length}"
        return hashlib.sha256(key.encode()).hexdigest()[:32]

    def _ids(self, text: str) -> list[int]:
        ids = list(self.tokenizer.encode(text)) or [int(self.tokenizer.eos_id)]
        return ids[: self.max_length] if self.max_length else ids

    @torch.inference_mode()
    def _batch(self, rows: Sequence[list[int]]) -> Tensor:
        device = model_device(self.model)
        T = max(len(r) for r in rows)
        ids = torch.full((len(rows), T), int(getattr(self.tokenizer, "pad_id", 0)), dtype=torch.long)
        mask = torch.zeros((len(rows), T), dtype=torch.long)
        for i, r in enumerate(rows):  # right padding
            ids[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        ids, mask = ids.to(device), mask.to(device)
        hidden = self.model.hidden_states(ids, attention_mask=mask).float()  # (B, T, D)
        vecs = self._pool(hidden, mask)  # (B, D)
        return torch.nn.functional.normalize(vecs, dim=-1)

    def embed(self, texts: Sequence[str] | str) -> np.ndarray:
        """L2-normalised vectors (N, D) float32, one per text, in the order given."""
        if isinstance(texts, str):
            texts = [texts]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encoded = [self._ids(t) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))  # similar lengths share a batch
        was_training = bool(getattr(self.model, "training", False))
        self.model.eval()
        try:
            for lo in range(0, len(order), self.batch_size):
                idx = order[lo: lo + self.batch_size]
                out[idx] = self._batch([encoded[i] for i in idx]).cpu().numpy()
        finally:
            if was_training:
                self.model.train()
        return out

    __call__ = embed
