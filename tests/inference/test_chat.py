"""Chat templates, history trimming, sessions and the REPL (with toy and scripted models)."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lmforge.compat.chatbot import ChatInterface
from lmforge.errors import DataError
from lmforge.inference.chat import (
    CHAT_TEMPLATES,
    ChatSession,
    render_chat,
    render_chat_with_mask,
    run_chat_repl,
    trim_messages,
)
from lmforge.tokenizers import train_tokenizer


@pytest.fixture
def tok():
    return train_tokenizer("char", ["abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ:?.!\n0123456789"])


def _msgs():
    return [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "yo"}]


def test_tokens_template_ids_and_mask(tok):
    ids, mask = render_chat_with_mask(tok, _msgs(), "tokens", add_generation_prompt=True)
    e = tok.encode
    expected = [4] + e("be kind") + [7] + [5] + e("hi") + [7] + [6] + e("yo") + [7] + [6]
    assert ids == expected
    # only the assistant's reply and the end-of-turn that closes it are targets
    assert [i for i, m in zip(ids, mask) if m] == e("yo") + [7]
    assert render_chat(tok, _msgs()[:2]) == [4] + e("be kind") + [7, 5] + e("hi") + [7, 6]


def test_plain_template_is_text(tok):
    ids = render_chat(tok, _msgs()[1:], template="plain")
    assert tok.decode(ids) == "User: hi\nAssistant: yo\nAssistant:"
    ids, mask = render_chat_with_mask(tok, _msgs()[1:], "plain")
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == " yo\n"
    assert "\nUser:" in CHAT_TEMPLATES.get("plain").stop


def test_bad_messages_raise_data_error(tok):
    with pytest.raises(DataError, match="role"):
        render_chat(tok, [{"role": "bot", "content": "x"}])


def test_trim_drops_oldest_turns_and_keeps_system(tok):
    msgs = [{"role": "system", "content": "sys"}]
    for i in range(6):
        msgs += [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
    msgs.append({"role": "user", "content": "last"})
    full = len(render_chat(tok, msgs))
    budget = full - 30
    kept = trim_messages(tok, msgs, budget)
    assert kept[0] == msgs[0] and kept[-1] == msgs[-1]
    assert len(render_chat(tok, kept)) <= budget
    assert kept[1:] == msgs[len(msgs) - len(kept) + 1:]  # a suffix of the conversation: the oldest went first
    assert kept[1]["role"] == "user"  # whole turns are dropped
    # one more turn would not fit
    bigger = [msgs[0]] + msgs[len(msgs) - len(kept) - 1:]
    assert len(render_chat(tok, bigger)) > budget
    assert trim_messages(tok, msgs, None) == msgs
    assert trim_messages(tok, msgs, 5) == [msgs[0], msgs[-1]]


class EchoLM(nn.Module):
    """Answers every prompt with a fixed reply (as ids) followed by <|end|>, counting prompt lengths."""

    def __init__(self, reply: list[int], vocab: int, max_context=None):
        super().__init__()
        self.reply = reply + [7]
        self.config = SimpleNamespace(vocab_size=vocab)
        self.max_context = max_context
        self.hidden_size = 1
        self.p = nn.Parameter(torch.zeros(1))
        self.prompt_lengths: list[int] = []

    def init_state(self, batch_size):
        return None

    def step(self, idx, state, attention_mask=None):
        if state is None:
            self.prompt_lengths.append(idx.size(1))
            state = 0
        logits = torch.full((idx.size(0), idx.size(1), self.config.vocab_size), -5.0)
        logits[:, -1, self.reply[min(state, len(self.reply) - 1)]] = 5.0
        return logits, state + 1


def test_session_history_trimming_to_context(tok):
    model = EchoLM(tok.encode("ok"), tok.vocab_size, max_context=40)
    s = ChatSession(model, tok, system="sys", params=None)
    for i in range(8):
        assert s.send(f"message {i}", temperature=0, max_new_tokens=8) == "ok"
    assert len(s.history) == 16
    assert max(model.prompt_lengths) <= 40 - 8  # the prompt always leaves room for the reply
    last_prompt = s.prompt_ids("again", max_new_tokens=8)
    assert last_prompt[:1] == [4] and tok.decode(last_prompt).startswith("sys")


def test_use_context_false_and_clear(tok):
    model = EchoLM(tok.encode("ok"), tok.vocab_size)
    s = ChatSession(model, tok, use_context=False)
    s.send("one", temperature=0)
    s.send("two", temperature=0)
    assert s.history == [] and model.prompt_lengths[0] == model.prompt_lengths[1]
    s = ChatSession(model, tok)
    s.send("one", temperature=0)
    assert len(s.history) == 2
    s.clear()
    assert s.history == []


def test_stream_reassembles_and_records(tok):
    model = EchoLM(tok.encode(" hello there"), tok.vocab_size)
    s = ChatSession(model, tok)
    pieces = [c.text for c in s.stream("hi", temperature=0)]
    assert "".join(pieces) == "hello there"
    assert s.history[-1] == {"role": "assistant", "content": "hello there"}


def test_repl_commands_and_save(tok, tmp_path):
    model = EchoLM(tok.encode("fine"), tok.vocab_size)
    model.tokenizer = tok
    model.chat_template = "tokens"
    chat = ChatInterface(model, temperature=0)
    out = io.StringIO()
    save = tmp_path / "conv.json"
    lines = ["hello\n", "/system be brief\n", "/help\n", "/bogus\n", "how are you\n", f"/save {save}\n",
             "/clear\n", "/exit\n", "never read\n"]
    n = chat.start_chat(lines=lines, out=out)
    text = out.getvalue()
    assert n == 2 and text.count("fine\n") == 2
    assert "/system TEXT" in text and "unknown command /bogus" in text
    saved = json.loads(save.read_text())
    assert saved["messages"][0] == {"role": "system", "content": "be brief"}
    assert [m["role"] for m in saved["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert chat.history == [{"role": "system", "content": "be brief"}]


def test_chat_interface_plain_template_stops_at_next_user_line(tok):
    model = EchoLM(tok.encode(" sure thing\nUser: more"), tok.vocab_size)
    model.tokenizer = tok
    chat = ChatInterface(model, temperature=0)  # no chat_template attribute -> plain text template
    assert chat.send("hi") == "sure thing"
