"""Export to Hugging Face: a Llama-format folder that ``transformers.AutoModelForCausalLM.from_pretrained`` loads.

A Transformer is Llama-compatible when it uses RMSNorm, pre-norm, RoPE (optionally linearly scaled), SwiGLU,
mha/gqa/mqa attention with a causal mask, sequential (not parallel) layers and unscaled embeddings. Biases and
tied or untied heads map onto ``attention_bias``, ``mlp_bias`` and ``tie_word_embeddings``. Anything else raises a
:class:`~lmforge.errors.ConfigError` naming every incompatible setting.

Written files: ``config.json``, ``generation_config.json`` and ``model.safetensors`` (float32 unless asked).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from lmforge.config.transformer import TransformerConfig
from lmforge.errors import ConfigError
from lmforge.interop.hf_arch import export_architecture, hf_config, split_sizes, weight_map
from lmforge.models.run_folder import load_model
from lmforge.models.transformer.decode import llama_incompatibilities
from lmforge.utils.files import atomic_path, atomic_write_json

__all__ = ["llama_incompatibilities", "llama_export_problems", "llama_config", "llama_state_dict", "export_hf", "export_model_dir"]

# lmforge's fixed special ids (see lmforge.tokenizers): <pad>=0, <bos>=2, <eos>=3.
PAD_ID, BOS_ID, EOS_ID = 0, 2, 3


def llama_export_problems(config: TransformerConfig) -> list[str]:
    """:func:`llama_incompatibilities` plus what only the Llama file format cannot say: Q/K/V biases without
    an output bias (Qwen2's layout, exported as Qwen2)."""
    problems = llama_incompatibilities(config)
    a = config.attention
    if a.qkv_bias is not None and a.qkv_bias != a.bias:
        problems.append(f"attention.qkv_bias={a.qkv_bias!r} (Llama has one bias setting for Q/K/V and output)")
    return problems


def _check(config: Any) -> TransformerConfig:
    if not isinstance(config, TransformerConfig):
        family = getattr(config, "family", type(config).__name__)
        raise ConfigError(f"only transformer models export to Hugging Face (this one is {family!r}); "
                          "train a transformer-family model to export it")
    problems = llama_export_problems(config)
    if problems:
        raise ConfigError("this Transformer is not Llama-compatible (nor Mistral, Qwen2 or GPT-2): " + "; ".join(problems)
                          + "; change these settings (and retrain) to export with --format hf")
    return config


def llama_config(config: TransformerConfig, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """The ``config.json`` of the matching ``LlamaForCausalLM`` (ConfigError when there is none)."""
    c = _check(config)
    a = c.attention
    rope = hf_config("llama", c)  # linear or llama3 RoPE scaling
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": c.vocab_size,
        "hidden_size": c.d_model,
        "intermediate_size": c.ffn_hidden,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": a.num_heads,
        "num_key_value_heads": a.kv_heads,
        "head_dim": c.head_size,
        "hidden_act": "silu",
        "max_position_embeddings": c.block_size,
        "initializer_range": c.init_std,
        "rms_norm_eps": c.norm.eps,
        # both spellings: `rope_theta`/`rope_scaling` (transformers 4.x) and `rope_parameters` (5.x)
        "rope_theta": c.positional.rope_base,
        "rope_scaling": rope["rope_scaling"],
        "rope_parameters": rope["rope_parameters"],
        "attention_bias": a.bias,
        "attention_dropout": a.dropout,
        "mlp_bias": c.ffn.bias,
        "tie_word_embeddings": c.tie_embeddings,
        "pad_token_id": PAD_ID,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "use_cache": True,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "dtype": str(dtype).removeprefix("torch."),
    }


def llama_state_dict(model: nn.Module, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The model's weights under Llama's names (fused Q/K/V and gate/up matrices split apart)."""
    c = _check(model.config)
    H, Hkv, hd = c.attention.num_heads, c.attention.kv_heads, c.head_size
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    out = {"model.embed_tokens.weight": sd["tok_emb.weight"], "model.norm.weight": sd["norm_f.weight"]}
    if not c.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    for i in range(c.num_layers):
        src, dst = f"blocks.{i}.", f"model.layers.{i}."
        out[dst + "input_layernorm.weight"] = sd[src + "norm_attn.weight"]
        out[dst + "post_attention_layernorm.weight"] = sd[src + "norm_ffn.weight"]
        for kind in ("weight", "bias") if c.attention.bias else ("weight",):
            q, k, v = sd[f"{src}attn.qkv.{kind}"].split([H * hd, Hkv * hd, Hkv * hd], dim=0)
            out[f"{dst}self_attn.q_proj.{kind}"] = q
            out[f"{dst}self_attn.k_proj.{kind}"] = k
            out[f"{dst}self_attn.v_proj.{kind}"] = v
            out[f"{dst}self_attn.o_proj.{kind}"] = sd[f"{src}attn.o_proj.{kind}"]
        for kind in ("weight", "bias") if c.ffn.bias else ("weight",):
            gate, up = sd[f"{src}ffn.w_in.{kind}"].chunk(2, dim=0)
            out[f"{dst}mlp.gate_proj.{kind}"] = gate
            out[f"{dst}mlp.up_proj.{kind}"] = up
            out[f"{dst}mlp.down_proj.{kind}"] = sd[f"{src}ffn.w_out.{kind}"]
    return {k: v.to(device="cpu", dtype=dtype).contiguous().clone() for k, v in out.items()}


def export_hf(model: nn.Module, out_dir: str | Path, dtype: torch.dtype = torch.float32, tokenizer: Any = None) -> Path:
    """Writes ``model`` as a Hugging Face folder: Llama when the config is Llama-compatible, else the Mistral,
    Qwen2 or GPT-2 layout that expresses it exactly (what ``lmforge import`` reads).

    Args:
        model: a :class:`~lmforge.models.transformer.Transformer` with a Llama-compatible config (or one of
            the other three architectures).
        out_dir: the folder to write (created if needed; existing files of the same names are replaced).
        dtype: dtype of the written weights.
        tokenizer: the run's tokenizer: an imported (``hf``) one sets the special ids and is written back as
            tokenizer.json + tokenizer_config.json (with its chat template).

    Returns:
        ``out_dir`` as a Path.

    Raises:
        ConfigError: the model is not a Transformer, or its config is not Llama-compatible (every
            incompatible setting is named).

    Example:
        >>> export_hf(model, "llama_out")  # doctest: +SKIP
        >>> transformers.AutoModelForCausalLM.from_pretrained("llama_out")  # doctest: +SKIP
    """
    config = getattr(model, "config", None)
    arch = export_architecture(config) if isinstance(config, TransformerConfig) and llama_export_problems(config) else None
    if arch is None:
        cfg, tensors = llama_config(config, dtype), llama_state_dict(model, dtype)
    else:
        cfg, tensors = hf_config(arch, config, str(dtype).removeprefix("torch.")), arch_state_dict(model, arch, dtype)
    ids = _special_ids(tokenizer)
    cfg.update(ids)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    atomic_write_json(out / "generation_config.json", ids)
    atomic_write_json(out / "config.json", cfg)
    if getattr(tokenizer, "kind", None) == "hf":  # an imported checkpoint's tokenizer goes back in HF form
        _write_hf_tokenizer(tokenizer, out)
    return out


def arch_state_dict(model: nn.Module, arch: str, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The model's weights under ``arch``'s names (see :func:`lmforge.interop.hf_arch.weight_map`)."""
    c = model.config
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for name, targets, how in weight_map(arch, c):
        t = sd[name]
        parts = t.split(split_sizes(name, c), dim=0) if how == "cat" else [t.t() if how == "t" else t]
        out.update(zip(targets, parts))
    return {k: v.to(device="cpu", dtype=dtype).contiguous().clone() for k, v in out.items()}


def _special_ids(tokenizer: Any) -> dict[str, Any]:
    if getattr(tokenizer, "kind", None) != "hf":
        return {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID}
    stops = list(getattr(tokenizer, "stop_ids", []))
    return {"bos_token_id": tokenizer.bos_id, "pad_token_id": tokenizer.pad_id,
            "eos_token_id": stops if len(stops) > 1 else tokenizer.eos_id}


def _write_hf_tokenizer(tokenizer: Any, out: Path) -> None:
    data = tokenizer.to_dict()
    atomic_write_json(out / "tokenizer.json", data["tokenizer"])
    atomic_write_json(out / "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast",
                                                      "chat_template": data["chat_template"], **data["special"]})


def export_model_dir(model_dir: str | Path, out_dir: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Exports a model folder (``save_model``) or a run folder to a Llama-format folder; see :func:`export_hf`."""

    model = load_model(model_dir)
    return export_hf(model, out_dir, dtype, tokenizer=getattr(model, "tokenizer", None))

