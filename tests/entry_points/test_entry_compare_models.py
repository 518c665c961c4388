"""docs/entry-points/compare-models.md runs as written; the classic pair's sizes, state and generation."""

from __future__ import annotations

import numpy as np
import torch
from entry_doc_snippets import assert_lines_in_doc, doc_text, run_doc

from lmforge.config import LSTMConfig, TransformerConfig, get_preset
from lmforge.models import SimpleLSTM_LM, SimpleTransformer_LM, build_model
from lmforge.models.lstm import LSTMLanguageModel

PAGE = "compare-models.md"

ISSUE_SNIPPET = """
from lmforge.models import SimpleLSTM_LM, SimpleTransformer_LM
lstm = SimpleLSTM_LM(vocab_size=2000, embedding_dim=256, hidden_dim=256, num_layers=2)
logits, hidden = lstm(input_ids)               # hidden = (h, c), to pass back in
tfm = SimpleTransformer_LM(vocab_size=2000, d_model=256, nhead=4, num_layers=3)
logits = tfm(input_ids)
ids = lstm.generate(start_tokens=[1, 2, 3], max_length=100)
ids = tfm.generate(start_tokens=[1, 2, 3], max_length=100)
"""


def _count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_page_shows_the_issue_snippet():
    assert_lines_in_doc(PAGE, ISSUE_SNIPPET)


def test_page_runs_with_256_dim_embeddings():
    # Real widths (256) so the embedding claim is checked as documented; a smaller vocabulary and text.
    ns = run_doc(PAGE, {"2000": "300", "[:200_000]": "[:20_000]"})
    lstm, tfm = ns["lstm"], ns["tfm"]
    assert tuple(ns["logits"].shape) == (4, 32, 300)
    h, c = ns["hidden"]
    assert tuple(h.shape) == tuple(c.shape) == (2, 4, 256)
    assert len(ns["ids"]) == 103 and ns["ids"][:3] == [1, 2, 3]
    vectors = ns["vectors"]
    assert vectors.shape == (2, 256)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    # composition, not a subclass that changes forward's contract (issue 13); the core model is .core
    assert isinstance(lstm.core, LSTMLanguageModel) and not isinstance(lstm, LSTMLanguageModel)


def test_classic_pair_parameter_counts_by_hand():
    V, E, H = 2000, 256, 256
    lstm_layer = lambda inp: 4 * H * inp + 4 * H * H + 8 * H  # noqa: E731 - W_ih, W_hh, two bias vectors
    lstm_expected = V * E + lstm_layer(E) + lstm_layer(H) + H * V + V
    d, ff, L = 256, 1024, 3
    layer = (3 * d * d + 3 * d) + (d * d + d) + (d * ff + ff) + (ff * d + d) + 2 * 2 * d  # qkv, out, ffn, 2 LayerNorms
    tfm_expected = V * d + L * layer + d * V  # sinusoidal positions have no parameters; untied head, no bias
    with torch.device("meta"):
        lstm = SimpleLSTM_LM(vocab_size=2000, embedding_dim=256, hidden_dim=256, num_layers=2)
        tfm = SimpleTransformer_LM(vocab_size=2000, d_model=256, nhead=4, num_layers=3)
        preset_like = SimpleTransformer_LM(vocab_size=2000, dim_feedforward=512, tie_weights=True)
        preset = build_model(TransformerConfig.parse({**get_preset("transformer-classic")["model"], "vocab_size": 2000}))
        lstm_preset = build_model(LSTMConfig.parse({**get_preset("lstm-classic")["model"], "vocab_size": 2000}))
    assert _count(lstm) == lstm_expected == _count(lstm_preset)
    assert _count(tfm) == tfm_expected
    assert round(_count(lstm) / 1e6, 1) == 2.1 and round(_count(tfm) / 1e6, 1) == 3.4
    assert _count(preset_like) == _count(preset)  # the transformer-classic preset, exactly
    assert preset_like.config.to_dict() == preset.config.to_dict()
    text = doc_text(PAGE)
    for n in (_count(lstm), _count(tfm), _count(preset)):
        assert f"{n:,}" in text


def test_lstm_carries_its_state_across_calls():
    torch.manual_seed(0)
    lstm = SimpleLSTM_LM(vocab_size=50, embedding_dim=16, hidden_dim=24, num_layers=2).eval()
    x = torch.randint(0, 50, (2, 12))
    whole, (h, c) = lstm(x)
    first, hidden = lstm(x[:, :5])
    second, (h2, c2) = lstm(x[:, 5:], hidden)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole)
    torch.testing.assert_close(h2, h)
    torch.testing.assert_close(c2, c)
    # Same parameter names as lmforge's LSTM LM, so the weights move to the trainable class unchanged.
    plain = LSTMLanguageModel(lstm.config).eval()
    plain.load_state_dict(lstm.state_dict())
    torch.testing.assert_close(plain(x)[0], whole)


def test_transformer_is_causal_and_round_trips(tmp_path):
    torch.manual_seed(0)
    tfm = SimpleTransformer_LM(vocab_size=40, d_model=32, nhead=2, num_layers=2).eval()
    x = torch.randint(0, 40, (2, 10))
    y = x.clone()
    y[:, 6:] = torch.randint(0, 40, (2, 4))
    torch.testing.assert_close(tfm(x)[:, :6], tfm(y)[:, :6])  # the future never changes the past
    torch.save(tfm.state_dict(), tmp_path / "t.pt")
    other = SimpleTransformer_LM(vocab_size=40, d_model=32, nhead=2, num_layers=2).eval()
    other.load_state_dict(torch.load(tmp_path / "t.pt", weights_only=True))
    torch.testing.assert_close(other(x), tfm(x))
    assert tfm.to("cpu") is tfm


def test_greedy_generate_matches_a_hand_loop():
    torch.manual_seed(0)
    for model in (SimpleLSTM_LM(vocab_size=30, embedding_dim=16, hidden_dim=16, num_layers=1),
                  SimpleTransformer_LM(vocab_size=30, d_model=16, nhead=2, num_layers=1)):
        model.eval()
        ids = [1, 2, 3]
        with torch.no_grad():
            for _ in range(12):
                out = model(torch.tensor([ids]))
                logits = out[0] if isinstance(out, tuple) else out
                ids.append(int(logits[0, -1].argmax()))
        assert model.generate(start_tokens=[1, 2, 3], max_length=12, temperature=0) == ids
        sampled = model.generate(start_tokens=[1, 2, 3], max_length=12, seed=7)
        assert sampled == model.generate(start_tokens=[1, 2, 3], max_length=12, seed=7) and len(sampled) == 15
