"""The Transformer parts, used once by every Transformer family (decoder-only here, encoder-decoder in
:mod:`lmforge.models.seq2seq.transformer`), and the decoder-only :class:`Transformer`.

- ``ATTENTION`` (attention.py): mha/gqa/mqa/complex attention; self-attention and cross-attention.
- :class:`KVCache` (cache.py): the one key/value cache (self and cross), with ``select`` for beam search.
- ``POSITIONS`` (positions.py): rope, alibi, sinusoidal, learned, none. ``NORMS`` (norms.py).
  ``MLPS``/``ACTIVATIONS`` (ffn.py): swiglu, geglu, mlp.
- :class:`Block` (model.py): one layer, optionally with cross-attention.
- :func:`fast_decoder` (decode.py, compiled.py): the Transformer's fast incremental decoding path.
"""

from lmforge.config.transformer import TransformerConfig
from lmforge.models.transformer.attention import ATTENTION
from lmforge.models.transformer.cache import KVCache
from lmforge.models.transformer.decode import compile_decoding, fast_decoder
from lmforge.models.transformer.ffn import ACTIVATIONS, MLPS
from lmforge.models.transformer.model import Block, Transformer
from lmforge.models.transformer.norms import NORMS
from lmforge.models.transformer.positions import POSITIONS

__all__ = ["Transformer", "TransformerConfig", "Block", "KVCache", "ATTENTION", "POSITIONS", "NORMS", "MLPS",
           "ACTIVATIONS", "fast_decoder", "compile_decoding"]
