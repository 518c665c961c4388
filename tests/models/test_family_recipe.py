"""docs/adding-a-model-family.md runs as written, and the family it adds behaves like a built-in one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from lmforge.models import CAPABILITIES, MODELS

DOC = Path(__file__).resolve().parents[2] / "docs" / "adding-a-model-family.md"


@pytest.fixture
def recipe():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) >= 4
    namespace: dict = {"__name__": "recipe"}
    try:
        exec(compile("\n".join(blocks), str(DOC), "exec"), namespace)  # noqa: S102 - our own documentation
        yield namespace
    finally:
        MODELS._items.pop("gru", None)  # keep the global registry as it was for other tests
        CAPABILITIES.pop("gru", None)


def test_recipe_registers_a_working_family(recipe, tmp_path):
    from lmforge.models import build_model
    from lmforge.models.run_folder import load_model, save_model

    assert "gru" in MODELS
    model = build_model(recipe["GRUConfig"](vocab_size=50, hidden_dim=16, num_layers=2)).eval()
    assert type(model).__name__ == "GRULanguageModel"
    # A left-padded batch gives each row the logits it gets alone.
    a, b = torch.randint(0, 50, (1, 3)), torch.randint(0, 50, (1, 6))
    batch = torch.cat([torch.cat([torch.zeros(1, 3, dtype=torch.long), a], dim=1), b])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1], [1] * 6])
    logits, _ = model.step(batch, None, attention_mask=mask)
    torch.testing.assert_close(logits[0, 3:], model(a)[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[1], model(b)[0][0], atol=1e-5, rtol=1e-5)
    # The generic io saves and reloads it through the registry's config_class.
    save_model(model, tmp_path)
    assert load_model(tmp_path).config == model.config


def test_recipe_family_shows_in_list_models(recipe, capsys):
    import json

    from lmforge.cli.main import main

    assert main(["list", "models", "--json"]) == 0
    rows = {r["family"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["gru"]["config"] == "GRUConfig" and rows["gru"]["capabilities"] == ["causal_lm", "embeddings"]
