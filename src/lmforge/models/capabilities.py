"""What a model family can do, read from its declaration: a ``capabilities`` class attribute (a frozenset) on
the family's module class when it has one, else the family's entry in
:data:`lmforge.models.registry.CAPABILITIES`. Callers ask these functions instead of testing ``hasattr``.

Capabilities: ``causal_lm`` (generation, chat), ``embeddings`` (``hidden_states``), ``kv_cache`` (incremental
decoding with a key/value cache), ``seq2seq`` (translation: ``encode``/``decode``).
"""

from __future__ import annotations

from typing import Any

from lmforge.models.registry import CAPABILITIES, MODELS, _resolve

__all__ = ["family_capabilities", "model_capabilities"]


def family_capabilities(family: str) -> frozenset[str]:
    """The capabilities a registered family declares."""
    declared = getattr(_resolve(MODELS.get(family)), "capabilities", None)
    if declared is not None:
        return frozenset(declared)
    return frozenset(CAPABILITIES.get(family, ()))


def model_capabilities(model: Any) -> frozenset[str]:
    """The capabilities of a built model: its class's declaration, else its family's."""
    declared = getattr(type(model), "capabilities", None)
    if declared is not None:
        return frozenset(declared)
    family = getattr(getattr(model, "config", None), "family", None)
    return family_capabilities(family) if isinstance(family, str) and family in MODELS else frozenset()
