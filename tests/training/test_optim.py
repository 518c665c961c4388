"""AdamW parameter groups: decay on matrices only, tied weights once; precision resolution."""

import pytest
import torch
from torch import nn

from lmforge.errors import ConfigError
from lmforge.training.optim import build_optimizer, param_groups
from lmforge.training.precision import resolve_device, resolve_precision


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 10, bias=True)
        self.head.weight = self.emb.weight


def test_decay_only_on_matrices_and_tied_once():
    m = Tied()
    groups = param_groups(m, 0.1)
    decay = {id(p) for p in groups[0]["params"]}
    no_decay = {id(p) for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert decay == {id(m.emb.weight)}
    assert no_decay == {id(m.norm.weight), id(m.norm.bias), id(m.head.bias)}
    opt = build_optimizer(m, 1e-3, 0.1, device_type="cpu")
    assert sum(len(g["params"]) for g in opt.param_groups) == 4
    assert opt.defaults.get("fused") is True  # the fused kernel exists on CPU in this torch


def test_weight_decay_leaves_biases_alone():
    m = Tied()
    with torch.no_grad():
        m.head.bias.fill_(1.0)
        m.emb.weight.fill_(1.0)
    opt = build_optimizer(m, lr=0.1, weight_decay=0.5, device_type="cpu")
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.allclose(m.head.bias, torch.ones(10))  # zero gradient and no decay: unchanged
    assert torch.allclose(m.emb.weight, torch.full((10, 4), 1 - 0.1 * 0.5))  # decoupled decay only


def test_precision_resolution():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu).name == "fp32"
    p = resolve_precision("bf16", cpu)
    assert p.dtype is torch.bfloat16 and not p.needs_scaler
    with p.autocast():
        y = nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype is torch.bfloat16
    assert not resolve_precision("fp32", cpu).grad_scaler().is_enabled()
    with pytest.raises(ConfigError, match="fp16"):
        resolve_precision("fp16", cpu)
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA"):
            resolve_device("cuda")
