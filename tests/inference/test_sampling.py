"""Logit processors against hand-computed values and brute-force definitions."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.errors import ConfigError
from lmforge.inference.sampling import (
    SAMPLERS,
    SamplingParams,
    SamplingState,
    choose_next,
    make_generators,
    process_logits,
)


def _state(params, prompts, vocab):
    return SamplingState.create(params, prompts, vocab)


def test_repetition_penalty_is_sign_aware():
    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0]])
    params = SamplingParams(repetition_penalty=2.0)
    state = _state(params, [[0, 1]], 4)  # tokens 0 (positive logit) and 1 (negative logit) were seen
    out = SAMPLERS.get("repetition_penalty")(logits, params, state)
    assert out.tolist() == [[1.0, -2.0, 0.5, -3.0]]  # 2/2, -1*2, untouched, untouched
    before, after = torch.softmax(logits, -1)[0], torch.softmax(out, -1)[0]
    assert after[0] < before[0] and after[1] < before[1]  # both penalised tokens became less likely


def test_repetition_penalty_counts_generated_tokens():
    params = SamplingParams(repetition_penalty=1.5)
    state = _state(params, [[]], 3)
    state.update(torch.tensor([2]))
    out = process_logits(torch.tensor([[1.0, 1.0, 3.0]]), params, state)
    assert out.tolist() == [[1.0, 1.0, 2.0]]


def test_presence_and_frequency_penalties_follow_openai():
    params = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25, temperature=0)
    state = _state(params, [[0, 0, 0]], 3)  # prompt tokens do not count for these penalties
    for tok in (1, 1, 2):
        state.update(torch.tensor([tok]))
    out = process_logits(torch.zeros(1, 3), params, state)
    # token 1: -0.5 - 2*0.25 = -1.0 ; token 2: -0.5 - 0.25 = -0.75 ; token 0: untouched
    assert out.tolist() == [[0.0, -1.0, -0.75]]


def test_temperature_and_top_k():
    params = SamplingParams(temperature=0.5, top_k=2)
    out = process_logits(torch.tensor([[1.0, 3.0, 2.0, -1.0]]), params, SamplingState())
    assert out[0, 1] == 6.0 and out[0, 2] == 4.0
    assert math.isinf(out[0, 0]) and math.isinf(out[0, 3])


def test_top_p_keeps_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    for p, kept in [(0.4, [0]), (0.6, [0, 1]), (0.79, [0, 1]), (0.81, [0, 1, 2]), (0.97, [0, 1, 2, 3])]:
        out = SAMPLERS.get("top_p")(logits, SamplingParams(top_p=p), SamplingState())
        assert torch.isfinite(out[0]).nonzero().view(-1).tolist() == kept, p


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=2, max_size=12), st.floats(0.05, 0.99))
def test_top_p_matches_brute_force(values, p):
    logits = torch.tensor([values], dtype=torch.float64)
    out = SAMPLERS.get("top_p")(logits, SamplingParams(top_p=p), SamplingState())
    kept = set(torch.isfinite(out[0]).nonzero().view(-1).tolist())
    probs = torch.softmax(logits[0], -1).tolist()
    order = sorted(range(len(values)), key=lambda i: -probs[i])
    # brute force: the shortest prefix of the sorted tokens whose mass reaches p
    total, n = 0.0, 0
    while total < p and n < len(order):
        total += probs[order[n]]
        n += 1
    expected_mass = sum(probs[i] for i in order[:n])
    got_mass = sum(probs[i] for i in kept)
    assert len(kept) == n or math.isclose(got_mass, expected_mass, rel_tol=1e-9)  # ties may swap members
    assert got_mass >= p - 1e-9
    smallest_kept = min(probs[i] for i in kept)
    assert got_mass - smallest_kept < p + 1e-9  # dropping any kept token falls below p


def test_min_p_drops_tokens_below_fraction_of_top():
    probs = torch.tensor([[0.6, 0.25, 0.1, 0.05]])
    out = SAMPLERS.get("min_p")(probs.log(), SamplingParams(min_p=0.2), SamplingState())
    assert torch.isfinite(out[0]).tolist() == [True, True, False, False]  # threshold 0.12


def test_greedy_skips_sampling_filters():
    params = SamplingParams(temperature=0, top_k=1, top_p=0.1)
    logits = torch.tensor([[0.0, 2.0, 1.0]])
    assert torch.equal(process_logits(logits, params, SamplingState()), logits)
    assert choose_next(logits, params).tolist() == [1]


def test_seeded_draws_are_reproducible_and_follow_probabilities():
    probs = torch.tensor([0.7, 0.2, 0.1])
    logits = probs.log().repeat(2000, 1)
    params = SamplingParams(seed=5)
    a = choose_next(logits, params, make_generators(5, range(2000)))
    b = choose_next(logits, params, make_generators(5, range(2000)))
    assert torch.equal(a, b)
    freq = torch.bincount(a, minlength=3).float() / 2000
    assert torch.allclose(freq, probs, atol=0.04)
    # one row's draw does not depend on the others
    single = choose_next(logits[:1], params, make_generators(5, [7]))
    assert single.item() == a[7].item()


@pytest.mark.parametrize(
    "kwargs",
    [{"temperature": -1}, {"top_k": 0}, {"top_p": 0.0}, {"top_p": 1.5}, {"min_p": 2}, {"repetition_penalty": 0},
     {"presence_penalty": 3}, {"max_new_tokens": -1}, {"num_samples": 0}],
)
def test_invalid_settings_raise_config_error(kwargs):
    with pytest.raises(ConfigError):
        SamplingParams(**kwargs)


def test_from_kwargs_rejects_unknown_names_and_ignores_none():
    p = SamplingParams.from_kwargs(None, temperature=0.5, top_k=None, stop="END")
    assert p.temperature == 0.5 and p.top_k is None and p.stop == ["END"]
    with pytest.raises(ConfigError, match="tempreature"):
        SamplingParams.from_kwargs(None, tempreature=0.5)
