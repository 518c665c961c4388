"""The decoder-only Transformer: every combination runs, masks hold, RoPE is relative, variants agree with
independent references, and cached decoding (with left padding) equals a full forward pass."""

from __future__ import annotations

import itertools
import math
import typing

import pytest
import torch
import torch.nn.functional as F

from lmforge.config import transformer as tc
from lmforge.models import build_model
from lmforge.models.protocol import CausalLM
from lmforge.models.transformer import (ACTIVATIONS, ATTENTION, MLPS, NORMS, POSITIONS, Transformer,
                                        TransformerConfig)
from lmforge.models.transformer.attention import AttnMask, apply_rope
from lmforge.models.transformer.positions import RotaryEmbedding, alibi_slopes

V = 32


def make(seed: int = 0, **kw) -> Transformer:
    base = dict(vocab_size=V, d_model=16, num_layers=2, block_size=24, attention={"num_heads": 4})
    for key, value in kw.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    torch.manual_seed(seed)
    return Transformer(TransformerConfig.parse(base)).eval()


def ids(b: int = 2, t: int = 10, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("literal, registry", [
    (tc.AttentionVariant, ATTENTION), (tc.PositionalEncoding, POSITIONS), (tc.FFNVariant, MLPS),
    (tc.NormType, NORMS), (tc.Activation, ACTIVATIONS),
])
def test_config_literals_equal_registry_names(literal, registry):
    assert sorted(typing.get_args(literal)) == registry.names()


def _check_trains(model: Transformer, x: torch.Tensor) -> None:
    model.train()
    logits, loss = model(x, x)
    assert logits.shape == (*x.shape, V)
    assert torch.isfinite(logits).all() and torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), name


COMBOS = list(itertools.product(["mha", "gqa", "mqa", "complex"], ["rope", "alibi", "sinusoidal", "learned", "none"],
                                ["rmsnorm", "layernorm"], ["pre", "post", "sandwich"]))


@pytest.mark.parametrize("variant, encoding, norm, placement", COMBOS)
def test_every_core_combination_runs_forward_and_backward(variant, encoding, norm, placement):
    model = make(num_layers=1, attention={"variant": variant}, positional={"encoding": encoding},
                 norm={"type": norm, "placement": placement})
    _check_trains(model, ids(t=6))


SWITCHES = [
    {"attention": {"mask_type": "sliding_window", "window_size": 3}},
    {"attention": {"mask_type": "bidirectional"}},
    {"attention": {"use_flash_attn": True, "dropout": 0.1}},
    {"attention": {"variant": "complex", "use_flash_attn": True}},
    {"attention": {"bias": True, "num_kv_heads": 4, "head_dim": 6}},
    {"positional": {"rope_base": 500.0, "rope_scaling": 4.0}},
    {"ffn": {"variant": "geglu", "bias": True, "dropout": 0.1}},
    {"ffn": {"variant": "mlp", "activation": "relu", "hidden_dim": 20}},
    {"ffn": {"variant": "mlp", "activation": "silu", "expansion_factor": 2.0}},
    {"norm": {"eps": 1e-3}, "parallel_layers": True},
    {"tie_embeddings": False, "dropout": 0.2, "scale_embeddings": True, "residual_scaled_init": False, "init_std": 0.05},
]


@pytest.mark.parametrize("switch", SWITCHES, ids=lambda s: ",".join(f"{k}" for k in s))
def test_each_remaining_switch_runs_forward_and_backward(switch):
    _check_trains(make(**switch), ids())


def test_satisfies_protocol_and_registry_builds_it():
    model = build_model(TransformerConfig(vocab_size=V, d_model=16, num_layers=1, block_size=8, attention={"num_heads": 2}))
    assert isinstance(model, Transformer) and isinstance(model, CausalLM)
    assert model.max_context == 8 and model.hidden_size == 16


def test_loss_ignores_minus_100_targets():
    model, x = make(), ids()
    y = x.clone()
    y[0, :4] = -100
    logits, loss = model(x, y)
    keep = y != -100
    ref = -F.log_softmax(logits, -1)[keep].gather(1, y[keep][:, None]).mean()
    torch.testing.assert_close(loss, ref)
    assert model(x)[1] is None


def test_longer_than_context_is_rejected():
    with pytest.raises(ValueError, match="block_size"):
        make()(ids(t=25))


@pytest.mark.parametrize("variant", ["gqa", "complex"])
@pytest.mark.parametrize("encoding", ["rope", "alibi", "learned", "sinusoidal", "none"])
def test_causal_mask_never_sees_the_future(variant, encoding):
    model = make(attention={"variant": variant}, positional={"encoding": encoding})
    x = ids(t=12)
    base = model(x)[0]
    for k in (1, 5, 11):
        y = x.clone()
        y[:, k:] = (y[:, k:] + 7) % V
        out = model(y)[0]
        torch.testing.assert_close(out[:, :k], base[:, :k], atol=1e-6, rtol=0)
        assert not torch.allclose(out[:, k], base[:, k], atol=1e-4)


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("encoding", ["rope", "alibi", "learned"])
def test_sliding_window_sees_only_its_window(layers, encoding):
    w = 3
    model = make(num_layers=layers, attention={"mask_type": "sliding_window", "window_size": w},
                 positional={"encoding": encoding})
    x = ids(t=16)
    base = model(x)[0]
    reach = layers * (w - 1)  # receptive field grows by w - 1 per layer
    t = 12
    for j in range(16):
        y = x.clone()
        y[:, j] = (y[:, j] + 5) % V
        changed = not torch.allclose(model(y)[0][:, t], base[:, t], atol=1e-6)
        assert changed == (t - reach <= j <= t), (j, changed)


def test_bidirectional_mask_does_see_the_future():
    model = make(attention={"mask_type": "bidirectional"})
    x = ids()
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % V
    assert not torch.allclose(model(x)[0][:, 0], model(y)[0][:, 0], atol=1e-5)


def test_rope_scores_depend_only_on_relative_offsets():
    rope = RotaryEmbedding(head_dim=8, base=100.0, scaling=2.0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(m: int, n: int) -> torch.Tensor:
        qm = apply_rope(q, *rope.rotary(torch.tensor([[m]])))
        kn = apply_rope(k, *rope.rotary(torch.tensor([[n]])))
        return (qm * kn).sum()

    for m, n in [(0, 0), (3, 1), (7, 9), (2, 11)]:
        for shift in (1, 5, 40):
            torch.testing.assert_close(score(m + shift, n + shift), score(m, n), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(score(3, 1), score(3, 2))
    # the rotation keeps norms and is the identity at position 0
    torch.testing.assert_close(apply_rope(q, *rope.rotary(torch.tensor([[0]]))), q)


@pytest.mark.parametrize("encoding, invariant", [("rope", True), ("alibi", True), ("none", True),
                                                 ("learned", False), ("sinusoidal", False)])
@pytest.mark.parametrize("variant", ["gqa", "complex"])
def test_shifting_every_position_changes_only_absolute_encodings(encoding, invariant, variant):
    """RoPE lives inside attention: shifting all positions together leaves a relative model unchanged."""
    model = make(attention={"variant": variant}, positional={"encoding": encoding})
    x = ids(t=8)
    pos = torch.arange(8)[None]
    outs = [model._trunk(x, p, model._mask(p, p, None, None, torch.float32)) for p in (pos, pos + 9)]
    assert torch.allclose(outs[0], outs[1], atol=1e-5) == invariant


def _naive_attention(attn, x, rope=None):
    """A per-head reference: repeat the shared K/V heads, softmax(q k^T / sqrt(d)) v with a causal mask."""
    B, T, _ = x.shape
    H, Hkv, hd = attn.num_heads, attn.num_kv_heads, attn.head_dim
    w = attn.qkv.weight
    q = (x @ w[: H * hd].T).view(B, T, H, hd)
    k = (x @ w[H * hd: (H + Hkv) * hd].T).view(B, T, Hkv, hd)
    v = (x @ w[(H + Hkv) * hd:].T).view(B, T, Hkv, hd)
    outs = []
    for h in range(H):
        g = h // (H // Hkv)
        qh, kh = q[:, :, h], k[:, :, g]
        if rope is not None:
            qh, kh = apply_rope(qh[:, None], *rope)[:, 0], apply_rope(kh[:, None], *rope)[:, 0]
        s = qh @ kh.transpose(1, 2) / math.sqrt(hd)
        s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
        outs.append(s.softmax(-1) @ v[:, :, g])
    return attn.o_proj(torch.cat(outs, -1))


@pytest.mark.parametrize("variant, kv", [("mha", None), ("gqa", 2), ("mqa", None)])
@pytest.mark.parametrize("flash", [False, True])
def test_attention_matches_a_per_head_reference(variant, kv, flash):
    attention = {"variant": variant, "use_flash_attn": flash, **({"num_kv_heads": kv} if kv else {})}
    model = make(attention=attention)
    attn, x = model.blocks[0].attn, torch.randn(2, 7, 16)
    rope = model.pos.rotary(torch.arange(7)[None])
    torch.testing.assert_close(attn(x, rope, AttnMask(is_causal=True)), _naive_attention(attn, x, rope),
                               atol=1e-5, rtol=1e-4)


def test_gqa_with_as_many_kv_heads_as_heads_equals_mha():
    mha = make(attention={"variant": "mha"})
    gqa = make(seed=5, attention={"variant": "gqa", "num_kv_heads": 4})
    gqa.load_state_dict(mha.state_dict())
    x = ids()
    torch.testing.assert_close(gqa(x)[0], mha(x)[0])
    assert gqa.blocks[0].attn.num_kv_heads == 4
    mqa, gqa1 = make(attention={"variant": "mqa"}), make(seed=5, attention={"num_kv_heads": 1})
    gqa1.load_state_dict(mqa.state_dict())
    torch.testing.assert_close(gqa1(x)[0], mqa(x)[0])


def _pairs_to_halves(w: torch.Tensor, heads: int, hd: int) -> torch.Tensor:
    """Reorders each head's rows from (re0, im0, re1, im1, ...) to (re0, re1, ..., im0, im1, ...)."""
    return w.view(heads, hd // 2, 2, -1).transpose(1, 2).reshape(heads * hd, -1)


@pytest.mark.parametrize("encoding", ["none", "rope", "alibi"])
def test_complex_attention_equals_real_attention_on_paired_channels(encoding):
    """Re(q . conj(k)) is the real dot product of the pairs, and a phase e^{i theta} is a 2-D rotation."""
    cplx = make(attention={"variant": "complex"}, positional={"encoding": encoding})
    real = make(seed=3, attention={"variant": "mha"}, positional={"encoding": encoding})
    state = cplx.state_dict()
    for i in range(2):
        w = state[f"blocks.{i}.attn.qkv.weight"]
        q, k, v = w.split(16, 0)
        state[f"blocks.{i}.attn.qkv.weight"] = torch.cat([_pairs_to_halves(q, 4, 4), _pairs_to_halves(k, 4, 4), v])
    real.load_state_dict(state)
    x = ids()
    torch.testing.assert_close(real(x)[0], cplx(x)[0], atol=1e-5, rtol=1e-4)
    # the fused path gives the same values as the complex arithmetic
    fused = make(seed=9, attention={"variant": "complex", "use_flash_attn": True}, positional={"encoding": encoding})
    fused.load_state_dict(cplx.state_dict())
    torch.testing.assert_close(fused(x)[0], cplx(x)[0], atol=1e-5, rtol=1e-4)


def test_alibi_slopes_follow_the_paper():
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    s6 = alibi_slopes(6)  # 4 power-of-two slopes then every other slope of 8
    torch.testing.assert_close(s6, torch.tensor([2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3]))


def test_residual_scaled_init_and_embedding_scale():
    cfg = dict(d_model=64, num_layers=2, init_std=0.02)
    big = make(**cfg, ffn={"hidden_dim": 512})
    assert abs(big.blocks[0].ffn.w_out.weight.std().item() - 0.02 / math.sqrt(4)) < 1e-3
    assert abs(big.blocks[0].ffn.w_in.weight.std().item() - 0.02) < 1e-3
    assert abs(big.tok_emb.weight.std().item() - 0.02) < 2e-3
    plain = make(**cfg, ffn={"hidden_dim": 512}, residual_scaled_init=False)
    assert abs(plain.blocks[0].ffn.w_out.weight.std().item() - 0.02) < 1e-3
    a, b = make(positional={"encoding": "none"}), make(positional={"encoding": "none"}, scale_embeddings=True)
    x = ids()
    ha = a.drop(a.tok_emb(x))
    hb = b.tok_emb(x) * b._emb_scale
    torch.testing.assert_close(hb, ha * 4.0)


def test_tied_and_untied_heads():
    tied, untied = make(), make(tie_embeddings=False)
    assert tied.lm_head.weight is tied.tok_emb.weight
    assert untied.lm_head.weight is not untied.tok_emb.weight
    assert untied.num_parameters() == tied.num_parameters() + V * 16


def test_repr_shows_parameter_count_and_settings():
    model = make(attention={"variant": "mqa"}, positional={"encoding": "alibi"})
    text = repr(model)
    assert f"parameters={model.num_parameters():,}" in text
    for word in ("mqa", "alibi", "swiglu", "rmsnorm/pre", "tied=True"):
        assert word in text
