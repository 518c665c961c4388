"""docs/entry-points/translation.md runs as written (smaller sizes); the classic seq2seq classes are lmforge's."""

from __future__ import annotations

import pytest
import torch
from entry_doc_snippets import assert_lines_in_doc, doc_text, run_doc

from lmforge.config import Config
from lmforge.errors import ConfigError
from lmforge.models import SimpleSeq2SeqLSTM, SimpleTransformer
from lmforge.models.seq2seq import Seq2SeqLSTM, Seq2SeqTransformer

PAGE = "translation.md"

ISSUE_SNIPPET = """
from lmforge.models import SimpleTransformer, SimpleSeq2SeqLSTM
from lmforge.config import Config
model = SimpleTransformer(src_vocab_size=10000, tgt_vocab_size=10000, d_model=512, n_heads=8,
                          num_encoder_layers=6, num_decoder_layers=6)
logits = model(src, tgt)            # [batch, tgt_len, vocab]
memory = model.encode(src)          # [batch, src_len, d_model]
logits = model.decode(tgt, memory)
lstm = SimpleSeq2SeqLSTM(src_vocab_size=10000, tgt_vocab_size=10000, emb_dim=256, hidden_dim=512, num_layers=2)
lstm = SimpleSeq2SeqLSTM(10000, 10000, config=Config(lstm_emb_dim=256, lstm_hidden_dim=512, lstm_num_layers=3, lstm_dropout=0.2))
small = SimpleTransformer(10000, 10000, config=Config(d_model=64, n_heads=2, num_encoder_layers=1, num_decoder_layers=1))
_, (h, c) = lstm.encoder(lstm.src_embed(src[:1]))        # encode one sentence
output, (h, c) = lstm.decoder(lstm.tgt_embed(tok), (h, c))
"""

SUBS = {
    "10000": "100",
    "d_model=512, n_heads=8": "d_model=32, n_heads=2",
    "num_encoder_layers=6, num_decoder_layers=6": "num_encoder_layers=1, num_decoder_layers=1",
    "emb_dim=256, hidden_dim=512, num_layers=2": "emb_dim=16, hidden_dim=32, num_layers=2",
    "lstm_emb_dim=256, lstm_hidden_dim=512": "lstm_emb_dim=16, lstm_hidden_dim=32",
}


def test_page_shows_the_issue_snippet():
    assert_lines_in_doc(PAGE, ISSUE_SNIPPET)


def test_page_runs(capsys):
    ns = run_doc(PAGE, SUBS)
    model, lstm, small, again = ns["model"], ns["lstm"], ns["small"], ns["again"]
    assert isinstance(model.core, Seq2SeqTransformer) and isinstance(lstm.core, Seq2SeqLSTM)
    assert tuple(ns["memory"].shape) == (2, 12, 32)
    assert tuple(ns["logits"].shape) == (2, 9, 100)
    # Config overrides the constructor's arguments.
    assert (lstm.config.num_layers, lstm.config.emb_dim, lstm.config.hidden_dim, lstm.config.dropout) == (3, 16, 32, 0.2)
    assert lstm.encoder.num_layers == 3 and lstm.decoder.hidden_size == 32
    c = small.config
    assert (c.d_model, c.num_heads, c.num_encoder_layers, c.num_decoder_layers, c.d_ff) == (64, 2, 1, 1, 256)
    # The state_dict round trip restored every tensor.
    for k, v in small.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k].to(v.device), v)
    assert "out_ids" in ns and all(isinstance(t, int) for t in ns["out_ids"])


def test_hand_written_greedy_loop_matches_decode():
    torch.manual_seed(0)
    lstm = SimpleSeq2SeqLSTM(50, 40, emb_dim=16, hidden_dim=24, num_layers=2).eval()
    src = torch.randint(8, 50, (1, 7))
    with torch.no_grad():
        _, (h, c) = lstm.encoder(lstm.src_embed(src))
        tok, prefix = torch.tensor([[2]]), [2]
        for _ in range(6):
            output, (h, c) = lstm.decoder(lstm.tgt_embed(tok), (h, c))
            step_logits = lstm.output(output)[:, -1]
            full = lstm.decode(torch.tensor([prefix]), lstm.encode(src))[:, -1]  # the model's own decode, re-run
            torch.testing.assert_close(step_logits, full, rtol=1e-5, atol=1e-5)
            tok = step_logits.argmax(-1, keepdim=True)
            prefix.append(int(tok))


def test_encode_decode_equal_forward_and_state_dict_round_trip(tmp_path):
    torch.manual_seed(0)
    model = SimpleTransformer(60, 50, d_model=32, n_heads=2, num_encoder_layers=1, num_decoder_layers=2).eval()
    src, tgt = torch.randint(8, 60, (3, 6)), torch.randint(8, 50, (3, 4))
    src[0, 4:] = 0  # padding
    ref = model(src, tgt)
    torch.testing.assert_close(model.decode(tgt, model.encode(src)), ref)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    other = SimpleTransformer(60, 50, d_model=32, n_heads=2, num_encoder_layers=1, num_decoder_layers=2).eval()
    assert not torch.allclose(other(src, tgt), ref)
    other.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    torch.testing.assert_close(other(src, tgt), ref)
    assert model.to("cpu") is model and next(model.parameters()).device.type == "cpu"
    if torch.cuda.is_available():
        torch.testing.assert_close(model.to("cuda")(src.cuda(), tgt.cuda()).cpu(), ref, rtol=1e-4, atol=1e-4)


def test_dim_feedforward_default_and_options():
    m = SimpleTransformer(30, d_model=16, n_heads=2, num_encoder_layers=1, num_decoder_layers=1,
                          positional="sinusoidal", norm_placement="post")
    assert m.config.d_ff == 64 and m.config.tgt_vocab_size == 30 and m.config.positional == "sinusoidal"


def test_config_typo_is_an_error():
    with pytest.raises(ConfigError, match="d_modle"):
        Config(d_modle=64)
    with pytest.raises(ConfigError, match="divisible by num_heads"):
        SimpleTransformer(100, 100, config=Config(d_model=30, n_heads=4))  # 30 is not divisible by 4


def test_documented_parameter_counts():
    with torch.device("meta"):
        big = SimpleTransformer(src_vocab_size=10000, tgt_vocab_size=10000, d_model=512, n_heads=8,
                                num_encoder_layers=6, num_decoder_layers=6)
        small = SimpleTransformer(10000, 10000, config=Config(d_model=64, n_heads=2, num_encoder_layers=1,
                                                              num_decoder_layers=1))
    text = doc_text(PAGE)
    for m in (big, small):
        assert f"{sum(p.numel() for p in m.parameters()):,}" in text
