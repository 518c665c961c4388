"""The decoder-only Transformer family: :class:`Transformer` and its config, plus the component registries
(``NORMS``, ``POSITIONS``, ``ATTENTION``, ``MLPS``, ``ACTIVATIONS``) that its config names."""

from lmforge.config.transformer import TransformerConfig
from lmforge.models.transformer.attention import ATTENTION
from lmforge.models.transformer.cache import KVCache
from lmforge.models.transformer.ffn import ACTIVATIONS, MLPS
from lmforge.models.transformer.model import Transformer
from lmforge.models.transformer.norms import NORMS
from lmforge.models.transformer.positions import POSITIONS

__all__ = ["Transformer", "TransformerConfig", "KVCache", "ATTENTION", "POSITIONS", "NORMS", "MLPS", "ACTIVATIONS"]
