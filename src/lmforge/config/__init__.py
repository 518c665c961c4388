"""Configs: strict Pydantic models (no torch), YAML/JSON files, dotted overrides and presets."""

from lmforge.config.base import StrictModel, apply_overrides, parse_overrides, read_config_file, write_config_file
from lmforge.config.data import DataConfig
from lmforge.config.lstm import LSTMConfig
from lmforge.config.model import ModelConfig
from lmforge.config.presets import PRESETS, get_preset, preset_names
from lmforge.config.run import RunConfig
from lmforge.config.seq2seq import Seq2SeqLSTMConfig, Seq2SeqTransformerConfig
from lmforge.config.simple import Config
from lmforge.config.tokenizer import TokenizerConfig
from lmforge.config.train import TrainConfig
from lmforge.config.transformer import AttentionConfig, FFNConfig, NormConfig, PositionalConfig, TransformerConfig

__all__ = [
    "StrictModel", "apply_overrides", "parse_overrides", "read_config_file", "write_config_file",
    "DataConfig", "LSTMConfig", "ModelConfig", "PRESETS", "get_preset", "preset_names", "RunConfig",
    "Seq2SeqLSTMConfig", "Seq2SeqTransformerConfig", "TokenizerConfig", "TrainConfig",
    "AttentionConfig", "FFNConfig", "NormConfig", "PositionalConfig", "TransformerConfig",
    "Config",
]
