"""The registry's error lists choices; the model registry knows every config family."""

import typing

import pytest

from lmforge.config.model import ModelConfig
from lmforge.errors import ConfigError
from lmforge.models import CAPABILITIES, MODELS
from lmforge.registry import Registry


def test_unknown_name_lists_choices():
    reg = Registry("norm")
    reg.add("rmsnorm", 1)
    reg.add("layernorm", 2)
    with pytest.raises(ConfigError, match="choose one of: layernorm, rmsnorm"):
        reg.get("batchnorm")
    with pytest.raises(ValueError):
        reg.add("rmsnorm", 3)


def test_model_families_match_config_union():
    union = typing.get_args(typing.get_args(ModelConfig)[0])
    families = sorted(m.model_fields["family"].default for m in union)
    assert families == MODELS.names() == sorted(CAPABILITIES)
