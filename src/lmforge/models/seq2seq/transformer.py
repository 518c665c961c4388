"""The encoder-decoder Transformer (arXiv:1706.03762) for translation, built from the decoder-only
Transformer's parts (:mod:`lmforge.models.transformer`): an encoder layer is a :class:`Block` with a
bidirectional padding mask, a decoder layer is a :class:`Block` with cross-attention, and incremental decoding
keeps everything in the one :class:`KVCache`.

Self-attention uses RoPE by default (arXiv:2104.09864, rotating Q and K inside attention) or the sinusoidal table;
cross-attention has no position term. Pre-norm (arXiv:2002.04745) or post-norm, LayerNorm or RMSNorm
(arXiv:1910.07467), a ReLU MLP. The target embedding is tied to the output layer by default (arXiv:1608.05859).

Incremental decoding: :meth:`Seq2SeqTransformer.start_decoding` encodes the source and computes every decoder
layer's cross-attention keys/values once; :meth:`~Seq2SeqTransformer.decode_step` then feeds new target tokens,
extending the self-attention cache. Letters: B batch, S source length, T target length, D width, V target
vocabulary.

Weights saved before the parts were shared (separate ``q_proj``/``k_proj``/``v_proj``, ``fc1``/``fc2``,
``sub1.norm``...) are renamed on load by :func:`upgrade_state_dict`.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor, nn

from lmforge.config.seq2seq import Seq2SeqTransformerConfig
from lmforge.models.transformer.attention import AttnMask, SelfAttention, causal_after, padding_mask
from lmforge.models.transformer.cache import KVCache
from lmforge.models.transformer.ffn import MLP
from lmforge.models.transformer.model import Block
from lmforge.models.transformer.norms import NORMS
from lmforge.models.transformer.positions import RotaryEmbedding, SinusoidalPositions

__all__ = ["Seq2SeqTransformer", "TransformerDecodeState", "upgrade_state_dict"]

TransformerDecodeState = KVCache  # the decoding state is the one KV cache (its ``select`` picks rows)


def _layer(cfg: Seq2SeqTransformerConfig, cross: bool) -> Block:
    """An encoder layer (``cross`` False) or a decoder layer."""
    eps = 1e-5 if cfg.norm_type == "layernorm" else None  # the epsilons of torch's nn.LayerNorm / nn.RMSNorm
    norm = NORMS.get(cfg.norm_type)
    attn = lambda: SelfAttention(cfg.d_model, cfg.num_heads, cfg.num_heads, cfg.d_model // cfg.num_heads,  # noqa: E731
                                 bias=True, dropout=cfg.dropout, use_flash_attn=True)
    return Block(attn(), MLP(cfg.d_model, cfg.d_ff, "relu", bias=True, dropout=cfg.dropout),
                 lambda: norm(cfg.d_model, eps), cfg.norm_placement, cfg.dropout, cross_attn=attn() if cross else None)


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
        rng_state = torch.random.get_rng_state()
        self.src_embed = nn.Embedding(cfg.src_vocab_size, cfg.d_model, padding_idx=cfg.pad_idx)
        self.tgt_embed = (
            self.src_embed if cfg.share_embeddings
            else nn.Embedding(cfg.tgt_vocab_size, cfg.d_model, padding_idx=cfg.pad_idx)
        )
        self.head_dim = cfg.d_model // cfg.num_heads
        self.pos = (RotaryEmbedding(self.head_dim, cfg.rope_base) if cfg.positional == "rope"
                    else SinusoidalPositions(cfg.d_model))
        self.embed_drop = nn.Dropout(cfg.dropout)
        self.encoder_layers = nn.ModuleList(_layer(cfg, False) for _ in range(cfg.num_encoder_layers))
        self.decoder_layers = nn.ModuleList(_layer(cfg, True) for _ in range(cfg.num_decoder_layers))
        # Pre-norm stacks end with a norm (the residual stream is never normalised inside them).
        final = (lambda: NORMS.get(cfg.norm_type)(cfg.d_model, 1e-5 if cfg.norm_type == "layernorm" else None)) \
            if cfg.norm_placement == "pre" else nn.Identity
        self.encoder_norm, self.decoder_norm = final(), final()
        self.output = nn.Linear(cfg.d_model, cfg.tgt_vocab_size, bias=False)
        self._init_weights(rng_state)
        if cfg.tie_output:
            self.output.weight = self.tgt_embed.weight
        self.register_load_state_dict_pre_hook(_upgrade_hook)

    def _init_weights(self, rng_state: Tensor) -> None:
        """Xavier-uniform matrices, zero biases, N(0, 1/D) embeddings (scaled by sqrt(D) on input, so inputs and
        tied logits both start near unit scale). The random stream is rewound to ``rng_state`` (taken before
        the layers were built) and consumed exactly as the model did before its parts were shared, so a seed
        gives the same weights and the same training run as it did then."""
        torch.random.set_rng_state(rng_state)
        d = self.config.d_model
        embeds = {id(self.src_embed): self.src_embed, id(self.tgt_embed): self.tgt_embed}.values()
        for emb in embeds:  # what building the old modules drew: embeddings, then each nn.Linear
            torch.empty_like(emb.weight).normal_()
        for layer in [*self.encoder_layers, *self.decoder_layers]:
            for shape in _legacy_linears(layer, d):
                torch.empty(shape).uniform_()
                torch.empty(shape[0]).uniform_()
        torch.empty_like(self.output.weight).uniform_()
        for layer in [*self.encoder_layers, *self.decoder_layers]:
            for w in _matrices(layer, d):
                nn.init.xavier_uniform_(w)
        nn.init.xavier_uniform_(self.output.weight)  # (tied to the target embedding only afterwards)
        for name, p in self.named_parameters():
            if name.endswith(".bias") and "norm" not in name:
                nn.init.zeros_(p)
        for emb in embeds:
            nn.init.normal_(emb.weight, std=d ** -0.5)
            with torch.no_grad():
                emb.weight[self.pad_idx].zero_()

    def _embed(self, emb: nn.Embedding, ids: Tensor, positions: Tensor) -> tuple[Tensor, Any]:
        """Scaled embeddings (B, T, D) plus position vectors, and the rotary angles (RoPE only)."""
        x = emb(ids) * math.sqrt(self.config.d_model)  # (B, T, D)
        return self.embed_drop(self.pos.embed(x, positions)), self.pos.rotary(positions)

    def encode(self, src: Tensor) -> Tensor:
        """Encodes ``src`` (B, S) into memory (B, S, D).

        The source padding mask (``True`` for real tokens) is attached to the result as ``memory.src_mask``, which
        :meth:`decode` uses when it is not given one.
        """
        mask = padding_mask(src, self.pad_idx)
        x, rope = self._embed(self.src_embed, src, torch.arange(src.size(1), device=src.device)[None])
        attn_mask = AttnMask(mask[:, None, None, :])  # (B, 1, 1, S): bidirectional over real tokens
        for layer in self.encoder_layers:
            x = layer(x, rope, attn_mask)
        memory = self.encoder_norm(x)
        memory.src_mask = mask  # type: ignore[attr-defined]
        return memory

    def start_decoding(self, src: Tensor) -> KVCache:
        """Encodes ``src`` (B, S) and computes every layer's cross-attention keys/values once."""
        return self._state_from_memory(self.encode(src))

    def _state_from_memory(self, memory: Tensor) -> KVCache:
        cfg = self.config
        state = KVCache(cfg.num_decoder_layers, memory.size(0), cfg.num_heads, self.head_dim, None,
                        device=memory.device, dtype=memory.dtype, capacity=16)
        state.cross = [layer.cross_attn.project_kv(memory) for layer in self.decoder_layers]
        state.cross_valid = memory.src_mask  # type: ignore[attr-defined]
        return state

    def decode_step(self, tgt: Tensor, state: KVCache) -> tuple[Tensor, KVCache]:
        """Feeds ``tgt`` (B, T) after the positions ``state`` has seen; returns logits (B, T, V) and the state
        (updated in place).

        The logits equal those of :meth:`decode` over everything fed so far (cache == no cache).
        """
        t, start = tgt.size(1), state.length
        q_pos, k_pos, _, _ = state.begin(t, None)
        logits = self._decoder(tgt, q_pos, causal_after(start, t, q_pos, k_pos), state.cross, state.cross_valid, state)
        state.commit(t)
        return logits, state

    def _decoder(self, tgt: Tensor, positions: Tensor, mask: AttnMask, cross: list[tuple[Tensor, Tensor]],
                 src_mask: Tensor, cache: Optional[KVCache] = None) -> Tensor:
        """The decoder stack over ``tgt`` (B, T) at ``positions`` -> logits (B, T, V)."""
        x, rope = self._embed(self.tgt_embed, tgt, positions)
        src = AttnMask(src_mask[:, None, None, :])  # (B, 1, 1, S)
        for i, (layer, (k, v)) in enumerate(zip(self.decoder_layers, cross)):
            x = layer(x, rope, mask, cache, i, cross=(k, v, src))
        return self.output(self.decoder_norm(x))

    def decode(self, tgt_in: Tensor, memory: Tensor, src_mask: Optional[Tensor] = None) -> Tensor:
        """Decodes ``tgt_in`` (B, T) against ``memory`` (B, S, D) from :meth:`encode` -> logits (B, T, V),
        without a cache (what training runs).

        Args:
            tgt_in: target ids starting with ``<bos>``.
            memory: the encoder output.
            src_mask: (B, S) ``True`` for real source tokens; default ``memory.src_mask`` when :meth:`encode` made
                ``memory``, else no masking.
        """
        if src_mask is None:
            src_mask = getattr(memory, "src_mask", None)
        if src_mask is None:
            src_mask = torch.ones(memory.shape[:2], dtype=torch.bool, device=memory.device)
        cross = [layer.cross_attn.project_kv(memory) for layer in self.decoder_layers]
        positions = torch.arange(tgt_in.size(1), device=tgt_in.device)[None]  # (1, T)
        return self._decoder(tgt_in, positions, AttnMask(is_causal=tgt_in.size(1) > 1), cross, src_mask)

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """``src`` (B, S), ``tgt_in`` (B, T) -> logits (B, T, V); source padding (``pad_idx``) is masked."""
        return self.decode(tgt_in, self.encode(src))

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        c = self.config
        return (f"params={n:,}, d_model={c.d_model}, heads={c.num_heads}, layers={c.num_encoder_layers}+"
                f"{c.num_decoder_layers}, positional={c.positional}, norm={c.norm_type}/{c.norm_placement}")


def _attn_matrices(attn: nn.Module, d: int) -> list[Tensor]:
    return [*attn.qkv.weight.data.split(d), attn.o_proj.weight.data]  # Q, K, V, output: (D, D) each


def _matrices(layer: Block, d: int) -> list[Tensor]:
    """The layer's weight matrices in the order the model initialised them before its parts were shared."""
    cross = [] if layer.cross_attn is None else _attn_matrices(layer.cross_attn, d)
    return [*_attn_matrices(layer.attn, d), *cross, layer.ffn.w_in.weight.data, layer.ffn.w_out.weight.data]


def _legacy_linears(layer: Block, d: int) -> list[tuple[int, int]]:
    """The (out, in) shapes of the nn.Linear layers (all with biases) the old layer was built from, in order."""
    return [tuple(w.shape) for w in _matrices(layer, d)]


# Old name -> new name inside a layer, for weights saved before the layers were the shared Block.
_RENAMES = {"self_attn.out_proj.": "attn.o_proj.", "cross_attn.out_proj.": "cross_attn.o_proj.",
            "ffn.fc1.": "ffn.w_in.", "ffn.fc2.": "ffn.w_out.", "sub1.norm.": "norm_attn."}
_LAST_NORM = {"encoder_layers": {"sub2.norm.": "norm_ffn."},
              "decoder_layers": {"sub2.norm.": "norm_cross.", "sub3.norm.": "norm_ffn."}}


def upgrade_state_dict(sd: dict[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """Renames, in place, the keys of a state dict saved by the old seq2seq Transformer (separate Q/K/V
    projections, ``fc1``/``fc2``, ``subN.norm``) to the shared parts' names (fused ``qkv``, ``w_in``/``w_out``,
    ``norm_attn``/``norm_cross``/``norm_ffn``). A new-format dict is returned unchanged."""
    for key in [k for k in sd if k.startswith(prefix)]:
        rest = key[len(prefix):]
        stack, _, tail = rest.partition(".")
        if stack not in _LAST_NORM:
            continue
        index, _, name = tail.partition(".")
        head = f"{prefix}{stack}.{index}."
        for old, new in {**_RENAMES, **_LAST_NORM[stack]}.items():
            if name.startswith(old):
                sd[head + new + name[len(old):]] = sd.pop(key)
        for attn in ("self_attn", "cross_attn"):
            for kind in ("weight", "bias"):
                q = f"{head}{attn}.q_proj.{kind}"
                if name == f"{attn}.q_proj.{kind}" and q in sd:
                    parts = [sd.pop(f"{head}{attn}.{p}_proj.{kind}") for p in "qkv"]
                    sd[f"{head}{'attn' if attn == 'self_attn' else attn}.qkv.{kind}"] = torch.cat(parts, 0)
    return sd


def _upgrade_hook(module: nn.Module, state_dict: dict[str, Tensor], prefix: str, *args: Any) -> None:
    upgrade_state_dict(state_dict, prefix)
