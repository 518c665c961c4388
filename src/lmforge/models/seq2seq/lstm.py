"""The encoder-decoder LSTM (arXiv:1409.3215) with optional attention (arXiv:1508.04025, arXiv:1409.0473).

``src_embed`` -> stacked LSTM ``encoder`` whose final ``(h, c)`` starts the stacked LSTM ``decoder`` over
``tgt_embed`` -> (attention over the encoder outputs, combined as ``tanh(W_c [context; h_t])``) -> ``output``.
A bidirectional encoder gives each direction ``hidden_dim // 2`` units and concatenates the two final states, so
the decoder's state has the same shape either way. Sources are right-padded with ``pad_idx``; padding is packed
away, so it changes neither the final state nor (being masked) the attention.

Letters: B batch, S source length, T target length, E embedding width, H hidden width, L layers, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Optional, Union

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lmforge.config.seq2seq import Seq2SeqLSTMConfig
from lmforge.models.transformer.attention import padding_mask
from lmforge.models.seq2seq.rnn_attention import RNNAttention

__all__ = ["Seq2SeqLSTM", "LSTMMemory", "LSTMDecodeState"]

Hidden = tuple[Tensor, Tensor]  # (h, c), each (L, B, H)

# Fields of a plain config object (issue 9's `Config`) that override the constructor arguments.
_OVERRIDES = {"lstm_emb_dim": "emb_dim", "lstm_hidden_dim": "hidden_dim", "lstm_num_layers": "num_layers",
              "lstm_dropout": "dropout"}


class LSTMMemory(NamedTuple):
    """What :meth:`Seq2SeqLSTM.encode` returns."""

    outputs: Tensor  # (B, S, H) encoder outputs (zeros at padding)
    hidden: Hidden  # final (h, c) of the encoder, (L, B, H) each: the decoder's initial state
    src_mask: Tensor  # (B, S) True for real tokens


@dataclass
class LSTMDecodeState:
    """Incremental decoding state: the decoder's ``(h, c)`` plus the encoder outputs and their attention keys."""

    hidden: Hidden
    outputs: Tensor
    keys: Optional[Tensor]
    src_mask: Tensor
    length: int = 0

    def select(self, index: Tensor) -> "LSTMDecodeState":
        """The state of rows ``index`` (to expand into beams, reorder beams or drop finished sentences)."""
        h, c = self.hidden
        return LSTMDecodeState(
            hidden=(h.index_select(1, index), c.index_select(1, index)),
            outputs=self.outputs.index_select(0, index),
            keys=None if self.keys is None else self.keys.index_select(0, index),
            src_mask=self.src_mask.index_select(0, index),
            length=self.length,
        )


def _resolve_config(src_vocab_size: Any, tgt_vocab_size: Optional[int], config: Any, **kwargs: Any) -> Seq2SeqLSTMConfig:
    if isinstance(src_vocab_size, Seq2SeqLSTMConfig):
        return src_vocab_size
    if isinstance(config, Seq2SeqLSTMConfig):
        data = config.to_dict()
        data.update(src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size or src_vocab_size)
        return Seq2SeqLSTMConfig.parse(data, source="Seq2SeqLSTM")
    data = dict(kwargs, src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size or src_vocab_size)
    if config is not None:
        for attr, key in _OVERRIDES.items():
            value = getattr(config, attr, None)
            if value is not None:
                data[key] = value
    return Seq2SeqLSTMConfig.parse(data, source="Seq2SeqLSTM")


class Seq2SeqLSTM(nn.Module):
    """Encoder-decoder LSTM translator.

    Build it from a :class:`~lmforge.config.Seq2SeqLSTMConfig`, or from plain arguments (an optional ``config``
    object's ``lstm_emb_dim``, ``lstm_hidden_dim``, ``lstm_num_layers`` and ``lstm_dropout`` override them).

    Args:
        src_vocab_size: source vocabulary size, or a ``Seq2SeqLSTMConfig``.
        tgt_vocab_size: target vocabulary size (default: the source's).
        emb_dim: embedding width E.
        hidden_dim: LSTM width H.
        num_layers: stacked LSTM layers L in encoder and decoder.
        dropout: on embeddings, between LSTM layers and before the output layer.
        pad_idx: the padding id of both vocabularies.
        config: optional override object (see above), or a full ``Seq2SeqLSTMConfig``.
        attention: ``"none"``, ``"dot"``, ``"general"`` or ``"additive"``.
        bidirectional_encoder: read the source in both directions.
        tie_output: share the target embedding with the output layer (needs ``emb_dim == hidden_dim``).
        max_len: default longest decoded output.

    Example:
        >>> model = Seq2SeqLSTM(100, 90, emb_dim=16, hidden_dim=32, num_layers=1)
        >>> src, tok = torch.randint(1, 100, (2, 7)), torch.full((2, 1), 2)
        >>> _, (h, c) = model.encoder(model.src_embed(src))
        >>> out, (h, c) = model.decoder(model.tgt_embed(tok), (h, c))
        >>> model.output(out).shape
        torch.Size([2, 1, 90])
    """

    def __init__(
        self,
        src_vocab_size: Union[int, Seq2SeqLSTMConfig] = 10000,
        tgt_vocab_size: Optional[int] = None,
        emb_dim: int = 256,
        hidden_dim: int = 512,
        num_layers: int = 2,
        dropout: float = 0.1,
        pad_idx: int = 0,
        config: Any = None,
        *,
        attention: str = "none",
        bidirectional_encoder: bool = False,
        tie_output: bool = False,
        max_len: int = 256,
    ) -> None:
        super().__init__()
        cfg = self.config = _resolve_config(
            src_vocab_size, tgt_vocab_size, config, emb_dim=emb_dim, hidden_dim=hidden_dim, num_layers=num_layers,
            dropout=dropout, pad_idx=pad_idx, attention=attention, bidirectional_encoder=bidirectional_encoder,
            tie_output=tie_output, max_len=max_len,
        )
        self.pad_idx, self.max_len = cfg.pad_idx, cfg.max_len
        between = cfg.dropout if cfg.num_layers > 1 else 0.0
        bi = cfg.bidirectional_encoder
        self.src_embed = nn.Embedding(cfg.src_vocab_size, cfg.emb_dim, padding_idx=cfg.pad_idx)
        self.encoder = nn.LSTM(cfg.emb_dim, cfg.hidden_dim // 2 if bi else cfg.hidden_dim, cfg.num_layers,
                               batch_first=True, dropout=between, bidirectional=bi)
        self.tgt_embed = nn.Embedding(cfg.tgt_vocab_size, cfg.emb_dim, padding_idx=cfg.pad_idx)
        self.decoder = nn.LSTM(cfg.emb_dim, cfg.hidden_dim, cfg.num_layers, batch_first=True, dropout=between)
        self.attention = None if cfg.attention == "none" else RNNAttention(cfg.attention, cfg.hidden_dim)
        # Luong's attentional hidden state h~ = tanh(W_c [c_t; h_t]) (arXiv:1508.04025, eq. 5).
        self.combine = None if self.attention is None else nn.Linear(2 * cfg.hidden_dim, cfg.hidden_dim, bias=False)
        self.output = nn.Linear(cfg.hidden_dim, cfg.tgt_vocab_size)
        self.drop = nn.Dropout(cfg.dropout)
        # Uniform init in [-0.1, 0.1], as in arXiv:1409.3215 and arXiv:1508.04025.
        for p in self.parameters():
            nn.init.uniform_(p, -0.1, 0.1)
        with torch.no_grad():
            self.src_embed.weight[cfg.pad_idx].zero_()
            self.tgt_embed.weight[cfg.pad_idx].zero_()
        if cfg.tie_output:
            self.output.weight = self.tgt_embed.weight

    def encode(self, src: Tensor) -> LSTMMemory:
        """Encodes right-padded ``src`` (B, S) into an :class:`LSTMMemory` (outputs, final ``(h, c)``, mask)."""
        mask = padding_mask(src, self.pad_idx)
        emb = self.drop(self.src_embed(src))  # (B, S, E)
        lengths = mask.sum(dim=1).cpu()
        packed = pack_padded_sequence(emb, lengths, batch_first=True, enforce_sorted=False)
        out, (h, c) = self.encoder(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=src.size(1))  # (B, S, H)
        if self.config.bidirectional_encoder:
            layers, b = self.config.num_layers, src.size(0)
            # (2L, B, H/2) -> (L, B, H): concatenate the forward and backward final states of each layer.
            h = h.view(layers, 2, b, -1).permute(0, 2, 1, 3).reshape(layers, b, -1)
            c = c.view(layers, 2, b, -1).permute(0, 2, 1, 3).reshape(layers, b, -1)
        return LSTMMemory(out, (h, c), mask)

    def _state(self, memory: LSTMMemory) -> LSTMDecodeState:
        keys = None if self.attention is None else self.attention.keys(memory.outputs)
        return LSTMDecodeState(memory.hidden, memory.outputs, keys, memory.src_mask)

    def start_decoding(self, src: Tensor) -> LSTMDecodeState:
        """Encodes ``src`` (B, S) and prepares the decoder state (attention keys computed once)."""
        return self._state(self.encode(src))

    def decode_step(self, tgt: Tensor, state: LSTMDecodeState) -> tuple[Tensor, LSTMDecodeState]:
        """Feeds ``tgt`` (B, T) after what ``state`` has seen -> logits (B, T, V) and the new state."""
        out, hidden = self.decoder(self.drop(self.tgt_embed(tgt)), state.hidden)  # (B, T, H)
        if self.attention is not None:
            ctx, _ = self.attention(out, state.keys, state.outputs, state.src_mask)  # (B, T, H)
            out = torch.tanh(self.combine(torch.cat((ctx, out), dim=-1)))
        logits = self.output(self.drop(out))
        return logits, LSTMDecodeState(hidden, state.outputs, state.keys, state.src_mask, state.length + tgt.size(1))

    def decode(self, tgt_in: Tensor, memory: LSTMMemory) -> Tensor:
        """Decodes ``tgt_in`` (B, T) (starting with ``<bos>``) from :meth:`encode`'s memory -> logits (B, T, V)."""
        logits, _ = self.decode_step(tgt_in, self._state(memory))
        return logits

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """``src`` (B, S), ``tgt_in`` (B, T) -> logits (B, T, V); source padding (``pad_idx``) is ignored."""
        return self.decode(tgt_in, self.encode(src))

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        c = self.config
        return (f"params={n:,}, emb_dim={c.emb_dim}, hidden_dim={c.hidden_dim}, layers={c.num_layers}, "
                f"attention={c.attention}, bidirectional_encoder={c.bidirectional_encoder}")
