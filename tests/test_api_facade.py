"""The facade's contract: one prompt per generate() with a clear error otherwise, and declared capabilities."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmforge import api
from lmforge.errors import ConfigError, LMForgeError
from lmforge.models.capabilities import family_capabilities
from lmforge.models.registry import CAPABILITIES, MODELS

OLD = Path(__file__).resolve().parent / "fixtures" / "old_runs"


def test_generate_refuses_a_list_of_prompts_with_a_clear_error() -> None:
    lm = api.load(OLD / "lm_lstm", device="cpu")
    with pytest.raises(ConfigError, match=r"lm\.complete") as err:
        lm.generate(["a", "b"])
    assert isinstance(err.value, LMForgeError)
    # several prompts through complete() give one completion each, equal to generating each alone
    texts = [c.text for c in lm.complete(["the ", "a "], max_new_tokens=4, temperature=0.0)]
    assert texts == [lm.generate(p, max_new_tokens=4, temperature=0.0) for p in ("the ", "a ")]


def test_capabilities_are_read_from_the_declarations() -> None:
    assert api.load(OLD / "lm_transformer", device="cpu").capabilities == frozenset(CAPABILITIES["transformer"])
    assert "causal_lm" in api.load(OLD / "lm_lstm", device="cpu").capabilities
    assert api.load(OLD / "translate_lstm", device="cpu").capabilities == {"seq2seq"}
    for family in MODELS.names():
        assert family_capabilities(family), family
