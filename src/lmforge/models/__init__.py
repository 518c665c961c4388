"""Model families: the decoder-only Transformer, the LSTM LM and the seq2seq translators."""

import importlib
from typing import Any

from lmforge.models.registry import CAPABILITIES, MODELS, build_model

# The classic entry-point classes live in lmforge.compat.simple (a layer above this one); these names stay
# importable from here, for the documented ``from lmforge.models import SimpleTransformer``, through a forward
# resolved on first use (no import of the upper layer at import time, so no cycle).
_SIMPLE = ("SimpleTransformer", "SimpleSeq2SeqLSTM", "SimpleLSTM_LM", "SimpleTransformer_LM")

__all__ = ["MODELS", "CAPABILITIES", "build_model", *_SIMPLE]


def __getattr__(name: str) -> Any:
    if name in _SIMPLE:
        return getattr(importlib.import_module("lmforge.compat.simple"), name)
    raise AttributeError(f"module 'lmforge.models' has no attribute {name!r}")
