"""The seq2seq Transformer and LSTM: shapes, masks, KV-cache equivalence, RoPE, the documented LSTM surface."""

from __future__ import annotations

import io
import itertools
from types import SimpleNamespace

import pytest
import torch

from lmforge.config import Seq2SeqLSTMConfig, Seq2SeqTransformerConfig
from lmforge.errors import ConfigError
from lmforge.models import build_model
from lmforge.models.seq2seq import Seq2SeqLSTM, Seq2SeqTransformer
from lmforge.models.transformer.attention import apply_rope
from lmforge.models.transformer.positions import NoPositions, RotaryEmbedding

SV, TV, PAD = 37, 29, 0

TFM_VARIANTS = [
    dict(positional=p, norm_placement=n, norm_type=t)
    for p, n, t in itertools.product(["rope", "sinusoidal"], ["pre", "post"], ["layernorm", "rmsnorm"])
] + [dict(share_embeddings=True, src_vocab_size=TV), dict(tie_output=False)]
LSTM_VARIANTS = [dict(attention=a, bidirectional_encoder=bi)
                 for a, bi in itertools.product(["none", "dot", "general", "additive"], [False, True])]


def tfm(**kw) -> Seq2SeqTransformer:
    base = dict(src_vocab_size=SV, tgt_vocab_size=TV, d_model=32, num_heads=4, num_encoder_layers=2,
                num_decoder_layers=2, d_ff=64, dropout=0.0, max_len=64)
    return build_model(Seq2SeqTransformerConfig(**{**base, **kw})).eval()


def lstm(**kw) -> Seq2SeqLSTM:
    base = dict(src_vocab_size=SV, tgt_vocab_size=TV, emb_dim=16, hidden_dim=32, num_layers=2, dropout=0.0)
    return build_model(Seq2SeqLSTMConfig(**{**base, **kw})).eval()


ALL = [pytest.param(lambda kw=kw: tfm(**kw), id=f"tfm-{kw}") for kw in TFM_VARIANTS] + [
    pytest.param(lambda kw=kw: lstm(**kw), id=f"lstm-{kw}") for kw in LSTM_VARIANTS
]


def rand_ids(b: int, t: int, v: int) -> torch.Tensor:
    return torch.randint(4, v, (b, t))


@pytest.mark.parametrize("make", ALL)
def test_shapes_and_backward(make) -> None:
    model = make().train()
    src, tgt = rand_ids(3, 7, model.config.src_vocab_size), rand_ids(3, 5, TV)
    logits = model(src, tgt)
    assert logits.shape == (3, 5, TV)
    logits.logsumexp(-1).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    memory = model.eval().encode(src)
    torch.testing.assert_close(model.decode(tgt, memory), model(src, tgt))


@pytest.mark.parametrize("make", ALL)
def test_source_padding_never_changes_the_output(make) -> None:
    model = make()
    a, b = rand_ids(1, 6, model.config.src_vocab_size), rand_ids(1, 3, model.config.src_vocab_size)
    tgt = rand_ids(2, 5, TV)
    alone = torch.cat([model(a, tgt[:1]), model(b, tgt[1:])])
    batch = torch.full((2, 9), PAD)  # right-padded batch with extra padding beyond the longest row
    batch[0, :6], batch[1, :3] = a[0], b[0]
    torch.testing.assert_close(model(batch, tgt), alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("make", ALL)
def test_incremental_decoding_equals_full_decoding(make) -> None:
    model = make()
    src = rand_ids(2, 6, model.config.src_vocab_size)
    src[1, 4:] = PAD
    tgt = rand_ids(2, 7, TV)
    full = model(src, tgt)
    state = model.start_decoding(src)
    steps = []
    for t in range(tgt.size(1)):  # one token at a time
        logits, state = model.decode_step(tgt[:, t:t + 1], state)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-4)
    state = model.start_decoding(src)  # in chunks of 3, 4
    first, state = model.decode_step(tgt[:, :3], state)
    second, state = model.decode_step(tgt[:, 3:], state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), full, atol=1e-5, rtol=1e-4)
    # selecting rows of a state (as beam search does) decodes those rows unchanged
    state = model.start_decoding(src)
    _, state = model.decode_step(tgt[:, :3], state)
    picked, _ = model.decode_step(tgt[[1, 1, 0], 3:], state.select(torch.tensor([1, 1, 0])))
    torch.testing.assert_close(picked, full[[1, 1, 0], 3:], atol=1e-5, rtol=1e-4)


def test_transformer_cross_attention_keys_values_computed_once() -> None:
    model = tfm()
    calls = []
    for layer in model.decoder_layers:  # the source keys/values are projected once per layer, then reused
        orig = layer.cross_attn.project_kv
        layer.cross_attn.project_kv = lambda m, orig=orig: (calls.append(1), orig(m))[1]
    state = model.start_decoding(rand_ids(2, 5, SV))
    for _ in range(4):
        _, state = model.decode_step(torch.full((2, 1), 2), state)
    assert len(calls) == len(model.decoder_layers)


@pytest.mark.parametrize("make", ALL)
def test_decoder_is_causal(make) -> None:
    model = make()
    src, tgt = rand_ids(2, 5, model.config.src_vocab_size), rand_ids(2, 6, TV)
    changed = tgt.clone()
    changed[:, 4:] = rand_ids(2, 2, TV)
    torch.testing.assert_close(model(src, changed)[:, :4], model(src, tgt)[:, :4])


def test_rope_scores_depend_only_on_relative_offset() -> None:
    pos = RotaryEmbedding(8)
    rope = lambda x, p: apply_rope(x, *pos.rotary(torch.tensor([[p]])))  # noqa: E731
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    score = lambda m, n: (rope(q, m) * rope(k, n)).sum().item()  # noqa: E731
    assert score(3, 1) == pytest.approx(score(10, 8), abs=1e-5)
    assert score(0, 5) == pytest.approx(score(7, 12), abs=1e-5)
    assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)
    # position 0 is the identity, and the rotation keeps the norm
    torch.testing.assert_close(rope(q, 0), q)
    assert rope(q, 5).norm().item() == pytest.approx(q.norm().item(), rel=1e-5)


def test_rope_is_applied_inside_attention_not_to_embeddings() -> None:
    model = tfm(positional="rope")
    src, tgt = rand_ids(1, 5, SV), rand_ids(1, 4, TV)
    x = torch.randn(1, 5, model.config.d_model)
    torch.testing.assert_close(model.pos.embed(x, torch.arange(5)[None]), x)  # nothing added to embeddings
    model.pos = NoPositions()  # without RoPE the encoder is blind to order ...
    perm = torch.tensor([[4, 3, 2, 1, 0]])
    same = model(src, tgt)
    torch.testing.assert_close(model(src.gather(1, perm), tgt), same, atol=1e-5, rtol=1e-4)
    model = tfm(positional="rope")  # ... and with it, order matters
    assert not torch.allclose(model(src.gather(1, perm), tgt), model(src, tgt), atol=1e-4)


def test_transformer_tied_and_shared_weights() -> None:
    model = tfm(share_embeddings=True, src_vocab_size=TV)
    assert model.output.weight is model.tgt_embed.weight is model.src_embed.weight
    assert tfm(tie_output=False).output.weight is not tfm(tie_output=False).tgt_embed.weight
    with pytest.raises(ConfigError, match="share_embeddings"):
        Seq2SeqTransformerConfig.parse({"share_embeddings": True, "src_vocab_size": 10, "tgt_vocab_size": 11})
    with pytest.raises(ConfigError, match="even"):
        Seq2SeqTransformerConfig.parse({"d_model": 12, "num_heads": 4})


def test_lstm_constructor_defaults_and_config_overrides() -> None:
    model = Seq2SeqLSTM(50, 40)
    assert (model.config.emb_dim, model.config.hidden_dim, model.config.num_layers) == (256, 512, 2)
    assert model.config.dropout == 0.1 and model.config.pad_idx == 0
    assert model.encoder.num_layers == 2 and model.decoder.hidden_size == 512
    cfg = SimpleNamespace(lstm_emb_dim=8, lstm_hidden_dim=16, lstm_num_layers=3, lstm_dropout=0.2)
    small = Seq2SeqLSTM(50, 40, emb_dim=999, config=cfg)
    assert (small.src_embed.embedding_dim, small.decoder.hidden_size, small.encoder.num_layers) == (8, 16, 3)
    assert small.encoder.dropout == 0.2
    assert Seq2SeqLSTM(50).output.out_features == 50
    with pytest.raises(ConfigError, match="even"):
        Seq2SeqLSTM(50, 40, hidden_dim=33, bidirectional_encoder=True)


def test_lstm_hand_written_greedy_loop_matches_model() -> None:
    model = Seq2SeqLSTM(SV, TV, emb_dim=16, hidden_dim=32, num_layers=2, dropout=0.0).eval()
    src = rand_ids(2, 6, SV)
    tok = torch.full((2, 1), 2)
    _, (h, c) = model.encoder(model.src_embed(src))
    hand = []
    for _ in range(5):
        out, (h, c) = model.decoder(model.tgt_embed(tok), (h, c))
        logits = model.output(out)
        hand.append(tok)
        tok = logits[:, -1].argmax(-1, keepdim=True)
    tgt = torch.cat(hand, dim=1)
    assert isinstance(model.encoder, torch.nn.LSTM) and isinstance(model.decoder, torch.nn.LSTM)
    torch.testing.assert_close(model(src, tgt)[:, -1].argmax(-1, keepdim=True), tok)


@pytest.mark.parametrize("make", [ALL[0], ALL[-1]])
def test_state_dict_round_trip(make) -> None:
    model, other = make(), make()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    other.load_state_dict(torch.load(buf, weights_only=True))
    src, tgt = rand_ids(2, 5, model.config.src_vocab_size), rand_ids(2, 4, TV)
    torch.testing.assert_close(other(src, tgt), model(src, tgt))


def test_all_padding_source_stays_finite() -> None:
    for model in (tfm(), lstm(attention="dot")):
        src = torch.zeros(2, 4, dtype=torch.long)
        src[0, :2] = 5
        assert torch.isfinite(model(src, rand_ids(2, 3, TV))).all()
