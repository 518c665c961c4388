"""evaluate_lm against figures computed by hand from models with known probabilities."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from lmforge.evaluation.perplexity import evaluate_lm


class TableLM(nn.Module):
    """Gives the 'right' next token (from a table) probability exactly 1/2 and shares the rest evenly."""

    def __init__(self, vocab: int, nxt: dict[int, int]):
        super().__init__()
        self.vocab = vocab
        table = torch.arange(vocab)
        for a, b in nxt.items():
            table[a] = b
        self.register_buffer("table", table)
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, idx, targets=None):
        logits = torch.zeros(*idx.shape, self.vocab)  # (B, T, V)
        # e^L / (e^L + V - 1) = 1/2  <=>  L = ln(V - 1)
        logits.scatter_(-1, self.table[idx].unsqueeze(-1), math.log(self.vocab - 1))
        return logits, None


class Uniform(nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, idx, targets=None):
        return torch.zeros(*idx.shape, self.vocab), None


def test_one_bit_per_predicted_token():
    # "abababab": 8 characters, 8 char tokens, 7 predicted targets, each with probability 1/2 -> 7 bits
    a, b = 8, 9
    tokens = np.array([a, b] * 4, dtype=np.uint16)
    model = TableLM(12, {a: b, b: a})
    figs = evaluate_lm(model, tokens, {"chars": 8, "bytes": 8}, block_size=3, batch_size=2)
    assert figs["tokens"] == 7
    assert figs["loss"] == pytest.approx(math.log(2))
    assert figs["perplexity"] == pytest.approx(2.0)
    assert figs["bits_per_char"] == pytest.approx(7 / 8)
    assert figs["bits_per_byte"] == pytest.approx(7 / 8)
    assert figs["tokens_per_s"] > 0


def test_bytes_differ_from_chars_and_padding_never_counts():
    # "éaéa": 4 characters but 6 UTF-8 bytes; 3 predicted targets at 1 bit each
    e, a = 8, 9
    tokens = np.array([e, a, e, a], dtype=np.uint16)
    model = TableLM(10, {e: a, a: e})
    for block, batch in [(1, 1), (2, 5), (3, 1), (64, 8)]:  # uneven windows leave padded positions
        figs = evaluate_lm(model, tokens, {"chars": 4, "bytes": 6}, block_size=block, batch_size=batch)
        assert figs["tokens"] == 3
        assert figs["bits_per_char"] == pytest.approx(3 / 4)
        assert figs["bits_per_byte"] == pytest.approx(3 / 6)


def test_uniform_model_and_missing_meta():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 50, 101).astype(np.uint16)
    figs = evaluate_lm(Uniform(50), tokens, None, block_size=16, batch_size=3)
    assert figs["loss"] == pytest.approx(math.log(50))
    assert figs["perplexity"] == pytest.approx(50.0)
    assert figs["tokens"] == 100
    assert figs["bits_per_char"] is None and figs["bits_per_byte"] is None


def test_restores_training_mode():
    model = Uniform(5)
    model.train()
    evaluate_lm(model, np.arange(5, dtype=np.uint16), None, 2, 2)
    assert model.training
