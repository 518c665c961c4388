"""Config round trips, rejected keys and values, overrides, presets."""

from __future__ import annotations

import json

import pytest

from lmforge.config import RunConfig, TransformerConfig, get_preset, parse_overrides, preset_names
from lmforge.errors import ConfigError


def test_yaml_and_json_round_trip(tmp_path):
    cfg = RunConfig.parse({"model": {"family": "lstm", "hidden_dim": 64}, "train": {"lr": 3e-4}})
    for name in ("c.yaml", "c.json"):
        cfg.save(tmp_path / name)
        assert RunConfig.from_file(tmp_path / name) == cfg
    assert json.loads((tmp_path / "c.json").read_text())["model"]["hidden_dim"] == 64


def test_transformer_config_from_yaml_sections(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("vocab_size: 100\nd_model: 64\nnum_layers: 2\nattention: {variant: mqa, num_heads: 4}\n"
                    "positional: {encoding: alibi}\nffn: {variant: geglu}\nnorm: {placement: sandwich}\n")
    cfg = TransformerConfig.from_yaml(path)
    assert (cfg.attention.kv_heads, cfg.positional.encoding, cfg.ffn.variant) == (1, "alibi", "geglu")


def test_unknown_key_names_field_and_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        RunConfig.parse({"model": {"attention": {"num_head": 4}}})
    msg = str(err.value)
    assert "model.attention.num_head" in msg and "num_heads" in msg and "num_kv_heads" in msg


def test_invalid_choice_lists_choices():
    with pytest.raises(ConfigError) as err:
        RunConfig.parse({"model": {"norm": {"type": "batchnorm"}}})
    assert "model.norm.type" in str(err.value) and "'rmsnorm'" in str(err.value) and "'layernorm'" in str(err.value)


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="divisible"):
        RunConfig.parse({"model": {"d_model": 30, "attention": {"num_heads": 4}}})
    with pytest.raises(ConfigError, match="window_size"):
        RunConfig.parse({"model": {"attention": {"mask_type": "sliding_window"}}})
    with pytest.raises(ConfigError, match="task 'lm'"):
        RunConfig.parse({"model": {"family": "seq2seq_lstm"}})


def test_dotted_overrides_types():
    assert parse_overrides(["train.lr=3e-4", "model.d_model=128", "train.compile=true", "out_dir=x"]) == {
        "train.lr": 3e-4, "model.d_model": 128, "train.compile": True, "out_dir": "x"}
    cfg = RunConfig().with_overrides(["model.attention.num_heads=4", "train.lr=3e-4"])
    assert cfg.model.attention.num_heads == 4 and cfg.train.lr == 3e-4
    with pytest.raises(ConfigError, match="unknown key 'train.lrr'"):
        RunConfig().with_overrides(["train.lrr=1"])
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["train.lr"])


@pytest.mark.parametrize("bad", ["", "[1, 2]", "model: {d_model: [unclosed"])
def test_bad_config_files(tmp_path, bad):
    path = tmp_path / "bad.yaml"
    path.write_text(bad)
    with pytest.raises(ConfigError, match=str(path)):
        RunConfig.from_file(path)
    with pytest.raises(ConfigError, match="does not exist"):
        RunConfig.from_file(tmp_path / "missing.yaml")


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_validates(name):
    RunConfig.parse(get_preset(name))


def test_unknown_preset_lists_names():
    with pytest.raises(ConfigError, match="transformer-small"):
        get_preset("transformer-huge")
