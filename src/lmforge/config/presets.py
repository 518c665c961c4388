"""Named presets: plain data, no torch.

A preset is a partial :class:`~lmforge.config.run.RunConfig` dict. Model-size presets are named
``<family>-<size>`` (``transformer-small``, ``lstm-medium``, ``seq2seq_transformer-small``); the names
``lstm-classic`` and ``transformer-classic`` are the matched pair used by ``lmforge compare``; ``shakespeare-char``
is what ``lmforge train`` runs with no arguments. :data:`PARAMETER_COUNTS` documents each preset's size and the
vocabulary it is quoted at; ``lmforge list presets`` computes the real counts.
"""

from __future__ import annotations

import copy
from typing import Any

from lmforge.errors import ConfigError

__all__ = ["PRESETS", "PARAMETER_COUNTS", "preset_names", "get_preset", "DEFAULT_PRESET"]

DEFAULT_PRESET = "shakespeare-char"


def _tfm(d_model: int, layers: int, heads: int, block: int, **extra: Any) -> dict[str, Any]:
    return {"family": "transformer", "d_model": d_model, "num_layers": layers, "block_size": block,
            "attention": {"num_heads": heads}, **extra}


def _lstm(emb: int, hidden: int, layers: int, dropout: float = 0.2, **extra: Any) -> dict[str, Any]:
    return {"family": "lstm", "embedding_dim": emb, "hidden_dim": hidden, "num_layers": layers, "dropout": dropout, **extra}


# Translation presets name their tokenizer: byte-level BPE (a run config without a tokenizer kind still gets BPE
# for translation, see lmforge.workflows.translate_run; the preset says it outright).
_TRANSLATE: dict[str, Any] = {"task": "translate", "tokenizer": {"kind": "bpe"}}


PRESETS: dict[str, dict[str, Any]] = {
    # --- decoder-only Transformer sizes (RMSNorm + RoPE + SwiGLU + GQA, tied embeddings) ---
    "transformer-tiny": {"description": "about 0.5M parameters; for tests and demos",
                         "model": _tfm(64, 4, 4, 128)},
    "transformer-small": {"description": "about 2M parameters",
                          "model": _tfm(128, 8, 4, 256)},
    "transformer-medium": {"description": "about 8M parameters",
                           "model": _tfm(256, 10, 8, 256)},
    "transformer-large": {"description": "about 30M parameters",
                          "model": _tfm(512, 10, 8, 512)},
    # --- LSTM language-model sizes (tied embeddings, arXiv:1608.05859) ---
    "lstm-tiny": {"description": "about 0.5M parameters; for tests and demos",
                  "model": _lstm(80, 80, 2, 0.0, tie_embeddings=True)},
    "lstm-small": {"description": "about 2.3M parameters", "model": _lstm(256, 256, 2, tie_embeddings=True)},
    "lstm-medium": {"description": "about 9M parameters", "model": _lstm(512, 512, 3, tie_embeddings=True)},
    "lstm-large": {"description": "about 30M parameters", "model": _lstm(1024, 1024, 3, 0.3, tie_embeddings=True)},
    # --- the matched pair for `lmforge compare` (classic recipes, 2-3M parameters each) ---
    "lstm-classic": {"description": "the classic LSTM LM: embedding 256, hidden 256, 2 layers, dropout 0.2, untied "
                                    "(2.1M parameters at a 2,000-token vocabulary)",
                     "model": _lstm(256, 256, 2, 0.2, init_range=0.1)},
    "transformer-classic": {
        "description": "the classic Transformer LM: 3 layers, 4 heads, d_model 256, FFN 512, sinusoidal, post-norm "
                       "LayerNorm, tied (2.1M parameters at a 2,000-token vocabulary)",
        "model": _tfm(256, 3, 4, 256, attention={"variant": "mha", "num_heads": 4, "bias": True, "dropout": 0.2},
                      positional={"encoding": "sinusoidal"},
                      ffn={"variant": "mlp", "activation": "relu", "hidden_dim": 512, "bias": True, "dropout": 0.2},
                      norm={"type": "layernorm", "placement": "post"}, dropout=0.2, scale_embeddings=True,
                      tie_embeddings=True, residual_scaled_init=False),
    },
    # --- translation sizes ---
    "seq2seq_transformer-tiny": {**_TRANSLATE, "description": "for tests",
                                 "model": {"family": "seq2seq_transformer", "d_model": 64, "num_heads": 4, "num_encoder_layers": 2,
                                           "num_decoder_layers": 2, "d_ff": 128, "dropout": 0.0}},
    "seq2seq_transformer-small": {**_TRANSLATE, "description": "about 15M parameters at a 10,000-token vocabulary",
                                  "model": {"family": "seq2seq_transformer", "d_model": 320, "num_heads": 4, "num_encoder_layers": 3,
                                            "num_decoder_layers": 3, "d_ff": 1280}},
    "seq2seq_transformer-medium": {**_TRANSLATE,
                                   "description": "about 65M parameters (Transformer-base layout with a 3072-wide FFN)",
                                   "model": {"family": "seq2seq_transformer", "d_model": 512, "num_heads": 8, "num_encoder_layers": 6,
                                             "num_decoder_layers": 6, "d_ff": 3072}},
    "seq2seq_transformer-large": {**_TRANSLATE, "description": "about 200M parameters (Transformer-big)",
                                  "model": {"family": "seq2seq_transformer", "d_model": 1024, "num_heads": 16, "num_encoder_layers": 6,
                                            "num_decoder_layers": 6, "d_ff": 4096, "dropout": 0.3}},
    "seq2seq_lstm-tiny": {**_TRANSLATE, "description": "for tests",
                          "model": {"family": "seq2seq_lstm", "emb_dim": 32, "hidden_dim": 64, "num_layers": 1, "dropout": 0.0,
                                    "attention": "dot"}},
    "seq2seq_lstm-small": {**_TRANSLATE, "description": "with Luong general attention",
                           "model": {"family": "seq2seq_lstm", "emb_dim": 256, "hidden_dim": 512, "num_layers": 2, "attention": "general"}},
    "seq2seq_lstm-medium": {**_TRANSLATE, "description": "bidirectional encoder, Bahdanau attention",
                            "model": {"family": "seq2seq_lstm", "emb_dim": 512, "hidden_dim": 512, "num_layers": 2,
                                      "attention": "additive", "bidirectional_encoder": True}},
    "seq2seq_lstm-large": {**_TRANSLATE, "description": "bidirectional encoder, Bahdanau attention",
                           "model": {"family": "seq2seq_lstm", "emb_dim": 512, "hidden_dim": 1024, "num_layers": 4,
                                     "attention": "additive", "bidirectional_encoder": True}},
    # --- whole-run presets ---
    # Tuned for a 2-core CPU and a 120 s budget (BENCHMARKS.md, "Training"): full multi-head attention (GQA's
    # single KV head cost 0.015 in loss at this size), batch 16 at lr 3e-3 (on an idle machine it ran 37% more
    # tokens/s than batch 8 and reached 1.667 vs 1.720 in 120 s), and warmup-stable-decay whose decay ends when
    # the time budget does.
    "shakespeare-char": {
        "description": "what `lmforge train` runs with no arguments: a char-level Transformer on Tiny Shakespeare, ~2 min on a 2-core CPU",
        "model": _tfm(128, 4, 4, 64, attention={"variant": "mha", "num_heads": 4}),
        "tokenizer": {"kind": "char"},
        "train": {"batch_size": 16, "lr": 3e-3, "warmup_steps": 50, "schedule": "wsd", "decay_fraction": 0.3,
                  "min_lr_ratio": 0.0, "time_budget": 120.0, "eval_interval": 250},
    },
    # The one-GPU counterpart (issue 4's goal: val loss <= 1.45 in under 90 s of wall time on an H100, start-up
    # and compilation included): the shape of the well-known minimal trainer's GPU recipe (6 layers, 6 heads,
    # d_model 384, context 256, dropout 0.2) with RMSNorm + RoPE + SwiGLU, the fused SDPA kernels, bf16 autocast
    # ("auto" on CUDA), torch.compile and warmup-stable-decay over 60 s of training, leaving 30 s for start-up,
    # compilation, the final evaluation and the sample. Not yet measured on a GPU (BENCHMARKS.md says so).
    "shakespeare-char-gpu": {
        "description": "the one-GPU counterpart of shakespeare-char: 6 layers, d_model 384, context 256, bf16 + "
                       "torch.compile, 60 s of training",
        "model": _tfm(384, 6, 6, 256, attention={"variant": "mha", "num_heads": 6, "use_flash_attn": True},
                      dropout=0.2),
        "tokenizer": {"kind": "char"},
        "train": {"batch_size": 64, "lr": 1e-3, "warmup_steps": 100, "schedule": "wsd", "decay_fraction": 0.3,
                  "min_lr_ratio": 0.0, "time_budget": 60.0, "eval_interval": 500, "compile": True},
    },
}


# Documented sizes: preset -> (approximate parameter count, the vocabulary size it is quoted at). Language
# models are quoted at a 5,000-token vocabulary, the classic pair at 2,000 (as the comparison uses) and
# translation models at 10,000 (source and target). `lmforge list presets` builds each model to count;
# tests/config/test_presets.py keeps these within 25% of the real count.
PARAMETER_COUNTS: dict[str, tuple[int, int]] = {
    "transformer-tiny": (500_000, 5000),
    "transformer-small": (2_000_000, 5000),
    "transformer-medium": (8_000_000, 5000),
    "transformer-large": (30_000_000, 5000),
    "lstm-tiny": (500_000, 5000),
    "lstm-small": (2_300_000, 5000),
    "lstm-medium": (9_000_000, 5000),
    "lstm-large": (30_000_000, 5000),
    "lstm-classic": (2_100_000, 2000),
    "transformer-classic": (2_100_000, 2000),
    "seq2seq_transformer-tiny": (1_450_000, 10000),
    "seq2seq_transformer-small": (15_000_000, 10000),
    "seq2seq_transformer-medium": (65_000_000, 10000),
    "seq2seq_transformer-large": (200_000_000, 10000),
    "seq2seq_lstm-tiny": (1_350_000, 10000),
    "seq2seq_lstm-small": (18_000_000, 10000),
    "seq2seq_lstm-medium": (24_000_000, 10000),
    "seq2seq_lstm-large": (80_000_000, 10000),
}


def preset_names() -> list[str]:
    """All preset names, sorted."""
    return sorted(PRESETS)


def get_preset(name: str) -> dict[str, Any]:
    """A deep copy of preset ``name`` without its description (a partial RunConfig dict)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(preset_names())} (see `lmforge list presets`)")
    data = copy.deepcopy(PRESETS[name])
    data.pop("description", None)
    return data
