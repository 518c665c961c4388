"""The seq2seq Transformer is built from the decoder-only Transformer's parts, decodes through the one
KV cache, and still loads weights saved before the parts were shared."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from lmforge.config import Seq2SeqTransformerConfig
from lmforge.models.io import load_weights
from lmforge.models.seq2seq.transformer import Seq2SeqTransformer, upgrade_state_dict
from lmforge.models.transformer.attention import SelfAttention
from lmforge.models.transformer.cache import KVCache
from lmforge.models.transformer.ffn import MLP
from lmforge.models.transformer.model import Block

FIXTURES = Path(__file__).parent / "fixtures"


def _old_model() -> tuple[Seq2SeqTransformer, dict]:
    cfg = Seq2SeqTransformerConfig.parse(json.loads((FIXTURES / "seq2seq_transformer_v1.json").read_text()))
    return Seq2SeqTransformer(cfg).eval(), load_file(FIXTURES / "seq2seq_transformer_v1.io.safetensors")


def test_weights_saved_by_the_old_seq2seq_transformer_load_and_give_its_logits() -> None:
    old = load_file(FIXTURES / "seq2seq_transformer_v1.safetensors")
    assert "encoder_layers.0.self_attn.q_proj.weight" in old and "decoder_layers.0.sub3.norm.weight" in old
    model, io = _old_model()
    model.load_state_dict(old)  # strict: every old key is mapped, every new one filled
    with torch.no_grad():
        torch.testing.assert_close(model(io["src"], io["tgt"]), io["logits"], atol=1e-6, rtol=1e-6)
    model, _ = _old_model()  # the run-folder loader checks names first: it maps them too
    load_weights(model, FIXTURES / "seq2seq_transformer_v1.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(model(io["src"], io["tgt"]), io["logits"], atol=1e-6, rtol=1e-6)


def test_upgrade_leaves_a_current_state_dict_alone() -> None:
    model, _ = _old_model()
    sd = model.state_dict()
    assert upgrade_state_dict(dict(sd)).keys() == sd.keys()


def test_seq2seq_layers_are_the_decoder_only_blocks() -> None:
    model, _ = _old_model()
    enc, dec = model.encoder_layers[0], model.decoder_layers[0]
    assert type(enc) is Block and type(dec) is Block
    assert type(enc.attn) is SelfAttention and enc.cross_attn is None
    assert type(dec.attn) is SelfAttention and type(dec.cross_attn) is SelfAttention
    assert isinstance(dec.ffn, MLP)
    assert isinstance(model.start_decoding(torch.ones(1, 3, dtype=torch.long)), KVCache)


@torch.no_grad()
def test_incremental_decoding_past_the_initial_cache_capacity_equals_full_decoding() -> None:
    torch.manual_seed(0)
    cfg = Seq2SeqTransformerConfig(src_vocab_size=20, tgt_vocab_size=18, d_model=16, num_heads=2,
                                   num_encoder_layers=1, num_decoder_layers=2, d_ff=24, dropout=0.0)
    model = Seq2SeqTransformer(cfg).eval()
    src, tgt = torch.randint(1, 20, (2, 5)), torch.randint(1, 18, (2, 40))  # 40 > the 16 slots allocated first
    full = model(src, tgt)
    state = model.start_decoding(src)
    steps = []
    for t in range(tgt.size(1)):
        logits, state = model.decode_step(tgt[:, t:t + 1], state)
        if t == 20:
            state = state.select(torch.tensor([0, 1]))  # a copy of a grown cache decodes on unchanged
        steps.append(logits)
    assert state.length == 40 and state.k.size(3) >= 40
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)


def test_a_seed_builds_the_same_weights_as_the_old_seq2seq_transformer() -> None:
    # the fixture holds what the old code built from seed 0: the same weights (and so the same training run)
    # come out only if building the model draws the same random numbers in the same order as before
    model, _ = _old_model()
    torch.manual_seed(0)
    model = Seq2SeqTransformer(model.config)
    old = upgrade_state_dict(load_file(FIXTURES / "seq2seq_transformer_v1_init.safetensors"))
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, old[name], atol=0, rtol=0, msg=name)
