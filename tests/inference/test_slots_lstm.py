"""LSTMSlots: a ragged prefill and in-place decoding steps give each row what it gets alone."""

from __future__ import annotations

import torch

from lmforge.config import LSTMConfig
from lmforge.inference.slots import LSTMSlots, make_slots
from lmforge.models.lstm import LSTMLanguageModel

V = 47


def _model() -> LSTMLanguageModel:
    torch.manual_seed(0)
    cfg = LSTMConfig(vocab_size=V, embedding_dim=16, hidden_dim=24, num_layers=2, dropout=0.0)
    return LSTMLanguageModel(cfg).eval()


def _alone(model: LSTMLanguageModel, ids: list[int]) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """A prompt fed alone through nn.LSTM (gradients on, so never the one-token path): last logits, state."""
    logits, state = model.step(torch.tensor([ids]), model.init_state(1))
    return logits[0, -1].detach(), (state[0].detach(), state[1].detach())


def test_prompts_of_different_lengths_prefill_in_one_call_as_each_does_alone():
    model = _model()
    slots = make_slots(model, 4)
    assert isinstance(slots, LSTMSlots) and slots.ragged
    prompts = [[5, 9, 2, 7, 7, 1], [3], [11, 4, 8], [6, 6, 6, 6, 6, 6, 6, 6, 6]]
    with torch.inference_mode():
        logits, (h, c) = slots.feed(slots.scratch(len(prompts)), prompts)
    for row, ids in enumerate(prompts):
        ref, (h1, c1) = _alone(model, ids)
        torch.testing.assert_close(logits[row], ref, atol=1e-6, rtol=0)
        torch.testing.assert_close(h[:, row], h1[:, 0], atol=1e-6, rtol=0)
        torch.testing.assert_close(c[:, row], c1[:, 0], atol=1e-6, rtol=0)


def test_decoding_in_place_with_rows_joining_and_leaving_follows_each_sequence_alone():
    model = _model()
    slots = make_slots(model, 3)
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    feeds = [[10, 11, 12, 13], [14, 15], [16, 17, 18, 19]]  # the tokens each sequence is fed after its prompt
    with torch.inference_mode():
        _, scratch = slots.feed(slots.scratch(3), prompts)
        slots.insert([0, 1, 2], scratch, [0, 1, 2])
        got = {i: [] for i in range(3)}
        rows = [0, 1, 2]  # rows[k] = the sequence in slot k
        for t in range(4):
            if t == 2:  # sequence 1 leaves: the last row moves into its slot
                slots.move([2], [1])
                rows = [0, 2]
            tokens = torch.tensor([feeds[s][t] for s in rows])
            logits = slots.decode(tokens)
            for k, s in enumerate(rows):
                got[s].append(logits[k])
    for s in range(3):
        ids = prompts[s] + feeds[s][:len(got[s])]
        full, _ = model.step(torch.tensor([ids]), model.init_state(1))
        ref = full[0, len(prompts[s]):].detach()
        torch.testing.assert_close(torch.stack(got[s]), ref, atol=1e-5, rtol=0)
