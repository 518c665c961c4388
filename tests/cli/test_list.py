"""``lmforge list presets|models|components``."""

from __future__ import annotations

import json

import pytest

from lmforge.cli import list as list_cmd
from lmforge.cli.main import main
from lmforge.config import PRESETS


def _json(capsys, *args: str):
    assert main(["list", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_presets_lists_every_preset_with_a_real_count(capsys):
    rows = {r["name"]: r for r in _json(capsys, "presets")}
    assert set(rows) == set(PRESETS)
    # Independent truth: the classic LSTM by hand (embedding + 2 LSTM layers + head with bias), at 2,000 tokens.
    v, e, h = 2000, 256, 256
    assert rows["lstm-classic"]["vocab"] == v
    assert rows["lstm-classic"]["parameters"] == v * e + 2 * (4 * h * (e + h) + 8 * h) + h * v + v
    assert rows["lstm-classic"]["family"] == "lstm" and rows["seq2seq_lstm-tiny"]["task"] == "translate"
    assert all(r["description"] for r in rows.values())


def test_presets_count_matches_a_model_built_on_cpu(capsys):
    from lmforge.config import RunConfig, get_preset
    from lmforge.models import build_model

    rows = {r["name"]: r for r in _json(capsys, "presets", "--vocab-size", "100")}
    cfg = RunConfig.parse(get_preset("transformer-tiny")).model.model_copy(update={"vocab_size": 100})
    model = build_model(cfg)
    unique = {id(p): p.numel() for p in model.parameters()}
    assert rows["transformer-tiny"]["parameters"] == sum(unique.values())
    assert rows["transformer-tiny"]["vocab"] == 100


def test_presets_table_shows_names_and_counts(capsys):
    assert main(["list", "presets"]) == 0
    out = capsys.readouterr().out
    assert "lstm-classic" in out and "2.08M" in out and "transformer-small" in out


def test_models_lists_families_with_capabilities(capsys):
    from lmforge.models.registry import CAPABILITIES, MODELS

    rows = {r["family"]: r for r in _json(capsys, "models")}
    assert set(rows) == set(MODELS.names())
    for family, row in rows.items():
        assert set(row["capabilities"]) == CAPABILITIES[family]
    assert rows["lstm"]["config"] == "LSTMConfig" and rows["transformer"]["config"] == "TransformerConfig"
    assert main(["list", "models"]) == 0
    assert "causal_lm" in capsys.readouterr().out


def test_components_reads_the_registries_and_skips_missing_ones(capsys, monkeypatch):
    monkeypatch.setitem(list_cmd.COMPONENT_REGISTRIES, "not yet", "lmforge.does_not_exist:THING")
    rows = {r["registry"]: r["names"] for r in _json(capsys, "components")}
    assert "not yet" not in rows
    try:
        from lmforge.models.transformer.norms import NORMS
    except ImportError:
        pytest.skip("transformer components not available")
    assert rows["norms"] == NORMS.names()
    assert {"rmsnorm", "layernorm"} <= set(rows["norms"])


def test_unknown_listing_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as err:
        main(["list", "widgets"])
    assert err.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
