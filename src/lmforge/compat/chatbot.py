"""The chatbot workflow: build a tokenizer and a model, train on a folder of text, generate and chat.

Thin entry points over lmforge's own classes (no second implementation):
* :class:`TransformerModel` is lmforge's :class:`~lmforge.models.transformer.Transformer`, and
  :class:`CustomAIModel` its :class:`~lmforge.models.lstm.LSTMLanguageModel`, each with a tokenizer slot,
  ``generate(seed_text=...)`` (through :func:`lmforge.inference.generation.generate`) and ``save``/``load`` of
  safetensors checkpoints (through :mod:`lmforge.models.run_folder`).
* :class:`TransformerConfig` is lmforge's config with named sizes (``.tiny/.small/.medium/.large``, the
  ``transformer-*`` presets).
* :class:`BPETokenizer` and :class:`Vocabulary` train lmforge's byte-level BPE and character tokenizers.
* :class:`TrainingPipeline` runs lmforge's :class:`~lmforge.training.trainer.Trainer` on a
  :class:`DatasetLoader`'s documents; :class:`ChatInterface` is :mod:`lmforge.inference.chat`'s.

Checkpoints go to ``models/<name>/`` (``config.json``, ``model.safetensors``, ``tokenizer.json``), where the
name tells the model type and size apart: ``transformer-small``, ``transformer-medium``, ``lstm``... so an LSTM
and each Transformer size live side by side.

Example:
    >>> config = TransformerConfig.small(vocab_size=5000)  # doctest: +SKIP
    >>> model = TransformerModel(config)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable, Optional, TextIO, Union

import torch

from lmforge.config.lstm import LSTMConfig
from lmforge.config.presets import get_preset
from lmforge.config.transformer import TransformerConfig as _TransformerConfig
from lmforge.data import read_documents
from lmforge.errors import CheckpointError, ConfigError, DataError
from lmforge.inference.chat import ChatSession, run_chat_repl
from lmforge.inference.sampling import SamplingParams
from lmforge.inference.generation import generate
from lmforge.models.lstm import LSTMLanguageModel
from lmforge.models.run_folder import (
    config_class_for,
    CONFIG_FILE,
    load_weights,
    read_metadata,
    save_model,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
)
from lmforge.models.transformer import Transformer
from lmforge.compat.chatbot_parts import SIZES, BPETokenizer, TransformerConfig, Vocabulary, _unwrap_tokenizer
from lmforge.tokenizers import load_tokenizer, train_tokenizer
from lmforge.workflows.chatbot_training import train_chatbot_model

__all__ = ["TransformerConfig", "TransformerModel", "CustomAIModel", "BPETokenizer", "Vocabulary", "DatasetLoader",
           "TrainingPipeline", "ChatInterface", "DEFAULT_CHECKPOINT_DIR"]

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT_DIR = "models"


# ---------------------------------------------------------------------------------------------- models


class _ChatbotModel:
    """What both chatbot models add to lmforge's: a tokenizer, ``generate(seed_text=...)`` and checkpoints."""

    family = ""
    label = ""
    tokenizer: Any = None
    chat_template = "plain"  # raw-text models chat in "User:/Assistant:" lines (lmforge.inference.chat)

    def set_tokenizer(self, tokenizer: Any) -> "_ChatbotModel":
        """Attaches a tokenizer (:class:`BPETokenizer`, :class:`Vocabulary` or any lmforge tokenizer)."""
        tok = _unwrap_tokenizer(tokenizer)
        if tok.vocab_size > self.config.vocab_size:
            raise ConfigError(
                f"the tokenizer has {tok.vocab_size} tokens but the model's vocab_size is {self.config.vocab_size}; "
                f"build the model with vocab_size={tok.vocab_size} (or more)"
            )
        self.tokenizer = tok
        return self

    def _need_tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise ConfigError(f"this {type(self).__name__} has no tokenizer; call model.set_tokenizer(tokenizer) "
                              "(set_vocabulary for CustomAIModel) first")
        return self.tokenizer

    def generate(self, seed_text: str = "", max_length: int = 100, temperature: float = 1.0,
                 top_k: Optional[int] = None, top_p: Optional[float] = None, repetition_penalty: float = 1.0,
                 **sampling: Any) -> str:
        """``seed_text`` followed by up to ``max_length`` generated tokens, as text.

        Args:
            seed_text: the start of the text ("" starts a new document).
            max_length: the most tokens to generate.
            temperature: 0 is greedy; higher is more varied.
            top_k: sample among the ``k`` likeliest tokens.
            top_p: nucleus sampling (arXiv:1904.09751).
            repetition_penalty: > 1 makes tokens already in the text less likely (arXiv:1909.05858).
            **sampling: other :class:`~lmforge.inference.sampling.SamplingParams` fields (``seed``, ``stop``...).
        """

        tok = self._need_tokenizer()
        prompt: Any = seed_text if seed_text else [tok.eos_id]  # documents are separated by <eos> in training
        done = generate(self, tok, [prompt], max_new_tokens=max_length, temperature=temperature, top_k=top_k,
                        top_p=top_p, repetition_penalty=repetition_penalty, **sampling)[0]
        return seed_text + done.text

    @property
    def checkpoint_name(self) -> str:
        """The folder name under ``models/``: the model type and size (``transformer-small``, ``lstm``...)."""
        return _size_name(self.config)

    def default_checkpoint(self) -> Path:
        """``models/<checkpoint_name>``."""
        return Path(DEFAULT_CHECKPOINT_DIR) / self.checkpoint_name

    def save(self, path: Union[str, Path, None] = None) -> Path:
        """Writes ``config.json``, ``model.safetensors`` and ``tokenizer.json`` (atomically); returns the folder
        (default ``models/<checkpoint_name>``)."""

        return save_model(self, Path(path) if path is not None else self.default_checkpoint(), tokenizer=self.tokenizer)

    @classmethod
    def _check_family(cls, folder: Path) -> None:
        have = read_metadata(folder / WEIGHTS_FILE).get("family")
        if have is not None and have != cls.family:
            other = {"transformer": "TransformerModel (Transformer)", "lstm": "CustomAIModel (LSTM)"}.get(have, repr(have))
            fix = {"transformer": "TransformerModel.from_checkpoint", "lstm": "CustomAIModel.from_checkpoint"}.get(have)
            raise CheckpointError(
                f"{folder} holds a {other} checkpoint, not a {cls.label} one; "
                + (f"load it with {fix}({str(folder)!r})" if fix else "load it with lmforge.models.run_folder.load_model")
                + f", or point to a {cls.label} checkpoint"
            )

    def load(self, path: Union[str, Path, None] = None) -> "_ChatbotModel":
        """Loads weights (and the saved tokenizer, if any) into this model from ``path`` (default
        ``models/<checkpoint_name>``); returns ``self``.

        Raises:
            CheckpointError: a missing or damaged checkpoint, one of the other model type (the message names both),
                or one of another size or vocabulary.
        """

        folder = Path(path) if path is not None else self.default_checkpoint()
        self._check_family(folder)
        load_weights(self, folder / WEIGHTS_FILE)
        if (folder / TOKENIZER_FILE).is_file():
            self.tokenizer = load_tokenizer(folder / TOKENIZER_FILE)
        return self

    @classmethod
    def from_checkpoint(cls, path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> Any:
        """Builds the model a checkpoint folder describes (its ``config.json``) and loads it."""

        folder = Path(path)
        cls._check_family(folder)
        config = config_class_for(cls.family).from_json(folder / CONFIG_FILE)
        return cls._from_config(config).load(folder).to(device)

    @classmethod
    def _from_config(cls, config: Any) -> Any:
        raise NotImplementedError


class TransformerModel(_ChatbotModel, Transformer):
    """lmforge's decoder-only :class:`~lmforge.models.transformer.Transformer` for the chatbot workflow.

    Args:
        config: a :class:`TransformerConfig` (``TransformerConfig.small(vocab_size=5000)``...) or lmforge's.
    """

    family = "transformer"
    label = "TransformerModel (Transformer)"

    def __init__(self, config: _TransformerConfig) -> None:
        super().__init__(config)
        self.tokenizer = None

    @classmethod
    def _from_config(cls, config: Any) -> "TransformerModel":
        return cls(config)


class CustomAIModel(_ChatbotModel, LSTMLanguageModel):
    """lmforge's :class:`~lmforge.models.lstm.LSTMLanguageModel` for the chatbot workflow, usually with a
    character :class:`Vocabulary`.

    Args:
        vocab_size: vocabulary size (``len(vocab)``).
        embedding_dim: embedding width.
        hidden_dim: LSTM width.
        num_layers: stacked LSTM layers.
        dropout: dropout on embeddings, between layers and before the head (arXiv:1409.2329).
        config: a whole :class:`~lmforge.config.LSTMConfig` instead of the arguments above.
    """

    family = "lstm"
    label = "CustomAIModel (LSTM)"

    def __init__(self, vocab_size: int = 5000, embedding_dim: int = 256, hidden_dim: int = 512, num_layers: int = 2,
                 dropout: float = 0.2, config: Optional[LSTMConfig] = None) -> None:
        if config is None:
            config = LSTMConfig.parse(dict(vocab_size=vocab_size, embedding_dim=embedding_dim, hidden_dim=hidden_dim,
                                           num_layers=num_layers, dropout=dropout), source="CustomAIModel")
        super().__init__(config)
        self.tokenizer = None

    @staticmethod
    def default_config(vocab_size: int) -> LSTMConfig:
        """The config of ``CustomAIModel(vocab_size)`` with every other argument at its default."""
        return LSTMConfig(vocab_size=vocab_size, embedding_dim=256, hidden_dim=512, num_layers=2, dropout=0.2)

    def set_vocabulary(self, vocab: Any) -> "CustomAIModel":
        """Attaches a :class:`Vocabulary` (or any lmforge tokenizer); the same as :meth:`set_tokenizer`."""
        return self.set_tokenizer(vocab)

    @property
    def vocabulary(self) -> Any:
        """The attached tokenizer."""
        return self.tokenizer

    @classmethod
    def _from_config(cls, config: Any) -> "CustomAIModel":
        return cls(config=config)


def _size_name(config: Any) -> str:
    """The checkpoint folder name of a config: ``transformer-small``, ``lstm``, ``transformer-d96-l3``..."""
    data = config.to_dict()
    if config.family == "transformer":
        for size in SIZES:
            if data == getattr(TransformerConfig, size)(vocab_size=config.vocab_size).to_dict():
                return f"transformer-{size}"
        return f"transformer-d{config.d_model}-l{config.num_layers}-h{config.attention.num_heads}"
    if data == CustomAIModel.default_config(config.vocab_size).to_dict():
        return "lstm"
    return f"lstm-e{config.embedding_dim}-h{config.hidden_dim}-l{config.num_layers}"


# ---------------------------------------------------------------------------------------------- data and training


class DatasetLoader:
    """The documents of a corpus: a folder of ``.txt``/``.md`` files (read recursively), one text file or a
    ``.jsonl`` with a ``"text"`` field; ``None`` is the bundled Tiny Shakespeare (see
    :func:`lmforge.data.read_documents`, whose :class:`~lmforge.errors.DataError` names a bad file)."""

    def __init__(self, path: Union[str, Path, None] = "datasets") -> None:
        self.path = path

    def documents(self) -> list[str]:
        """The non-empty documents, in sorted file order."""

        return read_documents(self.path)

    def text(self) -> str:
        """All documents joined by blank lines (to build a tokenizer from)."""
        return "\n\n".join(self.documents())


class TrainingPipeline:
    """Trains a :class:`TransformerModel` or :class:`CustomAIModel` with lmforge's shared
    :class:`~lmforge.training.trainer.Trainer` (AdamW, warmup + cosine schedule, gradient clipping) and saves it.

    Args:
        model: the model, with its tokenizer attached.
        loader: where the text comes from.
        checkpoint_dir: checkpoints go to ``<checkpoint_dir>/<model.checkpoint_name>``.
        val_fraction: the last fraction of the text is held out for validation.
        device: ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``...
        seed: seeds batch sampling.
    """

    def __init__(self, model: Any, loader: DatasetLoader, checkpoint_dir: Union[str, Path] = DEFAULT_CHECKPOINT_DIR,
                 val_fraction: float = 0.1, device: str = "auto", seed: int = 1337) -> None:
        self.model = model
        self.loader = loader
        self.checkpoint_dir = Path(checkpoint_dir)
        self.val_fraction = val_fraction
        self.device = device
        self.seed = seed
        self.summary: Optional[dict] = None

    def train(self, epochs: float = 1, learning_rate: float = 1e-3, batch_size: int = 16,
              use_mixed_precision: bool = False, block_size: Optional[int] = None, max_steps: Optional[int] = None,
              time_budget: Optional[float] = None, save: bool = True, progress: Any = None) -> dict:
        """Trains for ``epochs`` passes over the training text (or ``max_steps``/``time_budget``, whichever ends
        first), then evaluates on the held-out text and saves the checkpoint.

        Args:
            epochs: passes over the training tokens.
            learning_rate: peak AdamW learning rate.
            batch_size: windows per step.
            use_mixed_precision: bf16/fp16 autocast on a CUDA GPU; elsewhere a warning and float32.
            block_size: training window in tokens (default: the model's context, at most 128, and shorter
                when the text is short).
            max_steps: an optional cap on optimiser steps.
            time_budget: an optional cap in seconds.
            save: write the checkpoint to ``<checkpoint_dir>/<model.checkpoint_name>``.
            progress: the trainer's progress callback (event dicts).

        Returns:
            The trainer's summary (``val_loss``, ``val_ppl``, ``steps``...), plus ``checkpoint`` when saved.
        """

        model = self.model
        tokenizer = model._need_tokenizer()
        summary = train_chatbot_model(model, tokenizer, self.loader.documents(), source=self.loader.path,
                                      val_fraction=self.val_fraction, device=self.device, seed=self.seed,
                                      epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
                                      use_mixed_precision=use_mixed_precision, block_size=block_size,
                                      max_steps=max_steps, time_budget=time_budget, progress=progress)
        model.eval()
        if save:
            summary["checkpoint"] = str(model.save(self.checkpoint_dir / model.checkpoint_name))
        self.summary = summary
        return summary


# ---------------------------------------------------------------------------------------------- chat


def _unpack(model: Any) -> tuple[Any, Any, str]:
    """(CausalLM, tokenizer, template) from an ``LM`` facade or a model with a tokenizer attached."""
    if hasattr(model, "model") and hasattr(model, "tokenizer") and hasattr(model, "chat_template"):
        return model.model, model.tokenizer, model.chat_template  # lmforge.api.LM
    tokenizer = getattr(model, "tokenizer", None) or getattr(model, "vocabulary", None)
    return model, tokenizer, getattr(model, "chat_template", None) or "plain"


class ChatInterface:
    """The chatbot-style entry point: ``ChatInterface(model, use_context=True).send("hi")``, a
    :class:`~lmforge.inference.chat.ChatSession` underneath. With ``use_context=False`` every message stands
    alone; models trained on raw text chat in a plain ``User:``/``Assistant:`` format.

    Args:
        model: an :class:`lmforge.api.LM`, or a language model with its tokenizer attached (``model.tokenizer``).
        use_context: keep the conversation (trimmed to the context window); False answers each message alone.
        template: chat template; default the model's own (``tokens`` for fine-tuned chat runs, else ``plain``).
        system: optional system prompt. sampling: default sampling settings (``temperature=0``...).
    """

    def __init__(self, model: Any, use_context: bool = True, template: Optional[str] = None,
                 system: Optional[str] = None, **sampling: Any) -> None:
        core, tokenizer, default_template = _unpack(model)
        params = SamplingParams.from_kwargs(SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=128), **sampling)
        self.session = ChatSession(core, tokenizer, template or default_template, system=system, params=params,
                                   use_context=use_context)

    @property
    def history(self) -> list[dict]:
        """The conversation so far."""
        return self.session.messages

    def send(self, text: str, **sampling: Any) -> str:
        """Sends one user message; returns the reply."""
        return self.session.send(text, **sampling)

    def reset(self) -> None:
        """Forgets the conversation."""
        self.session.clear()

    def start_chat(self, lines: Optional[Iterable[str]] = None, out: Optional[TextIO] = None) -> int:
        """Chats on the terminal (reading with ``input()``), or one message per line of ``lines`` (default stdin
        when it is not a terminal); ``/help``, ``/clear``, ``/exit``. Returns the number of replies."""
        interactive = lines is None and sys.stdin.isatty()
        if lines is None and not interactive:
            lines = sys.stdin
        return run_chat_repl(self.session, lines=lines, out=out, interactive=interactive,
                             read=lambda prompt: input(prompt))
