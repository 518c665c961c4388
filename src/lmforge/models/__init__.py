"""Model families: the decoder-only Transformer, the LSTM LM and the seq2seq translators."""

from lmforge.models.registry import CAPABILITIES, MODELS, build_model

__all__ = ["MODELS", "CAPABILITIES", "build_model"]
