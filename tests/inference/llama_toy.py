"""Tiny Llama-compatible Transformers (the configs the fast and compiled decoding paths accept), with weights
perturbed away from the initialisation so that norms, biases and rotary scaling all matter."""

from __future__ import annotations

import torch

from lmforge.config import TransformerConfig
from lmforge.models import build_model

VARIANTS = {
    "gqa": {},
    "mqa-untied": {"attention": {"variant": "mqa", "num_heads": 4}, "tie_embeddings": False},
    "mha-bias-scaled-rope": {"attention": {"variant": "mha", "num_heads": 4, "bias": True},
                             "ffn": {"bias": True}, "positional": {"rope_scaling": 2.0, "rope_base": 500.0}},
}


def llama_toy(extra: dict):
    """A 2-layer, d_model 32 model over 64 tokens with a 32-token context; ``extra`` overrides the config."""
    torch.manual_seed(0)
    base = {"vocab_size": 64, "d_model": 32, "num_layers": 2, "block_size": 32,
            "attention": {"variant": "gqa", "num_heads": 4, "num_kv_heads": 2}}
    model = build_model(TransformerConfig(**{**base, **extra})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)  # non-trivial norms and biases too
    return model
