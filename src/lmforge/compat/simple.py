"""The classic model classes: familiar constructors over lmforge's own models (no second implementation).

Each class here is built from keyword arguments people type from memory, over one of lmforge's models:

* :class:`SimpleTransformer` -> :class:`~lmforge.models.seq2seq.transformer.Seq2SeqTransformer`
* :class:`SimpleSeq2SeqLSTM` -> :class:`~lmforge.models.seq2seq.lstm.Seq2SeqLSTM`
* :class:`SimpleLSTM_LM` -> :class:`~lmforge.models.lstm.LSTMLanguageModel` (the ``lstm-classic`` preset)
* :class:`SimpleTransformer_LM` -> :class:`~lmforge.models.transformer.Transformer` (the ``transformer-classic``
  preset's layout: sinusoidal positions, post-norm LayerNorm, ReLU MLP, embeddings scaled by sqrt(d_model))

The two translation classes are the core classes with classic constructors (their contracts are the core's).
The two language-model classes have the classic ``forward``, so they *wrap* the core model by composition
instead of subclassing it (a subclass that changed ``forward`` would break the core's contract): the core model's
submodules are registered on the wrapper under their own names (so ``state_dict`` keys are the core's, and
``load_state_dict`` moves weights either way), and every other attribute (``config``, ``init_state``, ``step``,
``hidden_states``...) is the core model's, so lmforge's generation and ``Embedder`` work on them.

Example:
    >>> import torch
    >>> lstm = SimpleLSTM_LM(vocab_size=100, embedding_dim=16, hidden_dim=16, num_layers=1)
    >>> logits, (h, c) = lstm(torch.randint(0, 100, (2, 5)))
    >>> tuple(logits.shape), tuple(h.shape)
    ((2, 5, 100), (1, 2, 16))
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from torch import Tensor, nn

from lmforge.config.lstm import LSTMConfig
from lmforge.config.presets import get_preset
from lmforge.config.seq2seq import Seq2SeqTransformerConfig
from lmforge.config.transformer import TransformerConfig
from lmforge.inference.generation import generate_ids
from lmforge.models.lstm import LSTMLanguageModel, LSTMState
from lmforge.models.seq2seq.lstm import Seq2SeqLSTM
from lmforge.models.seq2seq.transformer import Seq2SeqTransformer
from lmforge.models.transformer import Transformer

__all__ = ["SimpleTransformer", "SimpleSeq2SeqLSTM", "SimpleLSTM_LM", "SimpleTransformer_LM"]

# Config field -> Seq2SeqTransformerConfig field, for SimpleTransformer(config=Config(...)).
_TRANSFORMER_OVERRIDES = {"d_model": "d_model", "n_heads": "num_heads", "num_encoder_layers": "num_encoder_layers",
                          "num_decoder_layers": "num_decoder_layers", "dim_feedforward": "d_ff",
                          "dropout": "dropout", "max_len": "max_len", "pad_idx": "pad_idx"}


def _generate_ids(model: Any, start_tokens: Sequence[int], max_length: int, sampling: dict) -> list[int]:
    return generate_ids(model, list(start_tokens), max_new_tokens=max_length, **sampling)


class _Wrapped(nn.Module):
    """A classic-signature module over a core model: the core's submodules are this module's children (same
    parameter names), everything else is read from the core, and ``to``/``train`` reach the core itself."""

    def __init__(self, core: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_core", core)  # not a child: its submodules are registered below, by name
        for name, child in core.named_children():
            self._modules[name] = child

    @property
    def core(self) -> nn.Module:
        """The lmforge model this wraps (trainable with lmforge's ``Trainer``)."""
        return self.__dict__["_core"]

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_core"], name)

    def _apply(self, fn: Any, recurse: bool = True) -> "_Wrapped":
        self.core._apply(fn, recurse)  # the shared submodules and the core's own buffers
        return self

    def train(self, mode: bool = True) -> "_Wrapped":
        self.core.train(mode)
        return super().train(mode)

    def generate(self, start_tokens: Sequence[int], max_length: int = 100, **sampling: Any) -> list[int]:
        """``start_tokens`` followed by ``max_length`` generated token ids (LSTM: one step per token with the
        carried ``(h, c)``; Transformer: with the KV cache, the context sliding beyond ``max_seq_len``).

        ``sampling`` takes :class:`~lmforge.inference.sampling.SamplingParams` fields (``temperature=0`` for
        greedy, ``top_k``, ``top_p``, ``seed``, ``stop_token_ids``...); the default samples at temperature 1.
        """
        return _generate_ids(self.core, start_tokens, max_length, sampling)


class SimpleTransformer(_Wrapped):
    """An encoder-decoder Transformer for translation (arXiv:1706.03762), built from flat arguments.

    ``model(src, tgt)`` -> logits ``[batch, tgt_len, tgt_vocab]``; ``model.encode(src)`` -> memory
    ``[batch, src_len, d_model]``; ``model.decode(tgt, memory)`` -> logits. Padding (``pad_idx``) in the source is
    masked. It wraps a :class:`~lmforge.models.seq2seq.transformer.Seq2SeqTransformer` (RoPE in self-attention,
    pre-norm LayerNorm, tied target embedding and output layer by default), reachable as ``model.core``, with
    the same parameter names and methods, so lmforge's beam search and ``lmforge.models.run_folder`` work on it.

    Args:
        src_vocab_size: source vocabulary size.
        tgt_vocab_size: target vocabulary size (default: the source's).
        d_model: model width.
        n_heads: attention heads.
        num_encoder_layers: encoder layers.
        num_decoder_layers: decoder layers.
        dim_feedforward: FFN width (default ``4 * d_model``).
        dropout: dropout rate.
        pad_idx: padding id of both vocabularies.
        max_len: longest sequence in tokens (a hint; RoPE has no hard limit).
        config: an optional :class:`~lmforge.config.Config`; its set fields override the arguments above.
        **options: any other :class:`~lmforge.config.Seq2SeqTransformerConfig` field (``positional``,
            ``norm_placement``, ``share_embeddings``, ``tie_output``...).

    Example:
        >>> import torch
        >>> model = SimpleTransformer(100, 90, d_model=32, n_heads=2, num_encoder_layers=1, num_decoder_layers=1)
        >>> model(torch.randint(1, 100, (2, 7)), torch.randint(1, 90, (2, 5))).shape
        torch.Size([2, 5, 90])
    """

    def __init__(self, src_vocab_size: int = 10000, tgt_vocab_size: Optional[int] = None, d_model: int = 512,
                 n_heads: int = 8, num_encoder_layers: int = 6, num_decoder_layers: int = 6,
                 dim_feedforward: Optional[int] = None, dropout: float = 0.1, pad_idx: int = 0, max_len: int = 256,
                 config: Any = None, **options: Any) -> None:
        data: dict[str, Any] = dict(d_model=d_model, num_heads=n_heads, num_encoder_layers=num_encoder_layers,
                                    num_decoder_layers=num_decoder_layers, d_ff=dim_feedforward, dropout=dropout,
                                    pad_idx=pad_idx, max_len=max_len)
        if config is not None:
            data.update(config.overrides(_TRANSFORMER_OVERRIDES) if hasattr(config, "overrides") else
                        {dst: getattr(config, src) for src, dst in _TRANSFORMER_OVERRIDES.items()
                         if getattr(config, src, None) is not None})
        if data["d_ff"] is None:
            data["d_ff"] = 4 * data["d_model"]  # the original paper's ratio (512 -> 2048)
        data.update(options, src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size or src_vocab_size)
        super().__init__(Seq2SeqTransformer(Seq2SeqTransformerConfig.parse(data, source="SimpleTransformer")))

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:  # type: ignore[override]
        """Logits ``(B, T, tgt_vocab)`` for target inputs ``tgt_in`` given source ids ``src``."""
        return self.core(src, tgt_in)


class SimpleSeq2SeqLSTM(_Wrapped):
    """An encoder-decoder LSTM for translation (arXiv:1409.3215) over lmforge's
    :class:`~lmforge.models.seq2seq.lstm.Seq2SeqLSTM` (``model.core``; same parameter names and methods).

    ``SimpleSeq2SeqLSTM(src_vocab_size, tgt_vocab_size, emb_dim=256, hidden_dim=512, num_layers=2, dropout=0.1,
    pad_idx=0, config=None)``; a :class:`~lmforge.config.Config`'s ``lstm_emb_dim``, ``lstm_hidden_dim``,
    ``lstm_num_layers`` and ``lstm_dropout`` override those arguments. The submodules ``src_embed``, ``encoder``,
    ``tgt_embed``, ``decoder`` and ``output`` are plain ``nn.Embedding``/``nn.LSTM``/``nn.Linear`` (batch first),
    so a hand-written greedy loop can drive them; ``encode``/``decode``/``forward`` work as on
    :class:`SimpleTransformer` (``encode`` returns an ``LSTMMemory`` of outputs, final ``(h, c)`` and mask).

    Example:
        >>> import torch
        >>> lstm = SimpleSeq2SeqLSTM(100, 90, emb_dim=16, hidden_dim=32, num_layers=1)
        >>> _, (h, c) = lstm.encoder(lstm.src_embed(torch.randint(1, 100, (2, 7))))
        >>> out, (h, c) = lstm.decoder(lstm.tgt_embed(torch.full((2, 1), 2)), (h, c))
        >>> lstm.output(out).shape
        torch.Size([2, 1, 90])
    """

    def __init__(self, src_vocab_size: int = 10000, tgt_vocab_size: Optional[int] = None, emb_dim: int = 256,
                 hidden_dim: int = 512, num_layers: int = 2, dropout: float = 0.1, pad_idx: int = 0,
                 config: Any = None, **options: Any) -> None:
        super().__init__(Seq2SeqLSTM(src_vocab_size, tgt_vocab_size, emb_dim=emb_dim, hidden_dim=hidden_dim,
                                     num_layers=num_layers, dropout=dropout, pad_idx=pad_idx, config=config,
                                     **options))

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:  # type: ignore[override]
        """Logits ``(B, T, tgt_vocab)`` for target inputs ``tgt_in`` given source ids ``src``."""
        return self.core(src, tgt_in)


class SimpleLSTM_LM(_Wrapped):
    """The classic LSTM language model (``lstm-classic`` preset): embedding -> stacked LSTM -> linear head.

    At the reference size (``vocab_size=2000, embedding_dim=256, hidden_dim=256, num_layers=2``) it has
    2,078,672 parameters (about 2.1M). ``forward(input_ids, hidden=None) -> (logits, (h, c))`` carries the state
    across calls. It is an :class:`~lmforge.models.lstm.LSTMLanguageModel`; only ``forward`` has the classic
    signature; ``model.core`` is the :class:`~lmforge.models.lstm.LSTMLanguageModel` it wraps (train that with
    lmforge's ``Trainer``; it shares the weights and has the same parameter names).

    Args:
        vocab_size: vocabulary size.
        embedding_dim: embedding width.
        hidden_dim: LSTM width.
        num_layers: stacked LSTM layers.
        dropout: on embeddings, between layers and before the head (arXiv:1409.2329).
        tie_weights: share the embedding and head (needs ``embedding_dim == hidden_dim``; arXiv:1608.05859).
    """

    def __init__(self, vocab_size: int = 2000, embedding_dim: int = 256, hidden_dim: int = 256, num_layers: int = 2,
                 dropout: float = 0.2, tie_weights: bool = False) -> None:
        data = get_preset("lstm-classic")["model"]
        data.update(vocab_size=vocab_size, embedding_dim=embedding_dim, hidden_dim=hidden_dim, num_layers=num_layers,
                    dropout=dropout, tie_embeddings=tie_weights)
        super().__init__(LSTMLanguageModel(LSTMConfig.parse(data, source="SimpleLSTM_LM")))

    def forward(self, input_ids: Tensor, hidden: Optional[LSTMState] = None) -> tuple[Tensor, LSTMState]:  # type: ignore[override]
        """``input_ids`` (B, T) after state ``hidden`` (``None`` = zeros) -> ``(logits (B, T, V), (h, c))``,
        with ``h`` and ``c`` of shape (num_layers, B, hidden_dim), ready to pass back in."""
        return self.core.step(input_ids, hidden)


class SimpleTransformer_LM(_Wrapped):
    """The classic Transformer language model: the ``transformer-classic`` layout (3 layers, 4 heads, d_model 256,
    sinusoidal positions, post-norm LayerNorm, ReLU feed-forward, dropout 0.2, embeddings scaled by
    sqrt(d_model), as in arXiv:1706.03762) with a causal mask.

    The defaults follow the familiar PyTorch layout: a feed-forward width of ``4 * d_model`` and a separate
    output layer, which gives 3,393,280 parameters (about 3.4M) at ``vocab_size=2000``. With
    ``dim_feedforward=512, tie_weights=True`` it is exactly the ``transformer-classic`` preset that
    ``lmforge compare`` trains (2,093,312 parameters). ``forward(input_ids) -> logits``.

    Args:
        vocab_size: vocabulary size.
        d_model: model width.
        nhead: attention heads.
        num_layers: decoder layers.
        dim_feedforward: FFN width (default ``4 * d_model``).
        dropout: dropout on embeddings, attention and residual branches.
        max_seq_len: context length in tokens.
        tie_weights: share the embedding and the output layer (arXiv:1608.05859).
    """

    def __init__(self, vocab_size: int = 2000, d_model: int = 256, nhead: int = 4, num_layers: int = 3,
                 dim_feedforward: Optional[int] = None, dropout: float = 0.2, max_seq_len: int = 256,
                 tie_weights: bool = False) -> None:
        data = get_preset("transformer-classic")["model"]
        data.update(vocab_size=vocab_size, d_model=d_model, num_layers=num_layers, block_size=max_seq_len,
                    dropout=dropout, tie_embeddings=tie_weights)
        data["attention"].update(num_heads=nhead, dropout=dropout)
        data["ffn"].update(hidden_dim=dim_feedforward or 4 * d_model, dropout=dropout)
        super().__init__(Transformer(TransformerConfig.parse(data, source="SimpleTransformer_LM")))

    def forward(self, input_ids: Tensor) -> Tensor:  # type: ignore[override]
        """``input_ids`` (B, T), T <= ``max_seq_len`` -> next-token logits (B, T, V) under a causal mask."""
        logits, _ = self.core(input_ids)
        return logits

