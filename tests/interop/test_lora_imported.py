"""An imported checkpoint continued and chat-tuned on a laptop: `lmforge import` a tiny Llama built by
transformers, continue its pre-training with `train --init-from` (full weights, new optimiser), then LoRA
chat fine-tuning in the checkpoint's own chat template; the adapted model answers held-out names in chat, as
tests/inference/test_chat_finetune.py checks for full fine-tuning."""

from __future__ import annotations

import json
import random
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
from lmforge.compat.chatbot import ChatInterface  # noqa: E402

LETTERS = "abcdefghijklmnopqrstuvwxyz"
HELD_OUT = ["zorp", "quix", "bela", "mune", "tavo", "kelp", "wign", "draf", "yoth", "bupe"]


def _name(rng: random.Random) -> str:
    while True:
        name = "".join(rng.choice(LETTERS) for _ in range(4))
        if name not in HELD_OUT:
            return name


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("lora")
    try:
        cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=96,
                                       tie_word_embeddings=False)
        build_checkpoint("llama", tmp / "hf", config=cfg, merges=False, random_norms=False)  # one token per character
        assert main(["import", str(tmp / "hf"), "--out", str(tmp / "base")]) == 0
        rng = random.Random(0)
        # a copy skill that does not hang on a fixed distance: filler of varying length between the two names
        fillers = ["", "ok. ", "the cat sat. ", "what? ", "on the mat. ", "how are you? ", "the cat sat on the mat. "]
        (tmp / "text.txt").write_text("".join(f"i am {n}. {rng.choice(fillers)}hi {n}.\n" for n in (_name(rng) for _ in range(4000))))
        assert main(["train", "--init-from", str(tmp / "base"), "--data", str(tmp / "text.txt"), "--out", str(tmp / "cont"),
                     "--max-steps", "1000", "--batch-size", "16", "--lr", "3e-3", "--quiet", "--json",
                     "data.block_size=64", "train.eval_interval=1000", "train.sample_tokens=0"]) == 0
        convs = [[{"role": "user", "content": f"i am {n}"}, {"role": "assistant", "content": f"hi {n}"}]
                 for n in (_name(rng) for _ in range(1500))]
        (tmp / "chat.jsonl").write_text("\n".join(json.dumps({"messages": c}) for c in convs))
        assert main(["finetune", str(tmp / "cont"), "--data", str(tmp / "chat.jsonl"), "--out", str(tmp / "chat"),
                     "--max-steps", "400", "--batch-size", "16", "--lr", "5e-3", "--lora-rank", "16", "--lora-alpha", "32",
                     "--quiet", "--json"]) == 0
        yield tmp
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_lora_chat_finetune_of_an_imported_model_answers_held_out_names(tuned):
    summary = json.loads((tuned / "chat" / "summary.json").read_text())
    assert summary["chat_template"] == "jinja" and summary["finetuned_from"].endswith("cont")
    assert summary["trainable_parameters"] < summary["parameters"] / 4  # adapters only
    assert (tuned / "chat" / "adapter.safetensors").is_file()
    lm = LM.load(tuned / "chat", device="cpu")
    assert lm.chat_template == "jinja"
    right = sum(ChatInterface(lm, temperature=0, max_new_tokens=12).send(f"i am {n}") == f"hi {n}" for n in HELD_OUT)
    assert right >= 8, right
    base = LM.load(tuned / "cont", device="cpu")  # before the LoRA chat tuning: no chat format yet
    assert sum(ChatInterface(base, temperature=0, max_new_tokens=12).send(f"i am {n}") == f"hi {n}" for n in HELD_OUT) <= 1


@pytest.mark.slow
def test_init_from_refuses_another_tokenizer(tuned, capsys):
    code = main(["train", "--init-from", str(tuned / "base"), "--data", str(tuned / "text.txt"), "--tokenizer", "char",
                 "--out", str(tuned / "x"), "--max-steps", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and err[-1].startswith("error: tokenizer.kind is 'char'") and "reuses" in err[-1]
