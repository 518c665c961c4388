"""The encoder-decoder Transformer (arXiv:1706.03762) for translation.

Self-attention uses RoPE by default (arXiv:2104.09864, rotating Q and K inside attention) or the sinusoidal table;
cross-attention has no position term. Pre-norm (arXiv:2002.04745) or post-norm, LayerNorm or RMSNorm
(arXiv:1910.07467). The target embedding is tied to the output layer by default (arXiv:1608.05859).

Incremental decoding: :meth:`Seq2SeqTransformer.start_decoding` encodes the source and computes every decoder
layer's cross-attention keys/values once; :meth:`~Seq2SeqTransformer.decode_step` then feeds new target tokens,
extending a per-layer self-attention KV cache. Letters: B batch, S source length, T target length, D width,
V target vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from lmforge.config.seq2seq import Seq2SeqTransformerConfig
from lmforge.models.seq2seq.attention import MultiHeadAttention, RotaryEmbedding, padding_mask, sinusoidal_table

__all__ = ["Seq2SeqTransformer", "TransformerDecodeState"]

KV = tuple[Tensor, Tensor]


def _norm(kind: str, d: int) -> nn.Module:
    return nn.RMSNorm(d) if kind == "rmsnorm" else nn.LayerNorm(d)


class _FeedForward(nn.Module):
    def __init__(self, d: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.fc1, self.fc2, self.drop = nn.Linear(d, d_ff), nn.Linear(d_ff, d), nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


class _Sublayer(nn.Module):
    """A residual branch with its norm: pre-norm ``x + f(norm(x))`` or post-norm ``norm(x + f(x))``."""

    def __init__(self, cfg: Seq2SeqTransformerConfig) -> None:
        super().__init__()
        self.norm = _norm(cfg.norm_type, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.pre = cfg.norm_placement == "pre"

    def inp(self, x: Tensor) -> Tensor:
        return self.norm(x) if self.pre else x

    def out(self, x: Tensor, y: Tensor) -> Tensor:
        x = x + self.drop(y)
        return x if self.pre else self.norm(x)


class EncoderLayer(nn.Module):
    """Self-attention over the source, then a feed-forward block."""

    def __init__(self, cfg: Seq2SeqTransformerConfig, rope: Optional[RotaryEmbedding]) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.num_heads, cfg.dropout, rope)
        self.ffn = _FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout)
        self.sub1, self.sub2 = _Sublayer(cfg), _Sublayer(cfg)

    def forward(self, x: Tensor, src_mask: Tensor) -> Tensor:
        y, _ = self.self_attn.self_attention(self.sub1.inp(x), key_mask=src_mask)
        x = self.sub1.out(x, y)
        return self.sub2.out(x, self.ffn(self.sub2.inp(x)))


class DecoderLayer(nn.Module):
    """Causal self-attention (with an optional KV cache), cross-attention to the source, feed-forward."""

    def __init__(self, cfg: Seq2SeqTransformerConfig, rope: Optional[RotaryEmbedding]) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.num_heads, cfg.dropout, rope)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.num_heads, cfg.dropout, None)
        self.ffn = _FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout)
        self.sub1, self.sub2, self.sub3 = _Sublayer(cfg), _Sublayer(cfg), _Sublayer(cfg)

    def forward(self, x: Tensor, cross_kv: KV, src_mask: Tensor, cache: Optional[KV] = None) -> tuple[Tensor, KV]:
        y, new_cache = self.self_attn.self_attention(self.sub1.inp(x), causal=True, cache=cache)
        x = self.sub1.out(x, y)
        x = self.sub2.out(x, self.cross_attn.cross_attention(self.sub2.inp(x), cross_kv, src_mask))
        return self.sub3.out(x, self.ffn(self.sub3.inp(x))), new_cache


@dataclass
class TransformerDecodeState:
    """What incremental decoding carries: per-layer cross-attention K/V (computed once), the source mask, and the
    per-layer self-attention cache of the target positions fed so far."""

    cross_kv: list[KV]
    src_mask: Tensor  # (B, S)
    self_kv: list[Optional[KV]]
    length: int = 0

    def select(self, index: Tensor) -> "TransformerDecodeState":
        """The state of rows ``index`` (to expand into beams, reorder beams or drop finished sentences)."""
        pick = lambda kv: None if kv is None else (kv[0].index_select(0, index), kv[1].index_select(0, index))  # noqa: E731
        return TransformerDecodeState(
            cross_kv=[pick(kv) for kv in self.cross_kv],
            src_mask=self.src_mask.index_select(0, index),
            self_kv=[pick(kv) for kv in self.self_kv],
            length=self.length,
        )


class Seq2SeqTransformer(nn.Module):
    """Encoder-decoder Transformer.

    Args:
        config: a :class:`~lmforge.config.Seq2SeqTransformerConfig`.

    Example:
        >>> from lmforge.config import Seq2SeqTransformerConfig
        >>> cfg = Seq2SeqTransformerConfig(src_vocab_size=100, tgt_vocab_size=90, d_model=32, num_heads=2,
        ...                                num_encoder_layers=1, num_decoder_layers=1, d_ff=64)
        >>> model = Seq2SeqTransformer(cfg)
        >>> src, tgt = torch.randint(1, 100, (2, 7)), torch.randint(1, 90, (2, 5))
        >>> model(src, tgt).shape
        torch.Size([2, 5, 90])
    """

    def __init__(self, config: Seq2SeqTransformerConfig) -> None:
        super().__init__()
        cfg = self.config = config
        self.pad_idx = cfg.pad_idx
        self.max_len = cfg.max_len
        self.src_embed = nn.Embedding(cfg.src_vocab_size, cfg.d_model, padding_idx=cfg.pad_idx)
        self.tgt_embed = (
            self.src_embed if cfg.share_embeddings
            else nn.Embedding(cfg.tgt_vocab_size, cfg.d_model, padding_idx=cfg.pad_idx)
        )
        rope = RotaryEmbedding(cfg.d_model // cfg.num_heads, cfg.rope_base) if cfg.positional == "rope" else None
        if rope is None:
            self.register_buffer("pos_table", sinusoidal_table(cfg.max_len, cfg.d_model), persistent=False)
        self.embed_drop = nn.Dropout(cfg.dropout)
        self.encoder_layers = nn.ModuleList(EncoderLayer(cfg, rope) for _ in range(cfg.num_encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(cfg, rope) for _ in range(cfg.num_decoder_layers))
        pre = cfg.norm_placement == "pre"
        # Pre-norm stacks end with a norm (the residual stream is never normalised inside them).
        self.encoder_norm = _norm(cfg.norm_type, cfg.d_model) if pre else nn.Identity()
        self.decoder_norm = _norm(cfg.norm_type, cfg.d_model) if pre else nn.Identity()
        self.output = nn.Linear(cfg.d_model, cfg.tgt_vocab_size, bias=False)
        self._init_weights()
        if cfg.tie_output:
            self.output.weight = self.tgt_embed.weight

    def _init_weights(self) -> None:
        for name, p in self.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                nn.init.xavier_uniform_(p)
            elif name.endswith(".bias") and "norm" not in name:
                nn.init.zeros_(p)
        # Embeddings ~ N(0, 1/D), scaled by sqrt(D) on input, so inputs and tied logits both start near unit scale.
        for emb in {id(self.src_embed): self.src_embed, id(self.tgt_embed): self.tgt_embed}.values():
            nn.init.normal_(emb.weight, std=self.config.d_model ** -0.5)
            with torch.no_grad():
                emb.weight[self.pad_idx].zero_()

    def _embed(self, emb: nn.Embedding, ids: Tensor, offset: int) -> Tensor:
        x = emb(ids) * math.sqrt(self.config.d_model)  # (B, T, D)
        if self.config.positional == "sinusoidal":
            end = offset + ids.size(1)
            if end > self.pos_table.size(0):
                self.pos_table = sinusoidal_table(max(end, 2 * self.pos_table.size(0)), self.config.d_model).to(x.device)
            x = x + self.pos_table[offset:end].to(x.dtype)
        return self.embed_drop(x)

    def encode(self, src: Tensor) -> Tensor:
        """Encodes ``src`` (B, S) into memory (B, S, D).

        The source padding mask (``True`` for real tokens) is attached to the result as ``memory.src_mask``, which
        :meth:`decode` uses when it is not given one.
        """
        mask = padding_mask(src, self.pad_idx)
        x = self._embed(self.src_embed, src, 0)
        for layer in self.encoder_layers:
            x = layer(x, mask)
        memory = self.encoder_norm(x)
        memory.src_mask = mask  # type: ignore[attr-defined]
        return memory

    def start_decoding(self, src: Tensor) -> TransformerDecodeState:
        """Encodes ``src`` (B, S) and computes every layer's cross-attention keys/values once."""
        return self._state_from_memory(self.encode(src), None)

    def _state_from_memory(self, memory: Tensor, src_mask: Optional[Tensor]) -> TransformerDecodeState:
        if src_mask is None:
            src_mask = getattr(memory, "src_mask", None)
        if src_mask is None:
            src_mask = torch.ones(memory.shape[:2], dtype=torch.bool, device=memory.device)
        cross = [layer.cross_attn.project_kv(memory) for layer in self.decoder_layers]
        return TransformerDecodeState(cross, src_mask, [None] * len(self.decoder_layers))

    def decode_step(self, tgt: Tensor, state: TransformerDecodeState) -> tuple[Tensor, TransformerDecodeState]:
        """Feeds ``tgt`` (B, T) after the positions ``state`` has seen; returns logits (B, T, V) and the new state.

        The logits equal those of :meth:`decode` over everything fed so far (cache == no cache).
        """
        x = self._embed(self.tgt_embed, tgt, state.length)
        new_kv: list[Optional[KV]] = []
        for layer, cross, cache in zip(self.decoder_layers, state.cross_kv, state.self_kv):
            x, kv = layer(x, cross, state.src_mask, cache)
            new_kv.append(kv)
        logits = self.output(self.decoder_norm(x))
        return logits, TransformerDecodeState(state.cross_kv, state.src_mask, new_kv, state.length + tgt.size(1))

    def decode(self, tgt_in: Tensor, memory: Tensor, src_mask: Optional[Tensor] = None) -> Tensor:
        """Decodes ``tgt_in`` (B, T) against ``memory`` (B, S, D) from :meth:`encode` -> logits (B, T, V).

        Args:
            tgt_in: target ids starting with ``<bos>``.
            memory: the encoder output.
            src_mask: (B, S) ``True`` for real source tokens; default ``memory.src_mask`` when :meth:`encode` made
                ``memory``, else no masking.
        """
        logits, _ = self.decode_step(tgt_in, self._state_from_memory(memory, src_mask))
        return logits

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """``src`` (B, S), ``tgt_in`` (B, T) -> logits (B, T, V); source padding (``pad_idx``) is masked."""
        return self.decode(tgt_in, self.encode(src))

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        c = self.config
        return (f"params={n:,}, d_model={c.d_model}, heads={c.num_heads}, layers={c.num_encoder_layers}+"
                f"{c.num_decoder_layers}, positional={c.positional}, norm={c.norm_type}/{c.norm_placement}")
