"""LoRA (arXiv:2106.09685): only the adapters train, merged weights give the adapted model's logits, adapters are
saved beside the base weights and merged by every loader (so exports hold merged weights)."""

from __future__ import annotations

import pytest
import torch

from lmforge.config import RunConfig
from lmforge.errors import CheckpointError, ConfigError
from lmforge.models import build_model
from lmforge.models.lora import LoRALinear, apply_lora, load_adapter, lora_parameters, merge_lora, save_adapter
from lmforge.models.run_folder import load_run, save_run
from lmforge.training.optim import build_optimizer

CFG = {"vocab_size": 48, "d_model": 32, "num_layers": 2, "block_size": 16,
       "attention": {"num_heads": 4, "num_kv_heads": 2, "bias": True}, "ffn": {"bias": True}, "tie_embeddings": False}


def _model(**kw):
    torch.manual_seed(0)
    return build_model(RunConfig.parse({"model": {**CFG, **kw}}).model)


def _x():
    return torch.randint(0, 48, (2, 12), generator=torch.Generator().manual_seed(1))


def test_only_adapter_parameters_train():
    model = apply_lora(_model(), rank=4, alpha=8, targets=["qkv", "o_proj", "w_in", "w_out", "lm_head"])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(lora_parameters(model)) and len(trainable) == 2 * (4 * 2 + 1)
    opt = build_optimizer(model, lr=1e-2, weight_decay=0.1)
    with torch.no_grad():
        start = model(_x())[0]
    torch.testing.assert_close(start, _model()(_x())[0])  # B = 0: training starts from the base model exactly
    for _ in range(3):
        x = _x()
        loss = model(x, x.roll(-1, 1))[1]
        loss.backward()
        opt.step()
        opt.zero_grad()
    for n, p in model.named_parameters():
        changed = not torch.equal(p, before[n])
        assert changed == (n in trainable), n  # every adapter moved, nothing else (weight decay included)


def test_merged_weights_give_the_adapter_models_logits():
    model = apply_lora(_model(), rank=3, alpha=5, targets=["qkv", "w_out", "lm_head"])
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("lora_b"):
                p.normal_(0, 0.3)
        want = model(_x())[0]
        w = model.blocks[0].attn.qkv
        delta = (5 / 3) * w.lora_b @ w.lora_a  # the update by hand: (alpha / r) B A
        expected_weight = w.weight + delta
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert model.num_parameters() == _model().num_parameters()
    with torch.no_grad():
        torch.testing.assert_close(model.blocks[0].attn.qkv.weight, expected_weight)
        torch.testing.assert_close(model(_x())[0], want, atol=1e-5, rtol=0)


def test_adapters_saved_beside_the_base_and_merged_on_load(tmp_path):
    cfg = RunConfig.parse({"model": CFG, "train": {"lora_rank": 2}})
    torch.manual_seed(0)
    model = apply_lora(build_model(cfg.model), rank=2, alpha=4, targets=["qkv", "w_in"])
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("lora_b"):
                p.normal_(0, 0.3)
        want = model(_x())[0]
    save_run(tmp_path, cfg, model)
    base = load_run(tmp_path).model  # plain weights file: the base, untouched
    assert (tmp_path / "adapter.safetensors").stat().st_size < (tmp_path / "model.safetensors").stat().st_size
    with torch.no_grad():
        torch.testing.assert_close(base(_x())[0], want, atol=1e-5, rtol=0)  # the loader merged the adapters
    plain = _model()
    with pytest.raises(CheckpointError, match="does not fit"):
        apply_lora(plain, rank=5, targets=["qkv", "w_in"])
        load_adapter(plain, tmp_path / "adapter.safetensors")


def test_bad_settings():
    with pytest.raises(ConfigError, match="name no linear layer"):
        apply_lora(_model(), rank=2, targets=["q_proj"])
    with pytest.raises(ConfigError, match="tied"):
        apply_lora(_model(tie_embeddings=True), rank=2, targets=["lm_head"])
    with pytest.raises(ConfigError, match="at least 1"):
        apply_lora(_model(), rank=0)


def test_adapters_train_in_float32_on_a_bf16_base(tmp_path):
    model = apply_lora(_model().to(torch.bfloat16), rank=2, targets=["qkv"])
    assert {p.dtype for p in lora_parameters(model).values()} == {torch.float32}
    assert model(_x())[0].dtype == torch.bfloat16
    save_adapter(model, tmp_path / "a.safetensors")
    merged = load_adapter(_model().to(torch.bfloat16), tmp_path / "a.safetensors", merge=True)
    assert set(merged.state_dict()) == set(_model().state_dict()) and merged.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
