"""Model families: the decoder-only Transformer, the LSTM LM and the seq2seq translators."""

from typing import Any

from lmforge.models.registry import CAPABILITIES, MODELS, build_model

# The classic entry-point classes (lmforge.models.simple), imported on first use so that importing
# lmforge.models stays torch-free.
_SIMPLE = ("SimpleTransformer", "SimpleSeq2SeqLSTM", "SimpleLSTM_LM", "SimpleTransformer_LM")

__all__ = ["MODELS", "CAPABILITIES", "build_model", *_SIMPLE]


def __getattr__(name: str) -> Any:
    if name in _SIMPLE:
        from lmforge.models import simple

        return getattr(simple, name)
    raise AttributeError(f"module 'lmforge.models' has no attribute {name!r}")
