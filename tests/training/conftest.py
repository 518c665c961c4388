"""Fixtures for the training tests: tiny token arrays and tiny run configs (one CPU thread comes from
tests/conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest

from lmforge.config import RunConfig

VOCAB = 40


def token_arrays(n_train: int = 4000, n_val: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A learnable toy language: a noisy counting sequence over ids 8..VOCAB-1."""
    rng = np.random.default_rng(seed)
    def make(n: int) -> np.ndarray:
        base = 8 + (np.arange(n) * 3) % (VOCAB - 8)
        noise = rng.random(n) < 0.1
        base[noise] = rng.integers(8, VOCAB, noise.sum())
        return base.astype(np.uint16)
    return make(n_train), make(n_val)


def _tiny_config(family: str = "transformer", out_dir: str = "runs/test", **train) -> RunConfig:
    if family == "transformer":
        model = {"family": "transformer", "vocab_size": VOCAB, "d_model": 32, "num_layers": 2, "block_size": 16,
                 "attention": {"num_heads": 4}}
    else:
        model = {"family": "lstm", "vocab_size": VOCAB, "embedding_dim": 32, "hidden_dim": 32, "num_layers": 1,
                 "dropout": 0.0, "block_size": 16}
    t = {"batch_size": 8, "max_steps": 20, "eval_interval": 10, "eval_iters": 2, "warmup_steps": 2,
         "sample_tokens": 0, "lr": 3e-3, **train}
    return RunConfig.parse({"model": model, "train": t, "out_dir": out_dir})


@pytest.fixture
def tokens():
    """(train, val) uint16 token arrays of the toy language."""
    return token_arrays()


@pytest.fixture
def tiny_config():
    """A factory: tiny_config(family="transformer"|"lstm", out_dir=..., **train_overrides) -> RunConfig."""
    return _tiny_config
