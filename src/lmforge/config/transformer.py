"""Configuration of the decoder-only Transformer (torch-free).

Defaults follow a modern small-LLM recipe: RMSNorm, RoPE, SwiGLU, grouped-query attention, pre-norm and tied
embeddings. Every field is read by :mod:`lmforge.models.transformer`; a test checks that changing any field
changes the model.

Sections (YAML)::

    family: transformer
    vocab_size: 5000
    d_model: 256
    num_layers: 6
    block_size: 256
    attention: {variant: gqa, num_heads: 8, num_kv_heads: null, head_dim: null, dropout: 0.0, bias: false,
                qkv_bias: null, mask_type: causal, window_size: null, use_flash_attn: false}
    positional: {encoding: rope, rope_base: 10000.0, rope_scaling: 1.0, rope_scaling_type: linear,
                 rope_low_freq_factor: 1.0, rope_high_freq_factor: 4.0, rope_original_context: 8192}
    ffn: {variant: swiglu, activation: silu, expansion_factor: 2.6667, hidden_dim: null, dropout: 0.0, bias: false}
    norm: {type: rmsnorm, eps: 1.0e-5, placement: pre}
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from lmforge.config.base import StrictModel

__all__ = ["AttentionConfig", "PositionalConfig", "FFNConfig", "NormConfig", "TransformerConfig"]

AttentionVariant = Literal["mha", "gqa", "mqa", "complex"]
MaskType = Literal["causal", "bidirectional", "sliding_window"]
PositionalEncoding = Literal["rope", "alibi", "sinusoidal", "learned", "none"]
FFNVariant = Literal["swiglu", "geglu", "mlp"]
Activation = Literal["silu", "gelu", "gelu_tanh", "relu"]
RopeScalingType = Literal["linear", "llama3"]
NormType = Literal["rmsnorm", "layernorm"]
NormPlacement = Literal["pre", "post", "sandwich"]


class AttentionConfig(StrictModel):
    """Self-attention settings.

    ``mha``: one key/value head per query head. ``gqa``: ``num_kv_heads`` shared key/value heads
    (arXiv:2305.13245). ``mqa``: a single key/value head (arXiv:1911.02150). ``complex``: queries and keys are
    complex vectors made of channel pairs, scored by Re(q . conj(k)).
    """

    variant: AttentionVariant = "gqa"
    num_heads: int = Field(8, ge=1)
    num_kv_heads: Optional[int] = Field(None, ge=1, description="gqa only; default num_heads // 4 (at least 1)")
    head_dim: Optional[int] = Field(None, ge=1, description="default d_model // num_heads")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    bias: bool = Field(False, description="biases on the projections (Q/K/V and output)")
    qkv_bias: Optional[bool] = Field(None, description="biases on the Q/K/V projections only; default: `bias` (Qwen2 has them without an output bias)")
    mask_type: MaskType = "causal"
    window_size: Optional[int] = Field(None, ge=1, description="sliding_window only: how many past positions a token sees (itself included)")
    use_flash_attn: bool = Field(False, description="use PyTorch's fused SDPA kernels (flash / memory-efficient) where the device has them")

    @model_validator(mode="after")
    def _check(self) -> "AttentionConfig":
        if self.mask_type == "sliding_window" and self.window_size is None:
            raise ValueError("attention.mask_type 'sliding_window' needs attention.window_size")
        if self.mask_type != "sliding_window" and self.window_size is not None:
            raise ValueError("attention.window_size is only read with attention.mask_type 'sliding_window'")
        if self.num_kv_heads is not None and self.variant != "gqa":
            raise ValueError(f"attention.num_kv_heads is only read by variant 'gqa' (got variant {self.variant!r})")
        if self.num_kv_heads is not None and self.num_heads % self.num_kv_heads:
            raise ValueError(f"attention.num_heads ({self.num_heads}) must be divisible by num_kv_heads ({self.num_kv_heads})")
        return self

    @property
    def kv_heads(self) -> int:
        """The number of key/value heads the variant implies."""
        if self.variant == "mqa":
            return 1
        if self.variant == "gqa":
            if self.num_kv_heads is not None:
                return self.num_kv_heads
            kv = max(1, self.num_heads // 4)
            while self.num_heads % kv:  # the auto value must divide num_heads
                kv -= 1
            return kv
        return self.num_heads


class PositionalConfig(StrictModel):
    """Position information. ``rope``: rotary embeddings applied to Q and K inside attention (arXiv:2104.09864);
    ``alibi``: linear attention biases (arXiv:2108.12409); ``sinusoidal`` and ``learned``: added to the token
    embeddings (arXiv:1706.03762); ``none``: no positions (a causal mask still leaks some, arXiv:2203.16634)."""

    encoding: PositionalEncoding = "rope"
    rope_base: float = Field(10000.0, gt=0)
    rope_scaling: float = Field(1.0, ge=1.0, description="> 1 divides positions by this factor (linear position interpolation, arXiv:2306.15595)")
    rope_scaling_type: RopeScalingType = Field(
        "linear", description="linear: every frequency divided by rope_scaling; llama3: only the low frequencies, "
                              "blended in between (the Llama 3.1 recipe, arXiv:2407.21783)")
    rope_low_freq_factor: float = Field(1.0, gt=0, description="llama3 only: wavelengths above original_context / this are scaled")
    rope_high_freq_factor: float = Field(4.0, gt=0, description="llama3 only: wavelengths below original_context / this are kept")
    rope_original_context: int = Field(8192, ge=1, description="llama3 only: the context the model was pre-trained with")

    @model_validator(mode="after")
    def _check(self) -> "PositionalConfig":
        if self.encoding != "rope" and self.rope_scaling != 1.0:
            raise ValueError("positional.rope_scaling is only read with positional.encoding 'rope'")
        if self.encoding != "rope" and self.rope_scaling_type != "linear":
            raise ValueError("positional.rope_scaling_type is only read with positional.encoding 'rope'")
        llama3 = {"rope_low_freq_factor": 1.0, "rope_high_freq_factor": 4.0, "rope_original_context": 8192}
        if self.rope_scaling_type != "llama3":
            for name, default in llama3.items():
                if getattr(self, name) != default:
                    raise ValueError(f"positional.{name} is only read with positional.rope_scaling_type 'llama3'")
        elif self.rope_high_freq_factor <= self.rope_low_freq_factor:
            raise ValueError("positional.rope_high_freq_factor must exceed rope_low_freq_factor")
        return self


class FFNConfig(StrictModel):
    """Feed-forward block. ``swiglu``/``geglu``: gated linear units (arXiv:2002.05202); ``mlp``: two linear
    layers with ``activation`` between them."""

    variant: FFNVariant = "swiglu"
    activation: Activation = Field("gelu", description="mlp only; swiglu uses silu and geglu uses gelu; gelu_tanh is "
                                                         "the tanh approximation of GELU (GPT-2's gelu_new)")
    expansion_factor: float = Field(8 / 3, gt=0)
    hidden_dim: Optional[int] = Field(None, ge=1, description="explicit FFN width; overrides expansion_factor")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    bias: bool = False


class NormConfig(StrictModel):
    """Normalisation: ``rmsnorm`` (arXiv:1910.07467) or ``layernorm`` (arXiv:1607.06450); placed ``pre`` (before
    each sub-layer), ``post`` (after the residual add, as in the original Transformer) or ``sandwich`` (before
    and after each sub-layer, arXiv:2105.13290)."""

    type: NormType = "rmsnorm"
    eps: float = Field(1e-5, gt=0)
    placement: NormPlacement = "pre"


class TransformerConfig(StrictModel):
    """A decoder-only, GPT-style Transformer language model.

    Example:
        >>> cfg = TransformerConfig(vocab_size=100, d_model=64, num_layers=2, block_size=32)
        >>> cfg.head_size
        8
    """

    family: Literal["transformer"] = "transformer"
    vocab_size: int = Field(5000, ge=2)
    d_model: int = Field(256, ge=1)
    num_layers: int = Field(6, ge=1)
    block_size: int = Field(256, ge=1, description="context length in tokens")
    attention: AttentionConfig = Field(default_factory=AttentionConfig)
    positional: PositionalConfig = Field(default_factory=PositionalConfig)
    ffn: FFNConfig = Field(default_factory=FFNConfig)
    norm: NormConfig = Field(default_factory=NormConfig)
    tie_embeddings: bool = True
    parallel_layers: bool = Field(False, description="PaLM-style: attention and FFN read the same normed input (arXiv:2204.02311)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on embeddings and residual branches")
    init_std: float = Field(0.02, gt=0)
    residual_scaled_init: bool = Field(True, description="scale residual output projections by 1/sqrt(2 * num_layers) (GPT-2)")
    scale_embeddings: bool = Field(False, description="multiply token embeddings by sqrt(d_model), as in arXiv:1706.03762")

    @model_validator(mode="after")
    def _check(self) -> "TransformerConfig":
        a = self.attention
        if a.head_dim is None and self.d_model % a.num_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by attention.num_heads ({a.num_heads}), or set attention.head_dim"
            )
        if a.variant == "complex" and self.head_size % 2:
            raise ValueError(f"complex attention needs an even head size (got {self.head_size})")
        if self.positional.encoding == "rope" and self.head_size % 2:
            raise ValueError(f"rope needs an even head size (got {self.head_size})")
        if self.positional.encoding == "sinusoidal" and self.d_model % 2:
            raise ValueError(f"sinusoidal positions need an even d_model (got {self.d_model})")
        if self.parallel_layers and self.norm.placement != "pre":
            raise ValueError("parallel_layers needs norm.placement 'pre'")
        return self

    @property
    def head_size(self) -> int:
        """Per-head channel count: ``attention.head_dim`` or ``d_model // num_heads``."""
        return self.attention.head_dim or self.d_model // self.attention.num_heads

    @property
    def ffn_hidden(self) -> int:
        """FFN width: ``ffn.hidden_dim``, or ``expansion_factor * d_model`` rounded up to a multiple of 8."""
        if self.ffn.hidden_dim is not None:
            return self.ffn.hidden_dim
        width = int(round(self.ffn.expansion_factor * self.d_model))
        return max(8, (width + 7) // 8 * 8)
