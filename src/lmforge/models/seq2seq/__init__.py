"""Encoder-decoder translation models: the seq2seq Transformer and the seq2seq LSTM.

Both satisfy :class:`~lmforge.models.protocol.Seq2SeqLM` (``model(src, tgt_in)``, ``encode``, ``decode``) and the
incremental-decoding contract used by :mod:`lmforge.inference.beam_search`: ``start_decoding(src) -> state``,
``decode_step(tgt, state) -> (logits, state)`` and ``state.select(index)``.
"""

from lmforge.models.seq2seq.lstm import LSTMDecodeState, LSTMMemory, Seq2SeqLSTM
from lmforge.models.seq2seq.transformer import Seq2SeqTransformer, TransformerDecodeState

__all__ = ["Seq2SeqTransformer", "Seq2SeqLSTM", "LSTMMemory", "LSTMDecodeState", "TransformerDecodeState"]
