"""lmforge: train, compare and use small LSTM and Transformer language models.

The public Python API, loaded lazily so that ``import lmforge`` stays light:

    >>> import lmforge
    >>> lm = lmforge.load("runs/latest")            # doctest: +SKIP
    >>> print(lm.generate("ROMEO:", max_new_tokens=50))  # doctest: +SKIP

``load`` returns an :class:`LM` (language-model runs) or a :class:`Translator` (translation runs).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "load", "LM", "Translator", "RunConfig"]

_LAZY = {
    "load": ("lmforge.api", "load"),
    "LM": ("lmforge.api", "LM"),
    "Translator": ("lmforge.inference.translate", "Translator"),
    "RunConfig": ("lmforge.config.run", "RunConfig"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'lmforge' has no attribute {name!r}")
