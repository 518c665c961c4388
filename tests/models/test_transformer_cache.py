"""Cached decoding of the Transformer equals a full forward pass: prefill, token by token, chunks, and
left-padded batches (each row gives the same logits as alone); right padding leaves hidden states alone."""

from __future__ import annotations

import pytest
import torch

from lmforge.models.transformer import KVCache, Transformer, TransformerConfig

V = 32

CONFIGS = {
    "default": {},
    "mha-learned-post": {"attention": {"variant": "mha"}, "positional": {"encoding": "learned"},
                         "norm": {"type": "layernorm", "placement": "post"}},
    "mqa-alibi": {"attention": {"variant": "mqa"}, "positional": {"encoding": "alibi"}},
    "window-sinusoidal": {"attention": {"mask_type": "sliding_window", "window_size": 4},
                          "positional": {"encoding": "sinusoidal"}},
    "complex-rope-sandwich": {"attention": {"variant": "complex"}, "norm": {"placement": "sandwich"}},
    "complex-fused-window": {"attention": {"variant": "complex", "use_flash_attn": True, "mask_type": "sliding_window",
                                           "window_size": 3}},
    "flash-scaled-parallel": {"attention": {"use_flash_attn": True}, "positional": {"rope_scaling": 2.0},
                              "parallel_layers": True},
    "bidirectional": {"attention": {"mask_type": "bidirectional"}},
}


def make(name: str) -> Transformer:
    cfg = {"vocab_size": V, "d_model": 16, "num_layers": 2, "block_size": 20, **CONFIGS[name]}
    cfg["attention"] = {"num_heads": 4, **cfg.get("attention", {})}
    torch.manual_seed(0)
    return Transformer(TransformerConfig.parse(cfg)).eval()


def seq(t: int, seed: int) -> torch.Tensor:
    return torch.randint(3, V, (1, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", CONFIGS)
def test_prefill_then_token_by_token_equals_full_forward(name):
    model = make(name)
    x = torch.cat([seq(14, 1), seq(14, 2)])
    state = model.init_state(2)
    for start, end in [(0, 5), (5, 6), (6, 7), (7, 8), (8, 9), (9, 14)]:  # prefill, tokens, then a chunk
        logits, state = model.step(x[:, start:end], state)
        # the logits of a full forward over everything fed so far (for a bidirectional model, a prefix sees
        # only itself, so the comparison is with the prefix each time)
        torch.testing.assert_close(logits, model(x[:, :end])[0][:, start:], atol=1e-5, rtol=1e-4)
    if name != "bidirectional":
        torch.testing.assert_close(logits, model(x)[0][:, 9:], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", CONFIGS)
def test_left_padded_batch_gives_each_row_its_own_logits(name):
    model = make(name)
    rows = [seq(6, 3), seq(3, 4), seq(1, 5)]
    width = 6
    batch = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros(3, width, dtype=torch.long)
    for i, r in enumerate(rows):
        batch[i, width - r.size(1):] = r[0]
        mask[i, width - r.size(1):] = 1
    state = model.init_state(3)
    logits, state = model.step(batch, state, attention_mask=mask)
    new = [seq(4, 10 + i) for i in range(3)]
    steps = []
    for t in range(4):
        step_logits, state = model.step(torch.cat([n[:, t:t + 1] for n in new]), state)
        steps.append(step_logits)
    steps = torch.cat(steps, 1)  # (3, 4, V)
    for i, r in enumerate(rows):
        n = r.size(1)
        torch.testing.assert_close(logits[i, width - n:], model(r)[0][0], atol=1e-5, rtol=1e-4)
        for t in range(4):  # each step equals the row alone, fed everything up to that token
            alone = model(torch.cat([r, new[i][:, :t + 1]], 1))[0][0, -1]
            torch.testing.assert_close(steps[i, t], alone, atol=1e-5, rtol=1e-4)


def test_padding_mid_decode_is_skipped():
    """A row that is padded in a later step (a chunk shorter than others) keeps its positions."""
    model = make("default")
    x = seq(6, 7)
    state = model.init_state(1)
    model.step(x[:, :3], state)
    padded = torch.cat([torch.zeros(1, 2, dtype=torch.long), x[:, 3:]], 1)
    logits, _ = model.step(padded, state, attention_mask=torch.tensor([[0, 0, 1, 1, 1]]))
    torch.testing.assert_close(logits[:, 2:], model(x)[0][:, 3:], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["default", "bidirectional", "mqa-alibi", "mha-learned-post"])
def test_right_padding_does_not_change_hidden_states(name):
    model = make(name)
    x = seq(5, 8)
    alone = model.hidden_states(x)
    padded = torch.cat([x, torch.zeros(1, 3, dtype=torch.long)], 1)
    h = model.hidden_states(padded, attention_mask=torch.tensor([[1] * 5 + [0] * 3]))
    assert h.shape == (1, 8, 16)
    torch.testing.assert_close(h[:, :5], alone, atol=1e-5, rtol=1e-4)
    # hidden states come after the final norm: the head applied to them gives the logits
    torch.testing.assert_close(model.lm_head(alone), model(x)[0])


def test_cache_is_preallocated_and_refuses_overflow():
    model = make("default")
    state = model.init_state(2)
    assert isinstance(state, KVCache)
    assert state.k.shape == (2, 2, 1, 20, 4)  # layers, batch, kv heads (8 // 4 -> auto), slots, head_dim
    buffer = state.k.data_ptr()
    model.step(torch.ones(2, 19, dtype=torch.long), state)
    model.step(torch.ones(2, 1, dtype=torch.long), state)
    assert state.k.data_ptr() == buffer and state.length == 20
    with pytest.raises(ValueError, match="KV cache full"):
        model.step(torch.ones(2, 1, dtype=torch.long), state)
