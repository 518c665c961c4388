"""Hugging Face causal-LM architectures <-> lmforge's Transformer: configs and weight names, both directions.

Four architectures map exactly onto :class:`~lmforge.config.transformer.TransformerConfig`:

* ``llama``: RMSNorm, RoPE (linear or Llama-3 scaling), SwiGLU, grouped-query attention, optional biases;
* ``mistral``: Llama plus a sliding attention window;
* ``qwen2``: Llama with biases on Q/K/V only;
* ``gpt2``: learned positions, LayerNorm, a GELU (tanh) MLP, biases everywhere, tied head, and ``Conv1D``
  weights stored (in, out), transposed here.

:func:`lmforge_config` reads a ``config.json``: a field whose value lmforge cannot honour raises a one-line
:class:`~lmforge.errors.ConfigError` naming it, and so does any field this module does not know. Nothing is
approximated. :func:`weight_map` lists, per lmforge tensor, the checkpoint tensors it is made of and how
(``copy``, ``cat`` along rows, ``t`` transpose), which the importer and the exporter both follow.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from lmforge.config.transformer import TransformerConfig
from lmforge.errors import ConfigError

__all__ = ["ARCHITECTURES", "lmforge_config", "hf_config", "weight_map", "architecture_of"]

ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2",
                 "GPT2LMHeadModel": "gpt2"}

# Fields that do not change what the model computes at inference (bookkeeping, training-time or generation
# defaults that lmforge takes from its own command line).
_NEUTRAL = {
    "architectures", "model_type", "transformers_version", "dtype", "torch_dtype", "initializer_range", "use_cache",
    "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id", "_name_or_path",
    "pretraining_tp", "output_attentions", "output_hidden_states", "return_dict", "use_return_dict", "torchscript",
    "id2label", "label2id", "num_labels", "problem_type", "task_specific_params", "finetuning_task", "prefix",
    "tokenizer_class", "chunk_size_feed_forward", "tie_encoder_decoder", "is_decoder", "is_encoder_decoder",
    "pruned_heads", "tf_legacy_loss", "use_bfloat16", "cross_attention_hidden_size", "max_length", "min_length",
    "do_sample", "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty", "temperature", "top_k",
    "top_p", "typical_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences", "output_scores",
    "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
    "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens", "attn_implementation",
    "summary_type", "summary_use_proj", "summary_activation", "summary_proj_to_labels", "summary_first_dropout",
    "n_ctx", "reorder_and_upcast_attn",  # gpt2: n_ctx duplicates n_positions; upcasting only changes fp16 rounding
}


class _Fields:
    """A config.json being read: remembers which fields were consumed, so the rest can be checked."""

    def __init__(self, data: dict, source: str) -> None:
        self.data, self.source, self.used = data, source, set()

    def get(self, key: str, default: Any = None) -> Any:
        self.used.add(key)
        value = self.data.get(key, default)
        return default if value is None else value

    def require(self, key: str, allowed: Callable[[Any], bool], want: str, default: Any = None) -> Any:
        value = self.get(key, default)
        if not allowed(value):
            raise ConfigError(f"{self.source}: field {key}={value!r} is not supported (lmforge needs {want}); "
                              "this checkpoint cannot be imported exactly")
        return value

    def leftovers(self) -> None:
        extra = sorted(k for k in self.data if k not in self.used and k not in _NEUTRAL)
        if extra:
            raise ConfigError(f"{self.source}: field {extra[0]!r} (= {self.data[extra[0]]!r}) is not understood by the "
                              f"importer{f' (nor {len(extra) - 1} more)' if len(extra) > 1 else ''}; "
                              "lmforge will not guess what it means, so this checkpoint cannot be imported")


def architecture_of(data: dict, source: str) -> str:
    """``llama``/``mistral``/``qwen2``/``gpt2`` from a config.json's ``architectures`` (or ``model_type``)."""
    archs = data.get("architectures") or []
    for a in archs:
        if a in ARCHITECTURES:
            return ARCHITECTURES[a]
    if not archs and data.get("model_type") in ARCHITECTURES.values():
        return data["model_type"]
    found = ", ".join(archs) or repr(data.get("model_type"))
    raise ConfigError(f"{source}: architecture {found} is not supported; lmforge imports "
                      f"{', '.join(ARCHITECTURES)}")


def _rope(f: _Fields) -> dict[str, Any]:
    params = dict(f.get("rope_parameters") or {})
    scaling = dict(f.get("rope_scaling") or {})
    params = {**params, **scaling}
    theta = params.get("rope_theta", f.get("rope_theta", 10000.0))
    kind = params.get("rope_type", params.get("type", "default"))
    out: dict[str, Any] = {"encoding": "rope", "rope_base": float(theta)}
    if kind == "linear":
        out["rope_scaling"] = float(params["factor"])
    elif kind == "llama3":
        out.update(rope_scaling=float(params["factor"]), rope_scaling_type="llama3",
                   rope_low_freq_factor=float(params["low_freq_factor"]),
                   rope_high_freq_factor=float(params["high_freq_factor"]),
                   rope_original_context=int(params["original_max_position_embeddings"]))
    elif kind != "default":
        raise ConfigError(f"{f.source}: field rope_scaling.rope_type={kind!r} is not supported (lmforge has default, "
                          "linear and llama3 RoPE); this checkpoint cannot be imported exactly")
    return out


def _attention(heads: int, kv: int, head_dim: int, **extra: Any) -> dict[str, Any]:
    variant = "mha" if kv == heads else "mqa" if kv == 1 else "gqa"
    return {"variant": variant, "num_heads": heads, "head_dim": head_dim,
            **({"num_kv_heads": kv} if variant == "gqa" else {}), **extra}


def _llama_like(f: _Fields, arch: str) -> dict[str, Any]:
    d, heads = int(f.get("hidden_size")), int(f.get("num_attention_heads"))
    kv = int(f.get("num_key_value_heads", heads))
    act = f.require("hidden_act", lambda v: v in ("silu", "gelu"), "silu or gelu", "silu")
    attn: dict[str, Any] = {"dropout": float(f.get("attention_dropout", 0.0))}
    if arch == "llama":
        attn["bias"] = bool(f.get("attention_bias", False))
    if arch == "qwen2":
        attn["qkv_bias"] = True
        f.require("use_sliding_window", lambda v: not v, "use_sliding_window false (per-layer windows)", False)
        f.get("sliding_window"), f.get("max_window_layers")
        f.require("layer_types", lambda v: all(t == "full_attention" for t in v or []), "full_attention layers")
    block = int(f.get("max_position_embeddings"))
    if arch == "mistral":
        window = f.get("sliding_window")
        if window is not None and int(window) < block:
            attn.update(mask_type="sliding_window", window_size=int(window))
        f.require("layer_types", lambda v: len(set(v or [])) <= 1, "one attention kind for every layer")
    return {
        "vocab_size": int(f.get("vocab_size")), "d_model": d, "num_layers": int(f.get("num_hidden_layers")),
        "block_size": block, "attention": _attention(heads, kv, int(f.get("head_dim", d // heads)), **attn),
        "positional": _rope(f),
        "ffn": {"variant": "swiglu" if act == "silu" else "geglu", "hidden_dim": int(f.get("intermediate_size")),
                "bias": bool(f.get("mlp_bias", False)) if arch == "llama" else False},
        "norm": {"type": "rmsnorm", "eps": float(f.get("rms_norm_eps", 1e-6)), "placement": "pre"},
        "tie_embeddings": bool(f.get("tie_word_embeddings", False)),
    }


_GELU = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}


def _gpt2(f: _Fields) -> dict[str, Any]:
    d, heads = int(f.get("n_embd")), int(f.get("n_head"))
    act = f.require("activation_function", lambda v: v in _GELU, f"one of {', '.join(_GELU)}", "gelu_new")
    f.require("scale_attn_weights", lambda v: v is True, "scale_attn_weights true", True)
    f.require("scale_attn_by_inverse_layer_idx", lambda v: v is False, "scale_attn_by_inverse_layer_idx false", False)
    f.require("add_cross_attention", lambda v: v is False, "add_cross_attention false", False)
    resid = float(f.get("resid_pdrop", 0.1))
    f.require("embd_pdrop", lambda v: float(v) == resid, f"embd_pdrop equal to resid_pdrop ({resid})", 0.1)
    return {
        "vocab_size": int(f.get("vocab_size")), "d_model": d, "num_layers": int(f.get("n_layer")),
        "block_size": int(f.get("n_positions")),
        "attention": _attention(heads, heads, d // heads, bias=True, dropout=float(f.get("attn_pdrop", 0.1))),
        "positional": {"encoding": "learned"},
        "ffn": {"variant": "mlp", "activation": _GELU[act], "hidden_dim": int(f.get("n_inner", 4 * d)), "bias": True},
        "norm": {"type": "layernorm", "eps": float(f.get("layer_norm_epsilon", 1e-5)), "placement": "pre"},
        "tie_embeddings": bool(f.get("tie_word_embeddings", True)), "dropout": resid,
    }


def lmforge_config(data: dict, source: str = "config.json", block_size: Optional[int] = None) -> tuple[str, TransformerConfig]:
    """``(architecture, TransformerConfig)`` of a Hugging Face ``config.json``.

    Args:
        data: the parsed config.json.
        source: names the file in errors.
        block_size: cap the context at this many tokens (default: the checkpoint's).

    Raises:
        ConfigError: an unsupported architecture, or a field lmforge cannot honour (named in the message).
    """
    arch = architecture_of(data, source)
    f = _Fields(data, source)
    f.get("architectures"), f.get("model_type")
    cfg = _gpt2(f) if arch == "gpt2" else _llama_like(f, arch)
    f.leftovers()
    if block_size is not None:
        if block_size > cfg["block_size"]:
            raise ConfigError(f"--context {block_size} exceeds the checkpoint's context ({cfg['block_size']})")
        cfg["block_size"] = block_size
    cfg.update(residual_scaled_init=arch == "gpt2", init_std=float(data.get("initializer_range") or 0.02))
    return arch, TransformerConfig.parse(cfg, source=source)


def hf_config(arch: str, c: TransformerConfig, dtype: str = "float32") -> dict[str, Any]:
    """The ``config.json`` of ``arch`` for an lmforge config (the inverse of :func:`lmforge_config`)."""
    a = c.attention
    common = {"architectures": [next(k for k, v in ARCHITECTURES.items() if v == arch)], "model_type": arch,
              "vocab_size": c.vocab_size, "tie_word_embeddings": c.tie_embeddings, "dtype": dtype, "use_cache": True}
    if arch == "gpt2":
        return {**common, "n_embd": c.d_model, "n_head": a.num_heads, "n_layer": c.num_layers, "n_positions": c.block_size,
                "n_inner": c.ffn_hidden, "activation_function": {"gelu_tanh": "gelu_new"}.get(c.ffn.activation, c.ffn.activation),
                "layer_norm_epsilon": c.norm.eps, "attn_pdrop": a.dropout, "resid_pdrop": c.dropout, "embd_pdrop": c.dropout}
    p = c.positional
    rope: dict[str, Any] = {"rope_type": "default" if p.rope_scaling == 1.0 else p.rope_scaling_type, "rope_theta": p.rope_base}
    if p.rope_scaling != 1.0:
        rope["factor"] = p.rope_scaling
    if p.rope_scaling_type == "llama3":
        rope.update(low_freq_factor=p.rope_low_freq_factor, high_freq_factor=p.rope_high_freq_factor,
                    original_max_position_embeddings=p.rope_original_context)
    out = {**common, "hidden_size": c.d_model, "intermediate_size": c.ffn_hidden, "num_hidden_layers": c.num_layers,
           "num_attention_heads": a.num_heads, "num_key_value_heads": a.kv_heads, "head_dim": c.head_size,
           "hidden_act": "silu" if c.ffn.variant == "swiglu" else "gelu", "max_position_embeddings": c.block_size,
           "rms_norm_eps": c.norm.eps, "rope_theta": p.rope_base, "attention_dropout": a.dropout,
           "rope_parameters": rope, "rope_scaling": rope if p.rope_scaling != 1.0 else None}
    if arch == "mistral":
        out["sliding_window"] = a.window_size
    if arch == "qwen2":
        out.update(use_sliding_window=False, sliding_window=None, max_window_layers=c.num_layers)
    return out


def export_architecture(c: TransformerConfig) -> Optional[str]:
    """The one of mistral/qwen2/gpt2 that expresses ``c`` exactly (None: none of them; llama is tried first by
    the exporter)."""
    a, p = c.attention, c.positional
    plain = c.norm.placement == "pre" and not c.parallel_layers and not c.scale_embeddings and a.variant != "complex"
    llama_like = (plain and c.norm.type == "rmsnorm" and p.encoding == "rope" and c.ffn.variant in ("swiglu", "geglu")
                  and not c.ffn.bias and not a.bias)
    if llama_like and a.mask_type == "sliding_window" and not a.qkv_bias and p.rope_scaling == 1.0:
        return "mistral"
    if llama_like and a.mask_type == "causal" and a.qkv_bias is True:
        return "qwen2"
    if (plain and c.norm.type == "layernorm" and p.encoding == "learned" and c.ffn.variant == "mlp" and a.bias
            and c.ffn.bias and a.qkv_bias in (None, True) and a.mask_type == "causal" and a.variant == "mha"
            and c.head_size * a.num_heads == c.d_model):
        return "gpt2"
    return None


Entry = tuple[str, list[str], str]  # lmforge name, checkpoint names, how: copy | cat | t


def weight_map(arch: str, c: TransformerConfig) -> list[Entry]:
    """Every lmforge tensor of ``c`` with the checkpoint tensors of ``arch`` it is made of."""
    a = c.attention
    if arch == "gpt2":
        out: list[Entry] = [("tok_emb.weight", ["transformer.wte.weight"], "copy"),
                            ("pos.weight.weight", ["transformer.wpe.weight"], "copy")]
        out += [(f"norm_f.{k}", [f"transformer.ln_f.{k}"], "copy") for k in ("weight", "bias")]
        for i in range(c.num_layers):
            s, h = f"blocks.{i}.", f"transformer.h.{i}."
            for k in ("weight", "bias"):
                out += [(f"{s}norm_attn.{k}", [f"{h}ln_1.{k}"], "copy"), (f"{s}norm_ffn.{k}", [f"{h}ln_2.{k}"], "copy")]
                how = "t" if k == "weight" else "copy"  # Conv1D keeps its weight as (in, out)
                out += [(f"{s}attn.qkv.{k}", [f"{h}attn.c_attn.{k}"], how), (f"{s}attn.o_proj.{k}", [f"{h}attn.c_proj.{k}"], how),
                        (f"{s}ffn.w_in.{k}", [f"{h}mlp.c_fc.{k}"], how), (f"{s}ffn.w_out.{k}", [f"{h}mlp.c_proj.{k}"], how)]
    else:
        out = [("tok_emb.weight", ["model.embed_tokens.weight"], "copy"), ("norm_f.weight", ["model.norm.weight"], "copy")]
        qkv_bias = a.bias if a.qkv_bias is None else a.qkv_bias
        for i in range(c.num_layers):
            s, h = f"blocks.{i}.", f"model.layers.{i}."
            out += [(f"{s}norm_attn.weight", [f"{h}input_layernorm.weight"], "copy"),
                    (f"{s}norm_ffn.weight", [f"{h}post_attention_layernorm.weight"], "copy")]
            for k in ("weight", "bias"):
                if k == "weight" or qkv_bias:
                    out.append((f"{s}attn.qkv.{k}", [f"{h}self_attn.{p}_proj.{k}" for p in "qkv"], "cat"))
                if k == "weight" or a.bias:
                    out.append((f"{s}attn.o_proj.{k}", [f"{h}self_attn.o_proj.{k}"], "copy"))
                if k == "weight" or c.ffn.bias:
                    out += [(f"{s}ffn.w_in.{k}", [f"{h}mlp.gate_proj.{k}", f"{h}mlp.up_proj.{k}"], "cat"),
                            (f"{s}ffn.w_out.{k}", [f"{h}mlp.down_proj.{k}"], "copy")]
    if not c.tie_embeddings:
        out.append(("lm_head.weight", ["lm_head.weight"], "copy"))
    return out


def split_sizes(name: str, c: TransformerConfig) -> list[int]:
    """Row counts of the parts of a ``cat`` tensor (Q/K/V or gate/up)."""
    if ".attn.qkv." in name:
        hd = c.head_size
        return [c.attention.num_heads * hd, c.attention.kv_heads * hd, c.attention.kv_heads * hd]
    return [c.ffn_hidden, c.ffn_hidden]
