"""lmforge: train, compare and use small LSTM and Transformer language models."""

__version__ = "0.1.0"

__all__ = ["__version__"]
