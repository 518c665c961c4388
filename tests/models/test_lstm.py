"""LSTM language model: stepping == full forward, exact padding, causality, tying, init and size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmforge.config import LSTMConfig
from lmforge.models import build_model
from lmforge.models.lstm import LSTMLanguageModel
from lmforge.models.protocol import CausalLM

V = 61


def _model(**kw) -> LSTMLanguageModel:
    cfg = LSTMConfig(**{"vocab_size": V, "embedding_dim": 24, "hidden_dim": 32, "num_layers": 2, "dropout": 0.1, **kw})
    return LSTMLanguageModel(cfg).eval()


def _manual_lstm(model: LSTMLanguageModel, idx: torch.Tensor) -> torch.Tensor:
    """An independent LSTM from the gate equations (i, f, g, o order, as nn.LSTM stores them)."""
    x = model.embedding(idx)  # (B, T, E)
    for layer in range(model.config.num_layers):
        w_ih = getattr(model.lstm, f"weight_ih_l{layer}")
        w_hh = getattr(model.lstm, f"weight_hh_l{layer}")
        b = getattr(model.lstm, f"bias_ih_l{layer}") + getattr(model.lstm, f"bias_hh_l{layer}")
        h = torch.zeros(idx.size(0), model.config.hidden_dim)
        c = torch.zeros_like(h)
        outs = []
        for t in range(idx.size(1)):
            i, f, g, o = (x[:, t] @ w_ih.T + h @ w_hh.T + b).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(h)
        x = torch.stack(outs, dim=1)
    return model.head(x)


def test_satisfies_protocol_and_shapes():
    model = _model()
    assert isinstance(model, CausalLM)
    assert model.max_context is None and model.hidden_size == 32
    idx = torch.randint(0, V, (3, 9))
    logits, loss = model(idx)
    assert logits.shape == (3, 9, V) and loss is None
    assert model.hidden_states(idx).shape == (3, 9, 32)
    assert isinstance(build_model(model.config), LSTMLanguageModel)


def test_forward_matches_hand_written_lstm():
    model = _model()
    idx = torch.randint(0, V, (2, 6))
    torch.testing.assert_close(model(idx)[0], _manual_lstm(model, idx), atol=1e-5, rtol=1e-5)


def test_loss_ignores_minus_100():
    model = _model()
    idx = torch.randint(0, V, (2, 7))
    targets = torch.randint(0, V, (2, 7))
    targets[0, :3] = -100
    targets[1, 5] = -100
    logits, loss = model(idx, targets)
    keep = targets != -100
    expected = F.cross_entropy(logits[keep], targets[keep])
    torch.testing.assert_close(loss, expected)


def test_step_by_step_equals_full_forward():
    model = _model()
    idx = torch.randint(0, V, (3, 12))
    full, _ = model(idx)
    state = model.init_state(3)
    steps = []
    for t in range(12):
        logits, state = model.step(idx[:, t : t + 1], state)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_state_carried_across_uneven_chunks():
    model = _model()
    idx = torch.randint(0, V, (2, 15))
    full, _ = model(idx)
    state, outs, start = None, [], 0
    for size in (4, 1, 7, 3):
        logits, state = model.step(idx[:, start : start + size], state)
        outs.append(logits)
        start += size
    torch.testing.assert_close(torch.cat(outs, dim=1), full, atol=1e-5, rtol=1e-5)
    h, c = state
    assert h.shape == c.shape == (2, 2, 32)


def test_left_padded_batch_gives_each_row_its_own_logits_and_state():
    model = _model()
    rows = [torch.randint(0, V, (n,)) for n in (5, 9, 1)]
    t = max(len(r) for r in rows)
    batch = torch.full((3, t), 7, dtype=torch.long)  # a real token id as padding: it must be ignored anyway
    mask = torch.zeros(3, t, dtype=torch.long)
    for b, r in enumerate(rows):
        batch[b, t - len(r) :] = r
        mask[b, t - len(r) :] = 1
    logits, (h, c) = model.step(batch, model.init_state(3), attention_mask=mask)
    cont = torch.randint(0, V, (3, 4))  # continue unpadded, as generation does
    logits2, _ = model.step(cont, (h, c))
    for b, r in enumerate(rows):
        alone, (h1, c1) = model.step(r[None], model.init_state(1))
        torch.testing.assert_close(logits[b, t - len(r) :], alone[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(h[:, b], h1[:, 0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(c[:, b], c1[:, 0], atol=1e-5, rtol=1e-5)
        alone2, _ = model.step(cont[b : b + 1], (h1, c1))
        torch.testing.assert_close(logits2[b], alone2[0], atol=1e-5, rtol=1e-5)


def test_padded_positions_never_change_a_carried_state():
    model = _model()
    prefix = torch.randint(0, V, (2, 4))
    _, state = model.step(prefix, None)
    idx = torch.randint(0, V, (2, 3))
    mask = torch.tensor([[0, 0, 0], [0, 1, 1]])  # row 0 is all padding
    _, (h, c) = model.step(idx, state, attention_mask=mask)
    torch.testing.assert_close(h[:, 0], state[0][:, 0])
    torch.testing.assert_close(c[:, 0], state[1][:, 0])
    _, (h1, _) = model.step(idx[1:, 1:], (state[0][:, 1:], state[1][:, 1:]))
    torch.testing.assert_close(h[:, 1], h1[:, 0], atol=1e-5, rtol=1e-5)


def test_right_padding_does_not_change_hidden_states_of_real_tokens():
    model = _model()
    idx = torch.randint(0, V, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[0, 5:] = 0
    hs = model.hidden_states(idx, attention_mask=mask)
    alone = model.hidden_states(idx[:1, :5])
    torch.testing.assert_close(hs[0, :5], alone[0], atol=1e-5, rtol=1e-5)


def test_no_future_leakage():
    model = _model()
    idx = torch.randint(0, V, (2, 10))
    base, _ = model(idx)
    for t in (0, 4, 8):
        changed = idx.clone()
        changed[:, t + 1 :] = (changed[:, t + 1 :] + 1) % V
        out, _ = model(changed)
        torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1])
        assert not torch.allclose(out[:, t + 1 :], base[:, t + 1 :])
    # Gradient view: logits at position 3 depend on no embedding after it.
    emb = model.embedding(idx).detach().requires_grad_(True)
    out, _ = model.lstm(emb)
    model.head(out)[:, 3].sum().backward()
    assert emb.grad[:, 4:].abs().max() == 0 and emb.grad[:, :4].abs().max() > 0


def test_tied_embeddings_share_one_tensor_and_train_together():
    untied = _model(embedding_dim=32)
    tied = _model(embedding_dim=32, tie_embeddings=True)
    assert tied.head.weight is tied.embedding.weight
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(untied) - n(tied) == V * 32
    tied.train()
    idx = torch.randint(0, V, (2, 5))
    tied(idx, idx)[1].backward()
    assert tied.embedding.weight.grad is not None and tied.head.weight.grad is tied.embedding.weight.grad


def test_init_range_and_dropout_are_read():
    model = _model(init_range=0.05, vocab_size=128, embedding_dim=32)
    for w in (model.embedding.weight, model.head.weight):
        assert w.abs().max() <= 0.05 and w.abs().max() > 0.045  # uniform over the whole range
    assert model.head.bias.abs().max() == 0
    assert model.lstm.dropout == 0.1 and model.dropout.p == 0.1
    assert _model(num_layers=1).lstm.dropout == 0.0  # nn.LSTM warns on dropout with one layer
    model.train()
    idx = torch.randint(0, V, (2, 6))
    assert not torch.allclose(model(idx)[0], model(idx)[0])
    model.eval()
    torch.testing.assert_close(model(idx)[0], model(idx)[0])


def test_backward_gives_finite_gradients_everywhere():
    model = _model().train()
    idx = torch.randint(0, V, (2, 6))
    _, loss = model(idx, idx)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_reference_size_parameter_count_and_repr():
    cfg = LSTMConfig(vocab_size=2000, embedding_dim=256, hidden_dim=256, num_layers=2, dropout=0.2)
    with torch.device("meta"):
        model = LSTMLanguageModel(cfg)
    v, e, h = 2000, 256, 256
    lstm = sum(4 * h * (inp + h) + 2 * 4 * h for inp in (e, h))
    expected = v * e + lstm + h * v + v
    n = sum(p.numel() for p in model.parameters())
    assert n == expected == 2_078_672  # "about 2.1M" in the models issue
    text = repr(model)
    assert "2.08M" in text and "hidden_dim=256" in text and "num_layers=2" in text


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.long])
def test_all_ones_mask_equals_no_mask(mask_dtype):
    model = _model()
    idx = torch.randint(0, V, (2, 5))
    a, _ = model.step(idx, None, attention_mask=torch.ones(2, 5, dtype=mask_dtype))
    b, _ = model.step(idx, None)
    torch.testing.assert_close(a, b)
