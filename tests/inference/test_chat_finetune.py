"""Chat fine-tuning end to end: a tiny Transformer learns a synthetic conversation set and answers held-out
questions through ChatInterface, including one that needs an earlier turn; plus the SFT task's masking."""

from __future__ import annotations

import json
import random

import pytest
import torch

from lmforge.api import LM
from lmforge.config import RunConfig
from lmforge.errors import ConfigError, DataError
from lmforge.compat.chatbot import ChatInterface
from lmforge.inference.chat import render_chat_with_mask
from lmforge.models import build_model
from lmforge.tokenizers import train_tokenizer
from lmforge.training.checkpoint import save_run
from lmforge.training.tasks_chat import ChatSFTTask, _collate, encode_conversations, read_conversations
from lmforge.workflows.finetune import finetune

LETTERS = "abcdefghijklmnopqrstuvwxyz"
HELD_OUT_NUMBERS = {17, 28, 39, 46, 53, 65, 72, 84, 91}
HELD_OUT = [("zorp", 46), ("quix", 72), ("bela", 17), ("mune", 91), ("tavo", 84)]


def _conversation(rng: random.Random) -> list[dict]:
    """Three kinds: '<k>+1?' -> k+1; 'i am <name>' -> 'hi <name>' then later 'my name?' -> '<name>'."""
    name = "".join(rng.choice(LETTERS) for _ in range(4))
    k = rng.choice([i for i in range(10, 99) if i not in HELD_OUT_NUMBERS])
    add = [{"role": "user", "content": f"{k}+1?"}, {"role": "assistant", "content": str(k + 1)}]
    kind = rng.random()
    if kind < 0.3:
        return add
    msgs = [{"role": "user", "content": f"i am {name}"}, {"role": "assistant", "content": f"hi {name}"}]
    if kind < 0.65:
        msgs += add  # a turn in between, so the name must come from two turns back
    return msgs + [{"role": "user", "content": "my name?"}, {"role": "assistant", "content": name}]


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model trains fastest on one thread
    try:
        tmp = tmp_path_factory.mktemp("chat")
        rng = random.Random(0)
        convs = [_conversation(rng) for _ in range(2000)]
        held_names = {n for n, _ in HELD_OUT}
        assert not any(m["content"] in held_names for c in convs for m in c)  # truly held out
        data = tmp / "conversations.jsonl"
        data.write_text("\n".join(json.dumps({"messages": c}) for c in convs), encoding="utf-8")
        tok = train_tokenizer("char", [LETTERS + "0123456789 ?+"])
        cfg = RunConfig.parse({"model": {"family": "transformer", "vocab_size": tok.vocab_size, "d_model": 64,
                                         "num_layers": 2, "block_size": 64, "attention": {"num_heads": 4}},
                               "out_dir": str(tmp / "base")})
        torch.manual_seed(0)
        save_run(tmp / "base", cfg, build_model(cfg.model), tok)  # the base run: an untrained model
        summary = finetune(tmp / "base", data, tmp / "chat", val_fraction=0.05, device="cpu",
                           overrides={"train.max_steps": 700, "train.batch_size": 16, "train.lr": 3e-3,
                                      "train.eval_interval": 1000})
        yield tmp / "chat", summary
    finally:
        torch.set_num_threads(n_threads)


@pytest.mark.slow
def test_finetuned_model_answers_held_out_questions(chat_run):
    run_dir, summary = chat_run
    assert summary["chat_template"] == "tokens" and summary["val_token_accuracy"] > 0.9
    lm = LM.load(run_dir, device="cpu")
    assert lm.chat_template == "tokens"
    greet = add = recall = 0
    for name, k in HELD_OUT:
        chat = ChatInterface(lm, use_context=True, temperature=0)
        greet += chat.send(f"i am {name}") == f"hi {name}"
        add += chat.send(f"{k}+1?") == str(k + 1)
        recall += chat.send("my name?") == name  # needs the turn before last
    assert greet >= 4 and add >= 4 and recall >= 4, (greet, add, recall)
    # without context the model cannot know the name
    alone = ChatInterface(lm, use_context=False, temperature=0)
    alone.send("i am zorp")
    assert alone.send("my name?") != "zorp"


@pytest.mark.slow
def test_facade_chat_stream_and_generation_on_the_finetuned_run(chat_run):
    run_dir, _ = chat_run
    lm = LM.load(run_dir, device="cpu")
    msgs = [{"role": "user", "content": "i am quix"}, {"role": "assistant", "content": "hi quix"},
            {"role": "user", "content": "my name?"}]
    done = lm.chat(msgs, temperature=0)
    assert done.text == "quix" and done.finish_reason == "stop"
    assert "".join(c.text for c in lm.stream_chat(msgs, temperature=0)) == "quix"
    assert lm.count_tokens("abc") == 3 and lm.max_context == 64
    out = lm.complete(["ab", "c"], temperature=0, max_new_tokens=5)
    assert len(out) == 2 and all(c.completion_tokens <= 5 for c in out)
    assert lm.generate("ab", temperature=0, max_new_tokens=5) == out[0].text
    vecs = lm.embed(["i am zorp", "72+1?"])
    assert vecs.shape == (2, 64)


def test_sft_targets_are_only_the_replies():
    tok = train_tokenizer("char", [LETTERS + " ?"])
    conv = [{"role": "system", "content": "be"}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "yo"}, {"role": "user", "content": "ok"},
            {"role": "assistant", "content": "no"}]
    (ids, mask), = encode_conversations(tok, [conv], max_tokens=100)
    x, y = _collate([(ids, mask), (ids[:8], mask[:8])], pad_id=0)
    learnt = [int(t) for t in y[0] if t != -100]
    assert learnt == tok.encode("yo") + [7] + tok.encode("no") + [7]  # replies and their <|end|>
    assert x[0].tolist() == ids[:-1] and (y[1, 7:] == -100).all() and (x[1, 7:] == 0).all()
    task = ChatSFTTask([(ids, mask)] * 4, [], batch_size=4)
    (batch,) = task.next_batches()
    assert task.batch_tokens(batch) == 4 * len(learnt)


def test_conversation_file_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    with pytest.raises(DataError, match="no assistant"):
        read_conversations(bad)
    bad.write_text('{"messages": [{"role": "robot", "content": "hi"}]}\n')
    with pytest.raises(DataError, match="role"):
        read_conversations(bad)
    bad.write_text("not json\n")
    with pytest.raises(DataError, match="JSON"):
        read_conversations(bad)
    with pytest.raises(DataError, match="does not exist"):
        read_conversations(tmp_path / "missing.jsonl")


def test_finetune_refuses_its_own_folder(tmp_path):
    with pytest.raises(ConfigError, match="own folder"):
        finetune(tmp_path, tmp_path / "c.jsonl", tmp_path)


def test_render_mask_agrees_with_chat_prompt():
    tok = train_tokenizer("char", [LETTERS + " ?"])
    msgs = [{"role": "user", "content": "hi"}]
    ids, mask = render_chat_with_mask(tok, msgs, add_generation_prompt=True)
    assert ids[-1] == 6 and not any(mask)
