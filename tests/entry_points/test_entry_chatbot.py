"""docs/entry-points/chatbot.md runs as written (tiny sizes, typed input monkeypatched); chatbot checkpoints."""

from __future__ import annotations

import io
import math
import sys

import pytest
import torch
from entry_doc_snippets import assert_lines_in_doc, doc_text, run_doc

from lmforge.compat.chatbot import (
    BPETokenizer,
    ChatInterface,
    CustomAIModel,
    DatasetLoader,
    TrainingPipeline,
    TransformerConfig,
    TransformerModel,
    Vocabulary,
)
from lmforge.errors import CheckpointError, ConfigError
from lmforge.models.lstm import LSTMLanguageModel
from lmforge.models.transformer import Transformer

PAGE = "chatbot.md"

ISSUE_SNIPPET = """
from lmforge.compat.chatbot import TransformerModel, TransformerConfig, BPETokenizer, ChatInterface, TrainingPipeline, DatasetLoader
config = TransformerConfig.small(vocab_size=5000)        # also .medium() and .large()
model = TransformerModel(config)
tokenizer = BPETokenizer(vocab_size=5000)
tokenizer.build_from_text(text)
model.set_tokenizer(tokenizer)
pipeline = TrainingPipeline(model, DatasetLoader("datasets"))     # a folder of text files
pipeline.train(epochs=50, learning_rate=1e-4, batch_size=16, use_mixed_precision=True)
print(model.generate(seed_text="hello", max_length=100, temperature=0.7, top_k=50, top_p=0.9, repetition_penalty=1.2))
ChatInterface(model, use_context=True).start_chat()
vocab.build_from_text(text)
lstm.set_vocabulary(vocab)
"""

SUBS = {
    "[:300_000]": "[:8_000]",
    "TransformerConfig.small(vocab_size=5000)": "TransformerConfig.small(vocab_size=300, d_model=32, num_layers=2)",
    "BPETokenizer(vocab_size=5000)": "BPETokenizer(vocab_size=300)",
    "epochs=50, learning_rate=1e-4, batch_size=16": "epochs=50, learning_rate=3e-3, batch_size=8, max_steps=25",
    "CustomAIModel(vocab_size=len(vocab))": "CustomAIModel(vocab_size=len(vocab), embedding_dim=32, hidden_dim=32, num_layers=1)",
    "epochs=5, learning_rate=2e-3, batch_size=16": "epochs=5, learning_rate=2e-3, batch_size=8, max_steps=10",
}


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _type(monkeypatch, lines):
    """Makes stdin a terminal and feeds ``lines`` to input(), then end of input."""
    feed = iter(lines)
    prompts = []

    def fake_input(prompt=""):
        prompts.append(prompt)
        try:
            return next(feed)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr(sys, "stdin", _Terminal())
    monkeypatch.setattr("builtins.input", fake_input)
    return prompts


def test_page_shows_the_issue_snippet():
    assert_lines_in_doc(PAGE, ISSUE_SNIPPET)


def test_page_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    prompts = _type(monkeypatch, ["hello there", "/help", "/exit"])
    with pytest.warns(RuntimeWarning, match="float32"):  # use_mixed_precision=True on a CPU
        ns = run_doc(PAGE, SUBS)
    out = capsys.readouterr().out
    model, lstm, pipeline = ns["model"], ns["lstm"], ns["pipeline"]
    assert isinstance(model, Transformer) and isinstance(lstm, LSTMLanguageModel)
    # Training ran on the shared Trainer and learned something: below the loss of a uniform guess.
    s = pipeline.summary
    assert s["steps"] == 25 and s["precision"] == "fp32" and s["val_loss"] < math.log(model.config.vocab_size)
    # Chat: the typed message got a reply, /help printed the commands, /exit ended it.
    assert prompts == ["you> ", "you> ", "you> "]
    assert "bot> " in out and "/clear" in out
    # Both checkpoints side by side under models/, and the cross-family load failed with both names.
    names = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert names == sorted([model.checkpoint_name, lstm.checkpoint_name])
    assert "holds a CustomAIModel (LSTM) checkpoint, not a TransformerModel (Transformer) one" in out
    restored = ns["restored"]
    for k, v in model.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[k], v.cpu())
    assert restored.tokenizer.fingerprint() == model.tokenizer.fingerprint()
    torch.testing.assert_close(ns["same"].tok_emb.weight, model.tok_emb.weight)


def test_sizes_match_the_docs_and_a_hand_count():
    text = doc_text(PAGE)
    for size in ("tiny", "small", "medium", "large"):
        cfg = getattr(TransformerConfig, size)(vocab_size=5000)
        assert isinstance(cfg, TransformerConfig)
        with torch.device("meta"):
            n = sum(p.numel() for p in TransformerModel(cfg).parameters())
        d, L, a = cfg.d_model, cfg.num_layers, cfg.attention
        layer = 2 * d * d + 2 * d * a.kv_heads * cfg.head_size + 3 * d * cfg.ffn_hidden + 2 * d  # q, o, k/v, SwiGLU, norms
        assert n == 5000 * d + L * layer + d  # tied embedding + layers + final norm
        assert f"{n:,}" in text
    for size in ("tiny", "small"):
        assert TransformerModel(getattr(TransformerConfig, size)(vocab_size=64)).checkpoint_name == f"transformer-{size}"
    assert TransformerConfig.small(vocab_size=300, num_layers=3).num_layers == 3


def test_checkpoints_are_kept_apart_and_cross_loads_fail(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = "hello world, this is a tiny corpus.\n" * 20
    vocab = Vocabulary().build_from_text(text)
    lstm = CustomAIModel(vocab_size=len(vocab), embedding_dim=16, hidden_dim=16, num_layers=1).set_vocabulary(vocab)
    assert CustomAIModel(vocab_size=40).checkpoint_name == "lstm"
    tfm = TransformerModel(TransformerConfig.tiny(vocab_size=len(vocab))).set_tokenizer(vocab)
    small = TransformerModel(TransformerConfig.small(vocab_size=len(vocab))).set_tokenizer(vocab)
    paths = [m.save() for m in (lstm, tfm, small)]
    assert sorted(p.name for p in paths) == sorted(["lstm-e16-h16-l1", "transformer-tiny", "transformer-small"])
    with pytest.raises(CheckpointError, match=r"CustomAIModel \(LSTM\).*TransformerModel \(Transformer\)"):
        TransformerModel(TransformerConfig.tiny(vocab_size=len(vocab))).load(paths[0])
    with pytest.raises(CheckpointError, match=r"TransformerModel \(Transformer\).*CustomAIModel \(LSTM\)"):
        CustomAIModel.from_checkpoint(paths[1])
    with pytest.raises(CheckpointError):  # a small checkpoint does not fit a tiny model
        TransformerModel(TransformerConfig.tiny(vocab_size=len(vocab))).load(paths[2])
    again = CustomAIModel.from_checkpoint(paths[0])
    x = torch.randint(0, len(vocab), (1, 8))
    torch.testing.assert_close(again.eval()(x)[0], lstm.eval()(x)[0])
    assert again.vocabulary.decode(again.vocabulary.encode("hello")) == "hello"
    with pytest.raises(CheckpointError, match="not found"):
        TransformerModel(TransformerConfig.medium(vocab_size=len(vocab))).load()


def test_errors_a_user_can_fix(tmp_path):
    model = TransformerModel(TransformerConfig.tiny(vocab_size=20))
    with pytest.raises(ConfigError, match="set_tokenizer"):
        model.generate(seed_text="hi")
    with pytest.raises(ConfigError, match="build_from_text"):
        model.set_tokenizer(BPETokenizer(vocab_size=300))
    with pytest.raises(ConfigError, match=r"with vocab_size=\d+ \(or more\)"):  # a 300-token BPE does not fit a 20-token model
        model.set_tokenizer(BPETokenizer(vocab_size=300).build_from_text("some text " * 50))
    with pytest.raises(ConfigError, match="set_tokenizer"):
        TrainingPipeline(model, DatasetLoader(tmp_path)).train(max_steps=1)


def test_chat_context_and_piped_stdin(monkeypatch, capsys, tiny_text):
    torch.manual_seed(0)
    vocab = Vocabulary().build_from_text(tiny_text)
    model = TransformerModel(TransformerConfig.tiny(vocab_size=len(vocab), num_layers=1)).set_tokenizer(vocab)
    with_context = ChatInterface(model, use_context=True, max_new_tokens=5, temperature=0)
    with_context.send("hi")
    with_context.send("and again")
    assert [m["role"] for m in with_context.history] == ["user", "assistant", "user", "assistant"]
    alone = ChatInterface(model, use_context=False, max_new_tokens=5, temperature=0)
    first = alone.send("and again")
    alone.send("hi")
    assert alone.history == [] and alone.send("and again") == first  # each message stands alone
    monkeypatch.setattr(sys, "stdin", io.StringIO("one\ntwo\n"))  # not a terminal: one message per line
    assert ChatInterface(model, max_new_tokens=3).start_chat() == 2
    assert "you> " not in capsys.readouterr().out


def test_training_on_a_folder_with_an_lstm(tmp_path, tiny_text):
    (tmp_path / "datasets" / "sub").mkdir(parents=True)
    (tmp_path / "datasets" / "a.txt").write_text(tiny_text)
    (tmp_path / "datasets" / "sub" / "b.md").write_text(tiny_text.upper())
    loader = DatasetLoader(tmp_path / "datasets")
    assert len(loader.documents()) == 2
    vocab = Vocabulary().build_from_text(loader.text())
    lstm = CustomAIModel(vocab_size=len(vocab), embedding_dim=32, hidden_dim=32, num_layers=1).set_vocabulary(vocab)
    summary = TrainingPipeline(lstm, loader, checkpoint_dir=tmp_path / "ckpt").train(
        epochs=100, learning_rate=1e-2, batch_size=8, block_size=32, max_steps=40)
    assert summary["steps"] == 40 and summary["val_loss"] < math.log(len(vocab))
    assert (tmp_path / "ckpt" / "lstm-e32-h32-l1" / "model.safetensors").is_file()
    assert lstm.generate(seed_text="First", max_length=10, temperature=0).startswith("First")
