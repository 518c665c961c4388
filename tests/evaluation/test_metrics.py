"""Tests of the measurement helpers in lmforge.evaluation.metrics, on toy modules with known answers."""

from __future__ import annotations

import math
import time

import pytest
import torch
from torch import nn

from lmforge.evaluation import memory, metrics
from lmforge.evaluation.metrics import (
    bits_per_byte, bits_per_char, decode_step_times, forward_latency, machine_info, parameter_split,
    size_on_disk, time_call,
)


# ------------------------------------------------------------------------------------------ bits per char
def test_bits_per_char_hand_computed() -> None:
    # 100 tokens at ln(2) nats each = 100 bits, spread over 100 characters -> exactly 1 bit per character.
    assert bits_per_char(math.log(2), tokens=100, chars=100) == pytest.approx(1.0)
    # 50 BPE tokens at 2.0 nats over 200 characters: 50 * 2 / ln 2 = 144.2695 bits / 200 = 0.721348 bpc,
    # which is not the 2.885 bits per token one gets from dividing the loss by ln 2 alone.
    assert bits_per_char(2.0, tokens=50, chars=200) == pytest.approx(0.7213475, rel=1e-6)
    # "héllo" is 5 characters but 6 UTF-8 bytes: bits per byte is 5/6 of bits per character.
    text = "héllo"
    loss, tokens = 1.3, 5
    bpc = bits_per_char(loss, tokens, len(text))
    bpb = bits_per_byte(loss, tokens, len(text.encode("utf-8")))
    assert bpb == pytest.approx(bpc * 5 / 6)


def test_bits_per_char_of_a_uniform_model_is_log2_vocab() -> None:
    # A model with constant logits predicts uniformly: its loss is ln V per token, so with one token per
    # character it spends exactly log2 V bits per character. Compute the loss with torch, not by hand.
    vocab, n = 37, 400
    logits = torch.zeros(n, vocab)
    targets = torch.randint(0, vocab, (n,))
    loss = nn.functional.cross_entropy(logits, targets).item()
    assert bits_per_char(loss, n, n) == pytest.approx(math.log2(vocab), rel=1e-6)


def test_bits_per_char_rejects_empty_text() -> None:
    with pytest.raises(ValueError):
        bits_per_char(1.0, tokens=10, chars=0)


# ------------------------------------------------------------------------------------------ parameter split
class _ToyLSTM(nn.Module):
    def __init__(self, vocab: int = 10, emb: int = 4, hidden: int = 8, tie: bool = False) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.rnn = nn.LSTM(emb, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)
        if tie:
            self.head.weight = self.emb.weight

    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, None]:
        out, _ = self.rnn(self.emb(idx))
        return self.head(out), None


def test_parameter_split_hand_counted() -> None:
    split = parameter_split(_ToyLSTM(), vocab_size=10)
    # Embedding 10x4; LSTM 4 gates x 8 x (4 inputs + 8 recurrent) + 2 bias vectors of 4 x 8; head 8x10 + 10.
    assert split["embedding"] == 40
    assert split["body"] == 4 * 8 * (4 + 8) + 2 * 4 * 8
    assert split["output"] == 8 * 10 + 10
    assert split["total"] == sum(p.numel() for p in _ToyLSTM().parameters())
    assert split["tied"] is False


def test_parameter_split_counts_tied_weights_once() -> None:
    model = _ToyLSTM(emb=8, tie=True)
    split = parameter_split(model, vocab_size=10)
    assert split["embedding"] == 80
    assert split["output"] == 10  # only the head's bias is its own
    assert split["tied"] is True
    assert split["total"] == sum(p.numel() for p in model.parameters())  # parameters() dedupes shared tensors


# ------------------------------------------------------------------------------------------------ latency
class _FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_time_call_median_skips_warmup() -> None:
    clock = _FakeClock()
    durations = iter([5.0, 5.0, 0.1, 0.3, 0.2, 9.0, 0.25])  # two slow warm-up calls, one outlier
    calls = []

    def fn() -> None:
        calls.append(1)
        clock.now += next(durations)

    t = time_call(fn, repeats=5, warmup=2, clock=clock)
    assert len(calls) == 7
    assert t.times_s == pytest.approx([0.1, 0.3, 0.2, 9.0, 0.25])
    assert t.median_s == pytest.approx(0.25)
    assert (t.min_s, t.max_s) == pytest.approx((0.1, 9.0))


class _SleepyModule(nn.Module):
    """A forward pass that takes a known time, much slower the first time (lazy initialisation)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.seconds = seconds
        self.calls = 0

    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, None]:
        self.calls += 1
        time.sleep(self.seconds * (20 if self.calls == 1 else 1))
        return idx.float(), None


def test_forward_latency_on_a_toy_module() -> None:
    model = _SleepyModule(0.01)
    t = forward_latency(model, batch_size=2, seq_len=3, vocab_size=5, repeats=5, warmup=1)
    assert model.calls == 6
    assert 0.01 <= t.median_s < 0.05  # the 0.2 s first call is not in the median
    assert model.training  # mode restored


class _CountingDecoder(nn.Module):
    """A decoder whose step takes longer as the state grows, like attention over a KV cache. Time is a fake
    clock that each step advances by ``per_token_s`` per token in the state, so the test does not depend on
    the machine's load."""

    def __init__(self, vocab: int = 5, per_token_s: float = 0.0005) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(vocab))
        self.per_token_s = per_token_s
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def init_state(self, batch_size: int) -> int:
        return 0

    def step(self, idx: torch.Tensor, state: int) -> tuple[torch.Tensor, int]:
        state += idx.shape[1]
        self.now += self.per_token_s * state
        return self.w.expand(idx.shape[0], idx.shape[1], -1), state


def test_decode_step_times_grow_with_the_state() -> None:
    model = _CountingDecoder()
    times = decode_step_times(model, length=12, batch_size=2, repeats=2, clock=model.clock)
    assert times == pytest.approx([0.0005 * n for n in range(1, 13)])  # step n costs n tokens of state


# ------------------------------------------------------------------------------------------ disk, machine
def test_metrics_re_exports_the_memory_helpers() -> None:
    assert metrics.PeakMemory is memory.PeakMemory and metrics.current_rss_bytes is memory.current_rss_bytes
    assert {"PeakMemory", "current_rss_bytes"} <= set(metrics.__all__)


def test_size_on_disk(tmp_path) -> None:
    (tmp_path / "a.bin").write_bytes(b"x" * 1000)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.bin").write_bytes(b"y" * 24)
    assert size_on_disk(tmp_path / "a.bin") == 1000
    assert size_on_disk(tmp_path) == 1024


def test_machine_info_names_the_machine() -> None:
    info = machine_info("cpu")
    assert info["torch"] == torch.__version__
    assert info["cores"] >= 1 and info["cpu"]
    assert info["gpu"] is None
