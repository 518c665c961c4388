"""No dead keys: every field of TransformerConfig changes the parameter set or the output of the model."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from pydantic import BaseModel

from lmforge.models.transformer import Transformer, TransformerConfig

BASE = {"vocab_size": 32, "d_model": 16, "num_layers": 2, "block_size": 12, "attention": {"num_heads": 4}}

# dotted field -> (context the field is read in, change): both are partial config dicts merged into BASE.
CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "vocab_size": ({}, {"vocab_size": 40}),
    "d_model": ({}, {"d_model": 24}),
    "num_layers": ({}, {"num_layers": 1}),
    "block_size": ({"positional": {"encoding": "learned"}}, {"block_size": 16}),
    "attention.variant": ({"attention": {"variant": "mha"}}, {"attention": {"variant": "complex"}}),
    "attention.num_heads": ({"attention": {"variant": "mha"}}, {"attention": {"num_heads": 2}}),
    "attention.num_kv_heads": ({}, {"attention": {"num_kv_heads": 2}}),
    "attention.head_dim": ({}, {"attention": {"head_dim": 8}}),
    "attention.dropout": ({}, {"attention": {"dropout": 0.5}}),
    "attention.bias": ({}, {"attention": {"bias": True}}),
    "attention.qkv_bias": ({}, {"attention": {"qkv_bias": True}}),
    "attention.mask_type": ({}, {"attention": {"mask_type": "bidirectional"}}),
    "attention.window_size": ({"attention": {"mask_type": "sliding_window", "window_size": 2}},
                              {"attention": {"window_size": 4}}),
    "attention.use_flash_attn": ({}, {"attention": {"use_flash_attn": True}}),
    "positional.encoding": ({}, {"positional": {"encoding": "none"}}),
    "positional.rope_base": ({}, {"positional": {"rope_base": 100.0}}),
    "positional.rope_scaling": ({}, {"positional": {"rope_scaling": 3.0}}),
    "positional.rope_scaling_type": ({"positional": {"rope_scaling": 8.0}},
                                     {"positional": {"rope_scaling_type": "llama3", "rope_original_context": 16}}),
    "positional.rope_low_freq_factor": ({"positional": {"rope_scaling": 8.0, "rope_scaling_type": "llama3", "rope_original_context": 16}},
                                        {"positional": {"rope_low_freq_factor": 0.5}}),
    "positional.rope_high_freq_factor": ({"positional": {"rope_scaling": 8.0, "rope_scaling_type": "llama3", "rope_original_context": 16}},
                                         {"positional": {"rope_high_freq_factor": 8.0}}),
    "positional.rope_original_context": ({"positional": {"rope_scaling": 8.0, "rope_scaling_type": "llama3", "rope_original_context": 16}},
                                         {"positional": {"rope_original_context": 64}}),
    "ffn.variant": ({}, {"ffn": {"variant": "geglu"}}),
    "ffn.activation": ({"ffn": {"variant": "mlp"}}, {"ffn": {"activation": "relu"}}),
    "ffn.expansion_factor": ({}, {"ffn": {"expansion_factor": 4.0}}),
    "ffn.hidden_dim": ({}, {"ffn": {"hidden_dim": 24}}),
    "ffn.dropout": ({}, {"ffn": {"dropout": 0.5}}),
    "ffn.bias": ({}, {"ffn": {"bias": True}}),
    "norm.type": ({}, {"norm": {"type": "layernorm"}}),
    "norm.eps": ({}, {"norm": {"eps": 0.5}}),
    "norm.placement": ({}, {"norm": {"placement": "sandwich"}}),
    "tie_embeddings": ({}, {"tie_embeddings": False}),
    "parallel_layers": ({}, {"parallel_layers": True}),
    "dropout": ({}, {"dropout": 0.5}),
    "init_std": ({}, {"init_std": 0.1}),
    "residual_scaled_init": ({}, {"residual_scaled_init": False}),
    "scale_embeddings": ({}, {"scale_embeddings": True}),
}
NOT_MODEL_SETTINGS = {"family"}  # the discriminator that picks this config class


def _merge(*dicts: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _fields(model: type[BaseModel], prefix: str = "") -> set[str]:
    names = set()
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            names |= _fields(ann, f"{prefix}{name}.")
        else:
            names.add(prefix + name)
    return names


def test_every_config_field_has_a_case():
    assert set(CASES) == _fields(TransformerConfig) - NOT_MODEL_SETTINGS


def _build(cfg: dict[str, Any]) -> Transformer:
    torch.manual_seed(0)
    return Transformer(TransformerConfig.parse(cfg))


def _outputs(model: Transformer) -> torch.Tensor:
    x = torch.randint(0, 32, (2, 10), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(2)  # the same dropout masks for both models
    return model.train()(x)[0]


@pytest.mark.parametrize("key", sorted(CASES))
def test_field_changes_the_parameters_or_the_output(key, monkeypatch):
    context, change = CASES[key]
    flags: list[bool] = []
    original = F.scaled_dot_product_attention

    def spy(*args: Any, **kwargs: Any) -> torch.Tensor:
        flags.append(torch.backends.cuda.flash_sdp_enabled())  # which kernels attention allowed
        return original(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    a, b = _build(_merge(BASE, context)), _build(_merge(BASE, context, change))
    shapes_a = {n: tuple(p.shape) for n, p in a.named_parameters()}
    shapes_b = {n: tuple(p.shape) for n, p in b.named_parameters()}
    out_a = _outputs(a)
    flags_a, flags[:] = list(flags), []
    out_b = _outputs(b)
    if key == "attention.use_flash_attn":  # numerically the same function; the kernels allowed differ
        assert flags_a and not any(flags_a) and all(flags)
        return
    if key == "block_size":
        assert a.max_context != b.max_context
    same_output = out_a.shape == out_b.shape and torch.allclose(out_a, out_b, atol=1e-6)
    assert shapes_a != shapes_b or not same_output, f"{key} changed neither the parameters nor the output"
