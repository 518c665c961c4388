"""The decoder-only Transformer language model, every component chosen by name from its config.

Letters: B = batch, T = tokens, S = keys (cached + new), V = vocabulary, D = d_model.

Block layouts (``norm.placement``): ``pre`` x + f(N(x)); ``post`` N(x + f(x)) (arXiv:1706.03762); ``sandwich``
x + N'(f(N(x))) (arXiv:2105.13290); ``parallel_layers`` x + attn(N(x)) + ffn(N(x)) (arXiv:2204.02311).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.config.transformer import TransformerConfig
from lmforge.models.transformer.attention import ATTENTION, AttnMask, causal_after
from lmforge.models.transformer.cache import FullContextState, KVCache
from lmforge.models.transformer.ffn import MLPS
from lmforge.models.transformer.norms import NORMS
from lmforge.models.transformer.positions import POSITIONS

__all__ = ["Transformer", "Block"]

State = Union[KVCache, FullContextState]


class Block(nn.Module):
    """One Transformer layer: attention (and, in an encoder-decoder's decoder, cross-attention) and
    feed-forward sub-layers with residuals, norms and dropout. The same block is the decoder-only model's
    layer, the encoder layer (with a bidirectional mask) and the decoder layer (with ``cross_attn``).

    Args:
        attn: the self-attention module (an ``ATTENTION`` entry).
        ffn: the feed-forward module (an ``MLPS`` entry).
        norm: builds one norm layer.
        placement: ``pre``, ``post`` or ``sandwich``.
        dropout: dropout on every sub-layer's output.
        parallel: PaLM-style parallel attention and FFN from one norm.
        cross_attn: a cross-attention module (an encoder-decoder's decoder layer), or None.
    """

    def __init__(self, attn: nn.Module, ffn: nn.Module, norm: Callable[[], nn.Module], placement: str = "pre",
                 dropout: float = 0.0, parallel: bool = False, cross_attn: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.placement, self.parallel = placement, parallel
        self.attn, self.ffn = attn, ffn
        self.norm_attn = norm()
        self.cross_attn = cross_attn
        self.norm_cross = None if cross_attn is None else norm()
        # PaLM-style parallel layers feed both sub-layers from one norm.
        self.norm_ffn = None if parallel else norm()
        sandwich = placement == "sandwich"
        self.norm_attn_out = norm() if sandwich else None
        self.norm_cross_out = norm() if sandwich and cross_attn is not None else None
        self.norm_ffn_out = norm() if sandwich else None
        self.drop = nn.Dropout(dropout)

    @classmethod
    def from_config(cls, cfg: TransformerConfig) -> "Block":
        """The decoder-only model's layer, every part chosen by name from ``cfg``."""
        norm = NORMS.get(cfg.norm.type)
        return cls(ATTENTION.get(cfg.attention.variant)(cfg), MLPS.get(cfg.ffn.variant)(cfg),
                   lambda: norm(cfg.d_model, cfg.norm.eps), cfg.norm.placement, cfg.dropout, cfg.parallel_layers)

    def _sub(self, x: Tensor, f: Callable[[Tensor], Tensor], norm: nn.Module, norm_out: Optional[nn.Module]) -> Tensor:
        """One residual sub-layer in this block's norm placement."""
        if self.placement == "pre":
            return x + self.drop(f(norm(x)))
        if self.placement == "post":
            return norm(x + self.drop(f(x)))
        return x + self.drop(norm_out(f(norm(x))))

    def forward(self, x: Tensor, rope: Any, mask: AttnMask, cache: Optional[KVCache] = None, layer: int = 0,
                cross: Optional[tuple[Tensor, Tensor, AttnMask]] = None) -> Tensor:
        """``x`` (B, T, D) -> (B, T, D); ``cross`` is the source's keys, values (B, Hkv, Ssrc, hd) and mask."""
        if self.parallel:
            h = self.norm_attn(x)
            return x + self.drop(self.attn(h, rope, mask, cache, layer)) + self.drop(self.ffn(h))
        x = self._sub(x, lambda h: self.attn(h, rope, mask, cache, layer), self.norm_attn, self.norm_attn_out)
        if cross is not None:
            x = self._sub(x, lambda h: self.cross_attn.cross(h, *cross), self.norm_cross, self.norm_cross_out)
        return self._sub(x, self.ffn, self.norm_ffn, self.norm_ffn_out)


class Transformer(nn.Module):
    """A GPT-style decoder-only language model satisfying :class:`~lmforge.models.protocol.CausalLM`.

    Args:
        config: a :class:`~lmforge.config.transformer.TransformerConfig`; every field is read.

    Example:
        >>> cfg = TransformerConfig(vocab_size=64, d_model=32, num_layers=1, block_size=16)
        >>> model = Transformer(cfg)
        >>> logits, loss = model(torch.zeros(2, 5, dtype=torch.long))
        >>> tuple(logits.shape)
        (2, 5, 64)
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        if not isinstance(config, TransformerConfig):
            config = TransformerConfig.parse(config if isinstance(config, dict) else dict(config))
        self.config = config
        self.max_context: Optional[int] = config.block_size
        self.hidden_size = config.d_model
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos = POSITIONS.get(config.positional.encoding)(config)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block.from_config(config) for _ in range(config.num_layers))
        # Post-norm already ends each block with a norm; the other layouts need one before the head.
        self.norm_f = nn.Identity() if config.norm.placement == "post" else NORMS.get(config.norm.type)(config.d_model, config.norm.eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self._emb_scale = math.sqrt(config.d_model) if config.scale_embeddings else 1.0
        self._has_bias = config.positional.encoding == "alibi"  # an additive score bias needs an explicit mask

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.init_std
        if isinstance(module, nn.Linear):
            if getattr(module, "residual", False) and self.config.residual_scaled_init:
                std = std / math.sqrt(2 * self.config.num_layers)  # GPT-2 residual scaling
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)

    # ------------------------------------------------------------------ internals
    def _mask(self, q_pos: Tensor, k_pos: Tensor, k_valid: Optional[Tensor], q_valid: Optional[Tensor],
              dtype: torch.dtype) -> AttnMask:
        """The explicit mask for queries at ``q_pos`` (B, T) over keys at ``k_pos`` (B, S)."""
        a = self.config.attention
        allowed: Optional[Tensor] = None
        if a.mask_type != "bidirectional":
            allowed = k_pos[:, None, :] <= q_pos[:, :, None]  # (B, T, S)
            if a.mask_type == "sliding_window":
                allowed = allowed & (k_pos[:, None, :] > q_pos[:, :, None] - a.window_size)
        if k_valid is not None:
            allowed = k_valid[:, None, :] if allowed is None else allowed & k_valid[:, None, :]
            if q_valid is not None:  # padding queries see everything, so no row is empty (their output is unused)
                allowed = allowed | ~q_valid[:, :, None]
        bias = self.pos.bias(q_pos, k_pos)  # (B, H, T, S) or None
        if bias is None:
            return AttnMask(None if allowed is None else allowed[:, None])
        bias = bias.to(dtype)
        if allowed is not None:
            bias = bias.masked_fill(~allowed[:, None], float("-inf"))
        return AttnMask(bias)

    def _trunk(self, idx: Tensor, positions: Tensor, mask: AttnMask, cache: Optional[KVCache] = None) -> Tensor:
        x = self.tok_emb(idx)  # (B, T, D)
        if self._emb_scale != 1.0:
            x = x * self._emb_scale
        x = self.drop(self.pos.embed(x, positions))
        rope = self.pos.rotary(positions)
        for i, block in enumerate(self.blocks):
            x = block(x, rope, mask, cache, i)
        return self.norm_f(x)

    def _check_length(self, t: int) -> None:
        if t > self.config.block_size:
            raise ValueError(f"sequence of {t} tokens is longer than the context (block_size {self.config.block_size})")

    def _hidden(self, idx: Tensor, attention_mask: Optional[Tensor]) -> Tensor:
        B, T = idx.shape
        self._check_length(T)
        if attention_mask is None:
            positions = torch.arange(T, device=idx.device)[None]  # (1, T)
            if not self._has_bias and self.config.attention.mask_type != "sliding_window":
                mask = AttnMask(is_causal=self.config.attention.mask_type == "causal")
            else:
                mask = self._mask(positions, positions, None, None, self.tok_emb.weight.dtype)
            return self._trunk(idx, positions, mask)
        real = attention_mask.to(idx.device).bool()  # (B, T)
        positions = (real.long().cumsum(1) - 1).clamp(min=0)  # counted from each row's first real token
        mask = self._mask(positions, positions, real, real, self.tok_emb.weight.dtype)
        return self._trunk(idx, positions, mask)

    # ------------------------------------------------------------------ CausalLM protocol
    def forward(self, idx: Tensor, targets: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        """Next-token logits for ``idx`` (B, T).

        Args:
            idx: token ids (B, T), T <= block_size.
            targets: next-token ids (B, T); -100 marks positions that do not count.

        Returns:
            ``(logits (B, T, V), loss)``: the mean cross-entropy over counted targets, or None without targets.
        """
        logits = self.lm_head(self._hidden(idx, None))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        return logits, loss

    def hidden_states(self, idx: Tensor, attention_mask: Optional[Tensor] = None) -> Tensor:
        """Hidden states after the final norm (B, T, D); positions marked 0 in ``attention_mask`` are ignored
        as keys, and positions count from each row's first real token."""
        return self._hidden(idx, attention_mask)

    def init_state(self, batch_size: int) -> State:
        """An empty preallocated KV cache (or, for a bidirectional model, a state that re-reads the context)."""
        p = self.tok_emb.weight
        if self.config.attention.mask_type == "bidirectional":
            return FullContextState(batch_size, device=p.device)
        return KVCache(self.config.num_layers, batch_size, self.config.attention.kv_heads, self.config.head_size,
                       self.config.block_size, device=p.device, dtype=p.dtype)

    def step(self, idx: Tensor, state: State, attention_mask: Optional[Tensor] = None) -> tuple[Tensor, State]:
        """Feeds ``idx`` (B, T) after what ``state`` holds; returns ``(logits (B, T, V), state)``.

        ``attention_mask`` (B, T) is 1 for real tokens and 0 for left padding; a padded row gives the same
        logits for its real tokens as the row alone. The cache is updated in place.
        """
        B, T = idx.shape
        if isinstance(state, FullContextState):
            m = torch.ones_like(idx) if attention_mask is None else attention_mask.to(idx.device).long()
            state.ids = torch.cat([state.ids, idx], dim=1)
            state.mask = torch.cat([state.mask, m], dim=1)
            h = self._hidden(state.ids, state.mask)[:, -T:]
            return self.lm_head(h), state
        start = state.length
        q_pos, k_pos, k_valid, q_valid = state.begin(T, attention_mask)
        cfg = self.config.attention
        if not state.padded and cfg.mask_type == "causal" and not self._has_bias:
            mask = causal_after(start, T, q_pos, k_pos)  # plain causal decoding
        else:
            mask = self._mask(q_pos, k_pos, k_valid if state.padded else None, q_valid if state.padded else None,
                              self.tok_emb.weight.dtype)
        h = self._trunk(idx, q_pos, mask, state)
        state.commit(T)
        return self.lm_head(h), state

    # ------------------------------------------------------------------ reporting
    def num_parameters(self) -> int:
        """Number of distinct parameters (tied weights counted once)."""
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        c, a = self.config, self.config.attention
        n = self.num_parameters()
        heads = f"{a.variant}(heads={a.num_heads}, kv_heads={a.kv_heads}, head_dim={c.head_size}, mask={a.mask_type}"
        heads += f", window={a.window_size})" if a.mask_type == "sliding_window" else ")"
        pos = c.positional.encoding + (f"(base={c.positional.rope_base}, scaling={c.positional.rope_scaling})"
                                       if c.positional.encoding == "rope" else "")
        return (f"parameters={n:,} ({n / 1e6:.2f}M), d_model={c.d_model}, layers={c.num_layers}, "
                f"block_size={c.block_size}, vocab={c.vocab_size},\nattention={heads}, positions={pos}, "
                f"ffn={c.ffn.variant}(hidden={c.ffn_hidden}), norm={c.norm.type}/{c.norm.placement}, "
                f"tied={c.tie_embeddings}, parallel={c.parallel_layers}")
