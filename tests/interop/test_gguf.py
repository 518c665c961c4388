"""GGUF export, checked by llama.cpp itself (through ``xllamacpp``): the file loads, and with f32 weights its
greedy tokens equal lmforge's for the same prompt."""

from __future__ import annotations

import pytest
import torch

from lmforge.api import LM
from lmforge.cli.main import main
from lmforge.config import RunConfig
from lmforge.errors import ConfigError
from lmforge.interop.gguf import export_gguf
from lmforge.models import build_model
from lmforge.models.run_folder import save_run
from trained_toy import trained

gguf = pytest.importorskip("gguf", reason="GGUF export needs the gguf package (pip install 'lmforge[gguf]')")

PROMPTS = ["ROMEO:\nWhat say you", "First Citizen:\n"]


@pytest.fixture(scope="module")
def toy():
    return trained("transformer", "bpe")


def _llama_greedy(path, prompt, n):
    """llama.cpp's greedy continuation of ``prompt`` (text or token ids): (token ids, prompt token count)."""
    xllamacpp = pytest.importorskip("xllamacpp", reason="the llama.cpp check needs xllamacpp (pip install xllamacpp)")
    params = xllamacpp.CommonParams()
    params.model.path = str(path)
    params.n_ctx = 128
    params.n_parallel = 1
    params.cpuparams.n_threads = 1
    params.cpuparams_batch.n_threads = 1
    params.warmup = False
    params.cache_type_k = params.cache_type_v = xllamacpp.ggml_type.GGML_TYPE_F32  # not float16 K/V
    params.flash_attn_type = 0  # llama.cpp's CPU flash attention rounds to float16
    server = xllamacpp.Server(params)
    try:
        out = server.handle_completions({"prompt": prompt, "n_predict": n, "temperature": 0, "logprobs": 1,
                                         "cache_prompt": False})
    finally:
        del server
    assert "choices" in out, out
    return [t["id"] for t in out["choices"][0]["logprobs"]["content"]], out["usage"]["prompt_tokens"]


def _lmforge_greedy(model, tok, prompt, n):
    done = LM(model, tok).complete([prompt], temperature=0, max_new_tokens=n)[0]
    return done.token_ids


def test_f32_gguf_greedy_tokens_equal_lmforge(toy, tmp_path):
    model, tok = toy
    path = export_gguf(model, tok, tmp_path / "m.gguf", "f32")
    for prompt in PROMPTS:
        ours = _lmforge_greedy(model, tok, prompt, 64)
        theirs, n_prompt = _llama_greedy(path, prompt, 64)  # llama.cpp tokenizes the text itself
        assert n_prompt == len(tok.encode(prompt))
        assert len(ours) == 64 and theirs == ours
    ids = tok.encode(PROMPTS[0])
    assert _llama_greedy(path, ids, 64)[0] == _lmforge_greedy(model, tok, ids, 64)


def test_gguf_metadata_and_permuted_query_rows(toy, tmp_path):
    model, tok = toy
    path = export_gguf(model, tok, tmp_path / "m.gguf", "f32")
    r = gguf.GGUFReader(str(path))
    field = r.fields["tokenizer.ggml.model"]
    assert bytes(field.parts[field.data[0]]).decode() == "gpt2"
    assert len(r.fields["tokenizer.ggml.tokens"].data) == model.config.vocab_size
    tensors = {t.name: t for t in r.tensors}
    q = torch.from_numpy(tensors["blk.0.attn_q.weight"].data.copy())
    ours = model.blocks[0].attn.qkv.weight[: q.shape[0]].detach()
    # head 0's first rotary pair: lmforge channels (0, hd/2) become llama.cpp's rows (0, 1)
    hd = model.config.head_size
    assert torch.equal(q[0], ours[0]) and torch.equal(q[1], ours[hd // 2]) and torch.equal(q[2], ours[1])


@pytest.mark.parametrize("dtype", ["f16", "q8_0", "q4_0"])
def test_smaller_gguf_types_load_and_mostly_agree(toy, tmp_path, dtype):
    model, tok = toy
    path = export_gguf(model, tok, tmp_path / f"m-{dtype}.gguf", dtype)
    assert path.stat().st_size < 0.6 * export_gguf(model, tok, tmp_path / "f32.gguf", "f32").stat().st_size
    theirs, _ = _llama_greedy(path, PROMPTS[0], 32)
    ours = _lmforge_greedy(model, tok, PROMPTS[0], 32)
    agree = next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b), 32)
    print(f"{dtype}: llama.cpp agrees with lmforge fp32 on the first {agree} of 32 greedy tokens")
    assert len(theirs) == 32 and (dtype == "q4_0" or agree >= 4)  # 4-bit blocks may change even the first token


def _run(tmp_path, model_cfg, tok):
    cfg = RunConfig.parse({"model": model_cfg, "out_dir": str(tmp_path / "run")})
    torch.manual_seed(0)
    save_run(tmp_path / "run", cfg, build_model(cfg.model), tok)
    return tmp_path / "run"


@pytest.mark.parametrize("model_cfg, named", [
    ({"family": "lstm", "embedding_dim": 16, "hidden_dim": 16, "num_layers": 1}, "'lstm' model"),
    ({"d_model": 32, "num_layers": 1, "block_size": 16, "attention": {"variant": "complex", "num_heads": 2}}, "complex"),
    ({"d_model": 32, "num_layers": 1, "block_size": 16, "positional": {"encoding": "alibi"}}, "alibi"),
])
def test_unsupported_models_get_one_line_errors(toy, tmp_path, capsys, model_cfg, named):
    _, tok = toy
    run = _run(tmp_path, {**model_cfg, "vocab_size": tok.vocab_size}, tok)
    assert main(["export", str(run), "--format", "gguf", "--out", str(tmp_path / "x.gguf")]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: GGUF") and named in err and "\n" not in err
    assert not (tmp_path / "x.gguf").exists()


def test_char_tokenizer_cannot_be_carried(tmp_path, capsys):
    model, _ = trained("transformer", "bpe")
    from lmforge.tokenizers import train_tokenizer

    tok = train_tokenizer("char", ["abc"])
    with pytest.raises(ConfigError, match="byte-level BPE tokenizers only, not a 'char' tokenizer"):
        export_gguf(model, tok, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_cli_export_gguf_of_a_quantized_run(toy, tmp_path, capsys):
    model, tok = toy
    cfg = RunConfig.parse({"model": model.config.to_dict(), "out_dir": str(tmp_path / "run")})
    save_run(tmp_path / "run", cfg, model, tok)
    assert main(["quantize", str(tmp_path / "run"), "--bits", "8", "--out", str(tmp_path / "q8")]) == 0
    assert main(["export", str(tmp_path / "q8"), "--format", "gguf", "--out", str(tmp_path / "q.gguf")]) == 0
    assert "wrote" in capsys.readouterr().out
    theirs, _ = _llama_greedy(tmp_path / "q.gguf", PROMPTS[1], 16)
    ours = LM.load(tmp_path / "q8", device="cpu").complete([PROMPTS[1]], temperature=0, max_new_tokens=16)[0].token_ids
    assert theirs == ours  # f32 file of the dequantized weights: the quantized run's own greedy tokens
    assert main(["export", str(tmp_path / "run"), "--format", "gguf", "--dtype", "float16", "--out", "y"]) != 0
    assert "not a GGUF type" in capsys.readouterr().err
