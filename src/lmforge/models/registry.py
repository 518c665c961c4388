"""``MODELS``: model family name -> builder ``(config) -> nn.Module``.

Families register lazily by dotted path so that importing lmforge does not import every family. Adding a family
means one new module with its config and ``nn.Module`` and one line here (or ``MODELS.add`` from your own code);
the module only has to satisfy :class:`~lmforge.models.protocol.CausalLM` or ``Seq2SeqLM``.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from lmforge.registry import Registry

__all__ = ["MODELS", "build_model", "CAPABILITIES", "upgrade_state_dict"]

MODELS: Registry[Any] = Registry("model family")

# family -> "module:callable" (resolved on first use) or a callable.
MODELS.add("transformer", "lmforge.models.transformer:Transformer")
MODELS.add("lstm", "lmforge.models.lstm:LSTMLanguageModel")
MODELS.add("seq2seq_transformer", "lmforge.models.seq2seq.transformer:Seq2SeqTransformer")
MODELS.add("seq2seq_lstm", "lmforge.models.seq2seq.lstm:Seq2SeqLSTM")

# What each family can do; callers check capabilities rather than isinstance.
CAPABILITIES: dict[str, set[str]] = {
    "transformer": {"causal_lm", "embeddings", "kv_cache"},
    "lstm": {"causal_lm", "embeddings"},
    "seq2seq_transformer": {"seq2seq"},
    "seq2seq_lstm": {"seq2seq"},
}


# family -> "module:function" renaming, in place, the keys that older versions of the family saved.
KEY_UPGRADES: dict[str, str] = {
    "seq2seq_transformer": "lmforge.models.seq2seq.transformer:upgrade_state_dict",
}


def _resolve(entry: Any) -> Callable[[Any], Any]:
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        return getattr(importlib.import_module(module), attr)
    return entry


def build_model(config: Any) -> Any:
    """Builds the ``nn.Module`` for a model config, dispatching on ``config.family``."""
    return _resolve(MODELS.get(config.family))(config)


def upgrade_state_dict(model: Any, tensors: dict[str, Any]) -> dict[str, Any]:
    """``tensors`` with the keys an older version of ``model``'s family saved renamed to today's names
    (``model.load_state_dict`` does the same itself; this lets a loader check the names first)."""
    family = getattr(getattr(model, "config", None), "family", None)
    entry = KEY_UPGRADES.get(family) if isinstance(family, str) else None
    return tensors if entry is None else _resolve(entry)(tensors)
