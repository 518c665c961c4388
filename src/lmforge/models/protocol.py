"""The contracts every model family satisfies, so training, generation, chat and embeddings treat them alike.

Language models (``transformer``, ``lstm``) satisfy :class:`CausalLM`; translation models (``seq2seq_*``)
satisfy :class:`Seq2SeqLM`. These are structural ``Protocol`` types: no base class to inherit.

Shapes: B = batch, T = time (tokens), V = vocabulary, D = hidden width.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol, runtime_checkable

from torch import Tensor

__all__ = ["CausalLM", "Seq2SeqLM", "DecodeState"]

# An opaque per-family decoding state: a KV cache for the Transformer, ``(h, c)`` for the LSTM.
DecodeState = Any


@runtime_checkable
class CausalLM(Protocol):
    """A next-token language model.

    Attributes:
        config: the family's config (``TransformerConfig`` or ``LSTMConfig``).
        max_context: the longest sequence the model can attend to (``block_size``), or ``None`` (LSTM).
        hidden_size: width D of :meth:`hidden_states`.
    """

    config: Any
    max_context: Optional[int]
    hidden_size: int

    def forward(self, idx: Tensor, targets: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        """``idx`` (B, T) -> ``(logits (B, T, V), loss)``; ``loss`` is the mean cross-entropy over targets that are
        not -100, or ``None`` without targets."""
        ...

    def init_state(self, batch_size: int) -> DecodeState:
        """A fresh, empty decoding state for ``batch_size`` sequences (on the model's device)."""
        ...

    def step(self, idx: Tensor, state: DecodeState, attention_mask: Optional[Tensor] = None) -> tuple[Tensor, DecodeState]:
        """Feeds ``idx`` (B, T) after what ``state`` has seen; returns ``(logits (B, T, V), new_state)``.

        The logits equal those of a full :meth:`forward` over everything fed so far (cache == no cache).
        ``attention_mask`` (B, T) marks real tokens with 1 and left padding with 0; padded positions neither
        change the state nor shift positions, so a left-padded batch gives each row the same logits as that
        row alone. The state may be updated in place; always use the returned one.
        """
        ...

    def hidden_states(self, idx: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        """Final-layer hidden states (B, T, D) (after the final norm where there is one), for pooling into
        embeddings. Right padding marked 0 in ``attention_mask`` does not change the states of real tokens."""
        ...


@runtime_checkable
class Seq2SeqLM(Protocol):
    """An encoder-decoder translation model."""

    config: Any

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """``src`` (B, S), ``tgt_in`` (B, T) -> logits (B, T, V_tgt); padding (``pad_idx``) is masked."""
        ...

    def encode(self, src: Tensor) -> Any:
        """Encodes the source once (memory, plus whatever the decoder needs, such as the source mask)."""
        ...

    def decode(self, tgt_in: Tensor, memory: Any) -> Tensor:
        """Decodes ``tgt_in`` against ``memory`` -> logits (B, T, V_tgt)."""
        ...
