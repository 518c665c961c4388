"""docs/entry-points/transformer.md runs as written; print(model) and YAML/JSON configs of the Transformer."""

from __future__ import annotations

import json

import pytest
import torch
from entry_doc_snippets import assert_lines_in_doc, doc_text, run_doc

from lmforge.errors import ConfigError
from lmforge.models.transformer import Transformer, TransformerConfig

PAGE = "transformer.md"

ISSUE_SNIPPET = """
from lmforge.models.transformer import Transformer, TransformerConfig
cfg = TransformerConfig(vocab_size=50257, d_model=512, num_layers=6)
model = Transformer(cfg)
print(model)          # parameter count and key settings
"""

SUBS = {
    "vocab_size=50257, d_model=512, num_layers=6": "vocab_size=256, d_model=64, num_layers=2",
    "vocab_size: 50257\nd_model: 512\nnum_layers: 6": "vocab_size: 256\nd_model: 64\nnum_layers: 2",
}


def test_page_shows_the_issue_snippet():
    assert_lines_in_doc(PAGE, ISSUE_SNIPPET)


def test_page_runs(capsys):
    ns = run_doc(PAGE, SUBS)
    out = capsys.readouterr().out
    cfg, model = ns["cfg"], ns["model"]
    # The YAML's nested sections reached the config and the model.
    a = cfg.attention
    assert (a.variant, a.num_heads, a.mask_type, a.window_size) == ("mha", 8, "sliding_window", 128)
    assert cfg.positional.encoding == "alibi" and cfg.ffn.variant == "mlp" and cfg.ffn.activation == "gelu"
    assert (cfg.norm.type, cfg.norm.placement, cfg.block_size) == ("layernorm", "post", 512)
    assert cfg.ffn_hidden == 256
    n = sum(p.numel() for p in model.parameters())
    assert f"parameters={n:,}" in out  # print(model) shows the real count
    assert "attention=mha(heads=8" in out and "positions=alibi" in out and "norm=layernorm/post" in out
    with open(ns["json_path"]) as f:
        assert json.load(f)["attention"]["window_size"] == 128
    logits, loss = model(torch.randint(0, 256, (2, 16)), torch.randint(0, 256, (2, 16)))
    assert logits.shape == (2, 16, 256) and torch.isfinite(loss)


def test_print_of_the_documented_size():
    with torch.device("meta"):
        model = Transformer(TransformerConfig(vocab_size=50257, d_model=512, num_layers=6))
    n = sum(p.numel() for p in model.parameters())
    # Tied embedding + 6 x (q, k/v for 2 kv heads, o, SwiGLU of 1368, 2 RMSNorms) + final RMSNorm, by hand.
    d, hd, kv, ff = 512, 64, 2, 1368
    layer = d * d + 2 * d * kv * hd + d * d + 3 * d * ff + 2 * d
    assert n == 50257 * d + 6 * layer + d
    text = repr(model).splitlines()
    assert text[1].strip().startswith(f"parameters={n:,}")
    assert "\n".join(text[:3]) in doc_text(PAGE)  # the page shows the real header


def test_from_json_and_yaml_round_trip_and_errors(tmp_path):
    cfg = TransformerConfig(vocab_size=100, d_model=32, num_layers=1,
                            attention={"variant": "gqa", "num_heads": 4, "num_kv_heads": 2},
                            positional={"encoding": "rope", "rope_scaling": 2.0}, norm={"placement": "sandwich"})
    for name in ("c.json", "c.yaml"):
        cfg.save(tmp_path / name)
        again = TransformerConfig.from_json(tmp_path / name) if name.endswith("json") else \
            TransformerConfig.from_yaml(tmp_path / name)
        assert again == cfg
    (tmp_path / "bad.json").write_text(json.dumps({"vocab_size": 100, "attention": {"num_head": 4}}))
    with pytest.raises(ConfigError, match="attention.num_head"):
        TransformerConfig.from_json(tmp_path / "bad.json")


def test_page_links_the_family_recipe():
    assert "adding-a-model-family.md" in doc_text(PAGE)
