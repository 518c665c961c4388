"""Learning-rate schedules against hand-computed values; the config Literal equals the registry."""

import math
import typing

import pytest
import torch

from lmforge.config.train import TrainConfig
from lmforge.errors import ConfigError
from lmforge.training.schedule import SCHEDULES, LRSchedule, lr_factor


def test_literal_equals_registry():
    literal = typing.get_args(TrainConfig.model_fields["schedule"].annotation)
    assert sorted(literal) == SCHEDULES.names()


def test_warmup_is_linear_for_every_schedule():
    for name in SCHEDULES.names():
        # at progress 0 every shape is at its peak except inverse_sqrt, which peaks at the end of warm-up
        assert lr_factor(name, 0, 0.0, warmup_steps=4) == pytest.approx(0.25)
        assert lr_factor(name, 1, 0.0, warmup_steps=4) == pytest.approx(0.5)
        assert lr_factor(name, 3, 0.0, warmup_steps=4) == pytest.approx(1.0)


def test_cosine_values():
    assert lr_factor("cosine", 100, 0.0, 0, min_ratio=0.1) == pytest.approx(1.0)
    assert lr_factor("cosine", 100, 0.5, 0, min_ratio=0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor("cosine", 100, 0.25, 0, min_ratio=0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor("cosine", 100, 1.0, 0, min_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor("cosine", 100, 7.0, 0, min_ratio=0.1) == pytest.approx(0.1)  # progress is clamped


def test_linear_constant_wsd_inverse_sqrt():
    assert lr_factor("linear", 10, 0.5, 0, min_ratio=0.0) == pytest.approx(0.5)
    assert lr_factor("constant", 10, 0.9, 0) == 1.0
    # wsd: flat until 1 - decay_fraction, then linear down to min_ratio
    assert lr_factor("wsd", 10, 0.79, 0, min_ratio=0.0, decay_fraction=0.2) == 1.0
    assert lr_factor("wsd", 10, 0.9, 0, min_ratio=0.0, decay_fraction=0.2) == pytest.approx(0.5)
    assert lr_factor("wsd", 10, 1.0, 0, min_ratio=0.1, decay_fraction=0.2) == pytest.approx(0.1)
    # inverse_sqrt: sqrt(warmup / (step + 1)) after warm-up
    assert lr_factor("inverse_sqrt", 15, 0.3, 4) == pytest.approx(math.sqrt(4 / 16))


def test_lr_schedule_sets_groups_and_rejects_unknown():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([{"params": [p], "lr": 0.2}, {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.1}])
    sched = LRSchedule(opt, "linear", warmup_steps=0, min_ratio=0.0)
    assert sched.set(5, 0.25) == pytest.approx(0.15)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.075)
    with pytest.raises(ConfigError, match="choose one of"):
        LRSchedule(opt, "exponential", 0)


def test_warmup_fraction_ends_warmup_by_time_on_a_slow_machine():
    # 100 warm-up steps, but only 10% of the time budget for warming up: a machine that reached only step 4
    # after 5% of the budget is half-way through warm-up, and at 10% it is at the peak.
    cos = lambda p: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p))  # noqa: E731
    assert lr_factor("cosine", 4, 0.05, 100, min_ratio=0.05, warmup_fraction=0.1) == pytest.approx(cos(0.05) * 0.5)
    assert lr_factor("cosine", 9, 0.10, 100, min_ratio=0.05, warmup_fraction=0.1) == pytest.approx(cos(0.10))
    # a fast machine finishes its 100 steps first: the step count decides, as without warmup_fraction
    assert lr_factor("cosine", 49, 0.01, 100, min_ratio=0.05, warmup_fraction=0.1) == pytest.approx(cos(0.01) * 0.5)
    assert lr_factor("cosine", 49, 0.01, 100, min_ratio=0.05) == pytest.approx(cos(0.01) * 0.5)
