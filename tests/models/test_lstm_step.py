"""The LSTM's one-token step (one joined matrix product per layer, rows updated in place) against nn.LSTM."""

from __future__ import annotations

import pytest
import torch

from lmforge.config import LSTMConfig
from lmforge.models.lstm import LSTMLanguageModel

V = 53


def _model(dtype: torch.dtype = torch.float32, **kw) -> LSTMLanguageModel:
    torch.manual_seed(0)
    cfg = LSTMConfig(**{"vocab_size": V, "embedding_dim": 24, "hidden_dim": 32, "num_layers": 2, "dropout": 0.1, **kw})
    return LSTMLanguageModel(cfg).to(dtype).eval()


def _state(model: LSTMLanguageModel, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (model.config.num_layers, rows, model.config.hidden_dim)
    w = model.head.weight
    return torch.randn(shape, dtype=w.dtype) * 0.5, torch.randn(shape, dtype=w.dtype) * 0.5


def _reference(model: LSTMLanguageModel, tokens: torch.Tensor, state: tuple) -> tuple[torch.Tensor, tuple]:
    """nn.LSTM's own step (the module PyTorch ships), never the joined path."""
    out, (h, c) = model.lstm(model.embedding(tokens.view(-1, 1)), state)
    return model.head(out[:, -1]), (h, c)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_one_token_step_equals_nn_lstm(dtype, tol):
    model = _model(dtype)
    state = _state(model, 4)
    tokens = torch.randint(0, V, (4,))
    with torch.no_grad():
        logits, (h, c) = model.step(tokens.view(4, 1), state)
        assert model._fused.key is not None  # the joined path ran
        ref, (h_ref, c_ref) = _reference(model, tokens, state)
    torch.testing.assert_close(logits[:, 0], ref, atol=tol, rtol=0)
    torch.testing.assert_close(h, h_ref, atol=tol, rtol=0)
    torch.testing.assert_close(c, c_ref, atol=tol, rtol=0)
    assert h.data_ptr() != state[0].data_ptr()  # step returns a new state; the given one is untouched


def test_many_steps_equal_the_full_forward():
    model = _model()
    idx = torch.randint(0, V, (3, 40))
    with torch.no_grad():
        full, _ = model(idx)
        state, steps = None, []
        for t in range(idx.size(1)):
            logits, state = model.step(idx[:, t:t + 1], state)
            steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("joined", [True, False])
def test_step_rows_updates_the_first_rows_in_place_and_nothing_else(joined):
    """With the joined path (no gradients), and without it (gradients on: nn.LSTM, written back into the rows)."""
    model = _model()
    h, c = _state(model, 6)
    h0, c0 = h.clone(), c.clone()
    tokens = torch.randint(0, V, (4,))
    with torch.set_grad_enabled(not joined):
        logits = model.step_rows(tokens, (h, c)).detach()
    assert (model._fused.key is not None) == joined
    with torch.no_grad():
        ref, (h_ref, c_ref) = _reference(model, tokens, (h0[:, :4].contiguous(), c0[:, :4].contiguous()))
    torch.testing.assert_close(logits, ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(h[:, :4].detach(), h_ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(c[:, :4].detach(), c_ref, atol=1e-6, rtol=0)
    assert torch.equal(h[:, 4:], h0[:, 4:]) and torch.equal(c[:, 4:], c0[:, 4:])


def test_joined_weights_follow_changed_weights():
    model = _model()
    state = _state(model, 2)
    tokens = torch.randint(0, V, (2,))
    with torch.no_grad():
        model.step(tokens.view(2, 1), state)
        model.lstm.weight_hh_l1.mul_(0.5)  # changed in place, as an optimizer does
        model.lstm.bias_ih_l0.add_(0.3)
        logits, _ = model.step(tokens.view(2, 1), state)
        ref, _ = _reference(model, tokens, state)
        torch.testing.assert_close(logits[:, 0], ref, atol=1e-6, rtol=0)
        model.load_state_dict({k: v * 1.1 for k, v in model.state_dict().items()})
        logits, _ = model.step(tokens.view(2, 1), state)
        ref, _ = _reference(model, tokens, state)
    torch.testing.assert_close(logits[:, 0], ref, atol=1e-6, rtol=0)


def test_training_gradients_and_inference_weights_take_nn_lstm():
    model = _model()
    state = _state(model, 2)
    tokens = torch.randint(0, V, (2, 1))
    logits, _ = model.step(tokens, state)  # gradients on
    assert logits.requires_grad and model._fused.key is None
    model.train()
    with torch.no_grad():
        model.step(tokens, state)
    assert model._fused.key is None
    with torch.inference_mode():
        frozen = _model()  # weights made under inference_mode: no version counter
        logits, _ = frozen.step(tokens, state)
        ref, _ = _reference(frozen, tokens.view(-1), state)
    assert frozen._fused.key is None
    torch.testing.assert_close(logits[:, 0], ref)


def test_padded_one_token_step_keeps_the_masked_row():
    model = _model()
    state = _state(model, 2)
    tokens = torch.randint(0, V, (2, 1))
    with torch.no_grad():
        _, (h, c) = model.step(tokens, state, attention_mask=torch.tensor([[1], [0]]))
    torch.testing.assert_close(h[:, 1], state[0][:, 1])
    torch.testing.assert_close(c[:, 1], state[1][:, 1])


def test_prefill_of_rows_of_different_lengths_equals_each_row_alone():
    """Each row ends in the state and logits it reaches fed alone through nn.LSTM, from a carried state too; a
    row with no tokens keeps its state."""
    model = _model()
    rows = [[5, 9, 2, 7, 7, 1], [3], [11, 4, 8], [], [6] * 9, [12, 13, 14]]
    state = _state(model, len(rows))
    given = (state[0].clone(), state[1].clone())
    with torch.no_grad():
        logits, (h, c) = model.prefill(rows, state)
        for b, ids in enumerate(rows):
            alone_state = (state[0][:, b:b + 1].contiguous(), state[1][:, b:b + 1].contiguous())
            if ids:
                out, (h1, c1) = model.lstm(model.embedding(torch.tensor([ids])), alone_state)
                ref = model.head(out[0, -1])
            else:
                (h1, c1), ref = alone_state, model.head(alone_state[0][-1, 0])
            torch.testing.assert_close(logits[b], ref, atol=1e-6, rtol=0)
            torch.testing.assert_close(h[:, b], h1[:, 0], atol=1e-6, rtol=0)
            torch.testing.assert_close(c[:, b], c1[:, 0], atol=1e-6, rtol=0)
    assert torch.equal(h[:, 3], state[0][:, 3]) and torch.equal(c[:, 3], state[1][:, 3])
    assert torch.equal(state[0], given[0]) and torch.equal(state[1], given[1])  # not changed in place


def test_a_state_of_the_wrong_batch_size_is_refused_as_nn_lstm_refuses_it():
    model = _model()
    with torch.no_grad(), pytest.raises(RuntimeError, match="hidden"):
        model.step(torch.randint(0, V, (3, 1)), _state(model, 5))
