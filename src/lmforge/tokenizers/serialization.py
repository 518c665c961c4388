"""Training and loading tokenizers: one ``tokenizer.json`` with a ``"kind"`` field, dispatched through
:data:`TOKENIZERS`."""

from __future__ import annotations

import itertools
import json
import os
from typing import Any, Iterable

from lmforge.errors import ConfigError, TokenizerError
from lmforge.registry import Registry
from lmforge.tokenizers.base import FORMAT_NAME, FORMAT_VERSION, resolve_tokenizer_path, Tokenizer
from lmforge.tokenizers.bpe import BPETokenizer
from lmforge.tokenizers.char import CharTokenizer
from lmforge.tokenizers.hf import HFTokenizer
from lmforge.tokenizers.word import WordTokenizer

__all__ = ["TOKENIZERS", "train_tokenizer", "load_tokenizer", "tokenizer_from_dict"]

#: kind -> tokenizer class (each has ``train(texts, ...)`` and ``from_dict(data, source)``).
TOKENIZERS: Registry[Any] = Registry("tokenizer kind")


def _register() -> None:

    for cls in (CharTokenizer, BPETokenizer, WordTokenizer, HFTokenizer):
        TOKENIZERS.add(cls.kind, cls)


def train_tokenizer(kind: str, texts: Iterable[str], vocab_size: int = 5000, min_frequency: int = 1,
                    lowercase: bool = False) -> Tokenizer:
    """Trains a tokenizer of ``kind`` on ``texts``.

    Args:
        kind: ``"char"``, ``"bpe"`` or ``"word"``.
        texts: training documents (any iterable of strings, e.g. a generator over a huge corpus; read once,
            never materialised).
        vocab_size: the vocabulary size, the eight special tokens included (an upper bound for char/word).
        min_frequency: word/bpe (and char): drop words, merges or characters seen fewer times.
        lowercase: word only: lowercase the text before splitting.

    Returns:
        The trained tokenizer.

    Example:
        >>> tok = train_tokenizer("word", ["the cat saw the dog"], vocab_size=12)
        >>> tok.decode(tok.encode("the dog saw a cat"))
        'the dog <unk> <unk> cat'
    """
    cls = TOKENIZERS.get(kind)
    if isinstance(texts, str):
        texts = [texts]
    stream = (t for t in texts if t)  # streamed: a generator over a huge corpus is never held in memory
    first = next(stream, None)
    if first is None:
        raise TokenizerError(f"cannot train a {kind} tokenizer on empty text; give it a non-empty corpus")
    return cls.train(itertools.chain([first], stream), vocab_size=vocab_size, min_frequency=min_frequency,
                     lowercase=lowercase)


def tokenizer_from_dict(data: Any, source: str = "tokenizer", kind: str | None = None) -> Tokenizer:
    """Rebuilds a tokenizer from the payload of a ``tokenizer.json`` (``source`` names it in errors)."""
    if not isinstance(data, dict):
        raise TokenizerError(f"{source} is not an lmforge tokenizer (expected a JSON object); train one with `lmforge tokenizer train`")
    if "kind" not in data:
        what = "a Hugging Face tokenizers file" if "model" in data and "added_tokens" in data else "JSON without a 'kind' field"
        raise TokenizerError(f"{source} is not an lmforge tokenizer ({what}); train one with `lmforge tokenizer train`")
    if data.get("format", FORMAT_NAME) != FORMAT_NAME:
        raise TokenizerError(f"{source} has format {data.get('format')!r}, not {FORMAT_NAME!r}; train one with `lmforge tokenizer train`")
    version = data.get("version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise TokenizerError(f"{source} has format version {version!r}, newer than this lmforge reads ({FORMAT_VERSION}); upgrade lmforge")
    found = data["kind"]
    try:
        cls = TOKENIZERS.get(found)
    except ConfigError:
        raise TokenizerError(f"{source} has unknown kind {found!r}; choose one of: {', '.join(TOKENIZERS.names())}") from None
    if kind is not None and found != kind:
        raise TokenizerError(f"{source} is a {found!r} tokenizer but a {kind!r} one is needed; pass a {kind} tokenizer or set tokenizer.kind={found}")
    return cls.from_dict(data, source=source)


def load_tokenizer(path: str | os.PathLike, kind: str | None = None) -> Tokenizer:
    """Loads a tokenizer saved by ``save``.

    Args:
        path: a ``tokenizer.json`` file, or a folder (a run folder) that holds one.
        kind: when given, the file must hold this kind.

    Returns:
        The tokenizer, of the kind recorded in the file.

    Raises:
        TokenizerError: the file is missing, empty, corrupted, not an lmforge tokenizer or of another kind.
    """
    file = resolve_tokenizer_path(path)
    if not file.is_file():
        raise TokenizerError(f"tokenizer file {file} not found; check the path or train one with `lmforge tokenizer train`")
    raw = file.read_bytes()
    if not raw.strip():
        raise TokenizerError(f"tokenizer file {file} is empty; train it again with `lmforge tokenizer train`")
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise TokenizerError(f"tokenizer file {file} is not UTF-8 text (byte offset {err.start}); it is corrupted or not a tokenizer, train it again") from None
    except json.JSONDecodeError as err:
        raise TokenizerError(f"tokenizer file {file} is corrupted (invalid JSON at line {err.lineno}, column {err.colno}); train it again with `lmforge tokenizer train`") from None
    return tokenizer_from_dict(data, source=str(file), kind=kind)


_register()
