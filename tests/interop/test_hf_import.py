"""`lmforge import`: random tiny checkpoints of the four architectures, built and saved by transformers itself,
give transformers' logits (1e-4, float32), its greedy generations token for token and its chat template's
rendering; an export to HF loads back in transformers with the same logits; bad inputs are one-line errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("jinja2")
sys.path.insert(0, str(Path(__file__).parent))

from hf_fixtures import build_checkpoint  # noqa: E402

from lmforge.api import LM  # noqa: E402
from lmforge.cli.main import main  # noqa: E402
from lmforge.inference.chat import render_chat  # noqa: E402
from lmforge.inference.generation import generate  # noqa: E402
from lmforge.inference.jinja_chat import render_jinja  # noqa: E402
from lmforge.interop.hf_import import import_hf  # noqa: E402

ARCHS = ["llama", "mistral", "qwen2", "gpt2"]
CONVERSATION = [{"role": "system", "content": "you are terse."}, {"role": "user", "content": "what is my name?"},
                {"role": "assistant", "content": "you are zorp."}, {"role": "user", "content": "17+1?"}]


@pytest.fixture(scope="module", params=ARCHS)
def imported(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    hf = build_checkpoint(request.param, tmp / "hf")
    summary = import_hf(tmp / "hf", tmp / "run")
    return request.param, hf, tmp, summary


def _x(T: int = 20) -> torch.Tensor:
    return torch.randint(0, 110, (3, T), generator=torch.Generator().manual_seed(1))


def test_logits_equal_transformers(imported):
    arch, hf, tmp, summary = imported
    assert summary["architecture"] == arch and summary["chat_template"] == "jinja"
    lm = LM.load(tmp / "run", device="cpu")
    assert lm.model.num_parameters() == sum(p.numel() for p in hf.parameters())
    x = _x()  # 20 tokens: beyond Mistral's window of 4 and Llama-3's original context of 16
    with torch.no_grad():
        torch.testing.assert_close(lm.model(x)[0], hf(x).logits, atol=1e-4, rtol=0)


def test_greedy_generation_equals_transformers_generate(imported):
    arch, hf, tmp, _ = imported
    lm = LM.load(tmp / "run", device="cpu")
    prompt = _x(7)[:1]
    ref = hf.generate(prompt, max_new_tokens=20, do_sample=False, min_new_tokens=20, pad_token_id=0)[0, 7:].tolist()
    for fast in (True, False):  # lmforge's fast decoding path (Llama-style models) and the model's own step
        done = generate(lm.model, lm.tokenizer, [prompt[0].tolist()], temperature=0, max_new_tokens=20,
                        ignore_eos=True, fast=fast)[0]
        assert done.token_ids == ref, (arch, fast)


def test_chat_template_renders_like_apply_chat_template(imported):
    arch, _, tmp, _ = imported
    # PreTrainedTokenizerFast runs tokenizer.json as written; AutoTokenizer would pick Qwen2's or GPT-2's own
    # class, which in transformers 5 rebuilds its pipeline (byte-level) and ignores this test's Metaspace one
    ref = transformers.PreTrainedTokenizerFast.from_pretrained(tmp / "hf")
    lm = LM.load(tmp / "run", device="cpu")
    assert lm.chat_template == "jinja"
    text = ref.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert render_jinja(lm.tokenizer, CONVERSATION, True) == text
    ids = ref.apply_chat_template(CONVERSATION, tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert render_chat(lm.tokenizer, CONVERSATION, True, "jinja") == list(ids)
    assert text.startswith("<s><|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    # the stops come from the folder: tokenizer_config's eos and generation_config's eos_token_id list
    assert set(lm.tokenizer.stop_ids) == {ref.convert_tokens_to_ids("<|im_end|>"), ref.convert_tokens_to_ids("<|endoftext|>")}


def test_chat_reply_stops_at_a_stop_token_of_generation_config(imported):
    arch, _, tmp, _ = imported
    lm = LM.load(tmp / "run", device="cpu")
    stop = lm.tokenizer.token_to_id("<|endoftext|>")  # id 0: a stop only through generation_config.json
    assert stop == 0 and stop != lm.tokenizer.eos_id
    with torch.no_grad():  # every logit 0: greedy decoding picks id 0
        lm.model.lm_head.weight.zero_()
    reply = lm.chat([{"role": "user", "content": "hello"}], temperature=0, max_new_tokens=10)
    assert reply.finish_reason == "stop" and reply.text == "" and reply.completion_tokens == 1


def test_round_trip_through_hf_export(imported, capsys):
    arch, hf, tmp, _ = imported
    out = tmp / "exported"
    assert main(["export", str(tmp / "run"), "--format", "hf", "--out", str(out)]) == 0
    back = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(back).__name__ == type(hf).__name__
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(back(x).logits, hf(x).logits, atol=1e-4, rtol=0)
    fast = transformers.PreTrainedTokenizerFast
    assert fast.from_pretrained(out).apply_chat_template(CONVERSATION) == \
        fast.from_pretrained(tmp / "hf").apply_chat_template(CONVERSATION)


def test_bf16_checkpoint_imports_without_a_float32_copy(tmp_path):
    hf = build_checkpoint("qwen2", tmp_path / "hf", dtype=torch.bfloat16)
    summary = import_hf(tmp_path / "hf", tmp_path / "run")
    assert summary["source_dtype"] == summary["dtype"] == "bfloat16"
    lm = LM.load(tmp_path / "run", device="cpu")
    assert {p.dtype for p in lm.model.parameters()} == {torch.bfloat16}
    ref = hf.to(torch.bfloat16).float()  # the same bf16-rounded weights, computed in float32
    assert lm.model.num_parameters() == sum(p.numel() for p in ref.parameters())
    x = _x()
    with torch.no_grad():
        got, want = lm.model(x)[0].float(), ref(x).logits
    assert ((got - want).norm() / want.norm()) < 1e-2  # bf16 arithmetic, exact weights


def _cli_error(capsys, *argv: str) -> str:
    assert main(["import", *argv]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    build_checkpoint("llama", tmp_path / "hf")
    capsys.readouterr()  # transformers' progress bar
    out = str(tmp_path / "run")
    assert "download it first" in _cli_error(capsys, "HuggingFaceTB/SmolLM-135M", "--out", out)
    assert "not found" in _cli_error(capsys, str(tmp_path / "missing"), "--out", out)
    assert "no config.json" in _cli_error(capsys, str(tmp_path), "--out", out)

    def variant(name: str, edit) -> str:
        folder = tmp_path / name
        folder.mkdir()
        for f in (tmp_path / "hf").iterdir():
            (folder / f.name).write_bytes(f.read_bytes())
        edit(folder)
        return str(folder)

    def config_edit(**changes):
        def edit(folder: Path) -> None:
            cfg = json.loads((folder / "config.json").read_text())
            cfg.update(changes)
            (folder / "config.json").write_text(json.dumps(cfg))
        return edit

    err = _cli_error(capsys, variant("falcon", config_edit(architectures=["FalconForCausalLM"])), "--out", out)
    assert "FalconForCausalLM is not supported" in err
    err = _cli_error(capsys, variant("yarn", config_edit(rope_parameters={"rope_type": "yarn", "factor": 4.0,
                                                                           "rope_theta": 10000.0})), "--out", out)
    assert "rope_scaling.rope_type='yarn'" in err
    err = _cli_error(capsys, variant("act", config_edit(hidden_act="relu2")), "--out", out)
    assert "hidden_act='relu2'" in err
    err = _cli_error(capsys, variant("unknown", config_edit(qk_layernorm=True)), "--out", out)
    assert "'qk_layernorm'" in err

    def truncate(folder: Path) -> None:
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 2])

    assert "truncated" in _cli_error(capsys, variant("trunc", truncate), "--out", out)
    assert "no tokenizer.json" in _cli_error(capsys, variant("notok", lambda f: (f / "tokenizer.json").unlink()), "--out", out)
    assert "no model.safetensors" in _cli_error(capsys, variant("noweights", lambda f: (f / "model.safetensors").unlink()),
                                                "--out", out)
    assert not Path(out).exists()  # nothing half-written


def test_sharded_checkpoint_and_capped_context(tmp_path):
    hf = build_checkpoint("gpt2", tmp_path / "hf")
    hf.save_pretrained(tmp_path / "hf", max_shard_size="20KB")  # several shards and an index
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    (tmp_path / "hf" / "model.safetensors").unlink(missing_ok=True)
    import_hf(tmp_path / "hf", tmp_path / "run", block_size=32)
    lm = LM.load(tmp_path / "run", device="cpu")
    assert lm.max_context == 32
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(lm.model(x)[0], hf(x).logits, atol=1e-4, rtol=0)


def test_serve_answers_with_the_checkpoints_template(imported):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from lmforge.serving.app import create_app

    arch, _, tmp, _ = imported
    messages = CONVERSATION[:2]
    want = LM.load(tmp / "run", device="cpu").chat(messages, temperature=0, max_new_tokens=6)
    client = TestClient(create_app(str(tmp / "run")))
    r = client.post("/v1/chat/completions", json={"model": "run", "messages": messages, "max_tokens": 6, "temperature": 0})
    assert r.status_code == 200, r.text
    got = r.json()["choices"][0]
    assert got["message"]["content"] == want.text and got["finish_reason"] == {"stop": "stop", "length": "length"}[want.finish_reason]
