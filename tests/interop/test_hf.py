"""Hugging Face export: the exported folder loads in transformers and gives the same logits (1e-4, float32)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lmforge.cli.main import main  # noqa: E402
from lmforge.config import LSTMConfig  # noqa: E402
from lmforge.errors import ConfigError  # noqa: E402
from lmforge.interop.hf import export_hf, llama_incompatibilities  # noqa: E402
from lmforge.models import build_model  # noqa: E402
from lmforge.models.run_folder import save_model  # noqa: E402
from lmforge.models.transformer import Transformer, TransformerConfig  # noqa: E402

V = 48


def random_model(**kw) -> Transformer:
    cfg = {"vocab_size": V, "d_model": 32, "num_layers": 2, "block_size": 16, "attention": {"num_heads": 4}, **kw}
    cfg["attention"] = {"num_heads": 4, **kw.get("attention", {})}
    torch.manual_seed(0)
    model = Transformer(TransformerConfig.parse(cfg)).eval()
    with torch.no_grad():  # random weights everywhere, norms and biases included (init leaves those at 1 / 0)
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.dim() == 1 and p.numel() == 32 else 0.0))
    return model


def load_hf(path):
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.mark.parametrize("kw", [
    {},  # gqa (auto kv heads = 1), tied
    {"tie_embeddings": False, "attention": {"variant": "gqa", "num_kv_heads": 2}},
    {"attention": {"variant": "mqa"}},
    {"tie_embeddings": False, "attention": {"variant": "mqa"}},
    {"attention": {"variant": "mha", "bias": True, "head_dim": 6}, "ffn": {"bias": True, "hidden_dim": 40},
     "positional": {"rope_base": 500.0, "rope_scaling": 2.0}, "norm": {"eps": 1e-3}},
], ids=["gqa-tied", "gqa-untied", "mqa-tied", "mqa-untied", "mha-bias-headdim-scaled"])
def test_exported_llama_gives_the_same_logits(kw, tmp_path):
    model = random_model(**kw)
    export_hf(model, tmp_path)
    hf = load_hf(tmp_path)
    assert type(hf).__name__ == "LlamaForCausalLM"
    assert hf.config.tie_word_embeddings == model.config.tie_embeddings
    n_hf = sum(p.numel() for p in hf.parameters())
    assert n_hf == model.num_parameters()
    x = torch.randint(0, V, (3, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x)[0], atol=1e-4, rtol=0)


def test_hf_cached_greedy_decoding_matches_lmforge_cache(tmp_path):
    model = random_model(attention={"num_kv_heads": 2})
    export_hf(model, tmp_path)
    hf = load_hf(tmp_path)
    prompt = torch.randint(3, V, (1, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf.generate(prompt, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
        state, ids = model.init_state(1), prompt
        logits, state = model.step(prompt, state)
        for _ in range(8):
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
            logits, state = model.step(nxt, state)
    assert ids.tolist() == ref.tolist()


def test_incompatible_config_names_every_setting():
    model = random_model(attention={"variant": "complex", "mask_type": "sliding_window", "window_size": 4},
                         positional={"encoding": "alibi"}, ffn={"variant": "geglu"},
                         norm={"type": "layernorm", "placement": "post"}, scale_embeddings=True)
    with pytest.raises(ConfigError) as err:
        export_hf(model, "unused")
    message = str(err.value)
    for key in ("attention.variant", "attention.mask_type", "positional.encoding", "ffn.variant", "norm.type",
                "norm.placement", "scale_embeddings"):
        assert key in message
    assert "\n" not in message
    parallel = TransformerConfig(vocab_size=V, d_model=32, num_layers=1, block_size=8, parallel_layers=True)
    assert llama_incompatibilities(parallel) == ["parallel_layers=True (Llama needs False)"]
    assert llama_incompatibilities(TransformerConfig(vocab_size=V, d_model=32, num_layers=1, block_size=8)) == []


def test_cli_export_of_a_model_folder(tmp_path, capsys):
    model = random_model(tie_embeddings=False)
    save_model(model, tmp_path / "model")
    assert main(["export", str(tmp_path / "model"), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert "from_pretrained" in capsys.readouterr().out
    x = torch.randint(0, V, (1, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(load_hf(tmp_path / "hf")(x).logits, model(x)[0], atol=1e-4, rtol=0)


def test_cli_export_refuses_other_models_in_one_line(tmp_path, capsys):
    save_model(random_model(positional={"encoding": "learned"}), tmp_path / "learned")
    save_model(build_model(LSTMConfig(vocab_size=V)), tmp_path / "lstm")
    for name, expected in (("learned", "positional.encoding='learned'"), ("lstm", "'lstm'")):
        code = main(["export", str(tmp_path / name), "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert code != 0 and err.startswith("error: ") and expected in err and err.count("\n") == 1
    assert not (tmp_path / "out" / "model.safetensors").exists()
