"""Presets: each validates and builds, and the documented sizes match the models that get built."""

from __future__ import annotations

import re

import pytest
import torch

from lmforge.config import PRESETS, RunConfig, get_preset
from lmforge.config.presets import PARAMETER_COUNTS
from lmforge.models import build_model
from lmforge.models.run_folder import count_parameters


def _model_config(name: str, vocab: int):
    cfg = RunConfig.parse(get_preset(name), source=name).model
    keys = ("src_vocab_size", "tgt_vocab_size") if cfg.family.startswith("seq2seq") else ("vocab_size",)
    return cfg.model_copy(update={k: vocab for k in keys})


def _count(name: str, vocab: int) -> int:
    cfg = _model_config(name, vocab)
    try:
        with torch.device("meta"):  # no memory, no init cost: shapes only
            model = build_model(cfg)
    except (ImportError, AttributeError) as err:
        pytest.skip(f"{cfg.family} not available yet: {err}")
    return count_parameters(model)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_validates(name):
    cfg = RunConfig.parse(get_preset(name), source=name)
    assert cfg.task == PRESETS[name].get("task", "lm")
    assert PRESETS[name]["description"]


@pytest.mark.parametrize("name", sorted(n for n in PRESETS if PRESETS[n].get("task") == "translate"))
def test_translation_presets_name_bpe_explicitly(name):
    cfg = RunConfig.parse(get_preset(name), source=name)
    assert cfg.tokenizer.kind == "bpe"
    assert "kind" in cfg.tokenizer.model_fields_set  # said by the preset, not left to translation's fallback


@pytest.mark.parametrize("name", sorted(n for n in PRESETS if PRESETS[n].get("task", "lm") == "lm"))
def test_every_lm_preset_builds(name):
    assert _count(name, 5000) > 0


@pytest.mark.parametrize("name", ["transformer-tiny", "lstm-tiny"])
def test_tiny_presets_run_forward_and_backward(name):
    model = build_model(_model_config(name, 100))
    idx = torch.randint(0, 100, (2, 16))
    logits, loss = model(idx, idx)
    assert logits.shape == (2, 16, 100)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", sorted(PARAMETER_COUNTS))
def test_documented_parameter_counts_hold(name):
    documented, vocab = PARAMETER_COUNTS[name]
    actual = _count(name, vocab)
    assert abs(actual - documented) <= 0.25 * documented, f"{name}: {actual:,} vs documented {documented:,}"


def test_every_model_size_preset_is_documented_and_descriptions_agree():
    sized = {n for n in PRESETS if re.match(r"^(transformer|lstm|seq2seq_\w+)-\w+$", n)}
    assert sized == set(PARAMETER_COUNTS)
    for name, (documented, _) in PARAMETER_COUNTS.items():
        m = re.search(r"(\d+(?:\.\d+)?)M parameters", PRESETS[name]["description"])
        if m:
            assert abs(float(m.group(1)) * 1e6 - documented) <= 0.1 * documented, name


def test_size_ladders_grow():
    for family in ("transformer", "lstm"):
        counts = [_count(f"{family}-{s}", 5000) for s in ("tiny", "small", "medium", "large")]
        assert counts == sorted(counts) and counts[0] < 0.8e6 and counts[-1] > 20e6


def test_classic_pair_follows_the_recipe():
    lstm = _model_config("lstm-classic", 2000)
    assert (lstm.embedding_dim, lstm.hidden_dim, lstm.num_layers, lstm.dropout) == (256, 256, 2, 0.2)
    assert lstm.init_range == 0.1
    tfm = _model_config("transformer-classic", 2000)
    assert (tfm.num_layers, tfm.attention.num_heads, tfm.d_model, tfm.ffn_hidden) == (3, 4, 256, 512)
    assert tfm.positional.encoding == "sinusoidal" and tfm.norm.type == "layernorm" and tfm.norm.placement == "post"
    assert tfm.dropout == 0.2 and tfm.scale_embeddings
    # Hand count of the classic LSTM at 2,000 tokens: embedding + 2 LSTM layers + head with bias.
    assert _count("lstm-classic", 2000) == 2000 * 256 + 2 * (4 * 256 * 512 + 8 * 256) + 256 * 2000 + 2000
