"""The tokenizer contract shared by every kind, and the fixed special tokens.

Every kind lmforge trains reserves the same first eight ids, so models, chat templates and data caches can rely on them
without asking the tokenizer: ``<pad>``=0, ``<unk>``=1, ``<bos>``=2, ``<eos>``=3, then the chat role tokens
``<|system|>``=4, ``<|user|>``=5, ``<|assistant|>``=6 and ``<|end|>``=7 (end of a turn). Regular tokens
start at :data:`FIRST_REGULAR_ID`. The ``hf`` kind (an imported checkpoint's tokenizer,
:mod:`lmforge.tokenizers.hf`) keeps the checkpoint's own special tokens instead.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

from lmforge.utils.files import atomic_write_json

__all__ = [
    "SPECIAL_TOKENS",
    "SavedAsJSON",
    "FIRST_REGULAR_ID",
    "PAD_ID",
    "UNK_ID",
    "BOS_ID",
    "EOS_ID",
    "SYSTEM_ID",
    "USER_ID",
    "ASSISTANT_ID",
    "END_ID",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "Tokenizer",
    "frame_ids",
    "content_fingerprint",
    "resolve_tokenizer_path",
]

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SYSTEM_ID, USER_ID, ASSISTANT_ID, END_ID = 4, 5, 6, 7

#: Special token -> id, identical in every tokenizer kind (ordered by id).
SPECIAL_TOKENS: dict[str, int] = {
    "<pad>": PAD_ID,
    "<unk>": UNK_ID,
    "<bos>": BOS_ID,
    "<eos>": EOS_ID,
    "<|system|>": SYSTEM_ID,
    "<|user|>": USER_ID,
    "<|assistant|>": ASSISTANT_ID,
    "<|end|>": END_ID,
}
FIRST_REGULAR_ID = len(SPECIAL_TOKENS)

#: The ``"format"`` field of an lmforge ``tokenizer.json`` (tells it apart from other JSON files).
FORMAT_NAME = "lmforge-tokenizer"
FORMAT_VERSION = 1


@runtime_checkable
class Tokenizer(Protocol):
    """What every tokenizer kind provides (``char``, ``bpe``, ``word``).

    ``encode`` treats its input as plain text: a special-token string such as ``"<eos>"`` inside the text
    is encoded as ordinary characters, never as the special id. Special ids are added only through
    ``add_bos``/``add_eos`` or by code that builds id sequences (chat templates).

    Example:
        >>> from lmforge.tokenizers import train_tokenizer
        >>> tok = train_tokenizer("char", ["hello world"])
        >>> tok.decode(tok.encode("hello"))
        'hello'
    """

    kind: str
    vocab_size: int
    pad_id: int
    unk_id: int
    bos_id: int
    eos_id: int
    special_tokens: dict[str, int]

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of ``text`` (optionally framed by ``<bos>``/``<eos>``)."""
        ...

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Text of ``ids``; with ``skip_special`` the special tokens other than ``<unk>`` are left out."""
        ...

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        """``encode`` applied to each text."""
        ...

    def token_to_id(self, token: str) -> int | None:
        """The id of one vocabulary entry, or None when it is not in the vocabulary."""
        ...

    def save(self, path: Any) -> None:
        """Writes the tokenizer as one ``tokenizer.json`` (atomically)."""
        ...

    def fingerprint(self) -> str:
        """A stable hash of the tokenizer's content (same vocabulary and rules -> same hash)."""
        ...


class SavedAsJSON:
    """``save`` and ``fingerprint`` for a tokenizer whose whole content is its ``to_dict()`` payload."""

    def to_dict(self) -> dict[str, Any]:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def save(self, path: Any) -> None:
        """Writes ``tokenizer.json`` atomically (a folder path gets ``tokenizer.json`` inside it)."""
        atomic_write_json(resolve_tokenizer_path(path), self.to_dict())

    def fingerprint(self) -> str:
        """A stable hash of the payload: the same vocabulary and rules give the same hash."""
        return content_fingerprint(self.to_dict())


def frame_ids(ids: list[int], add_bos: bool, add_eos: bool) -> list[int]:
    """``ids`` framed by ``<bos>``/``<eos>`` when asked (every kind's ``encode`` ends with this)."""
    if add_bos:
        ids.insert(0, BOS_ID)
    if add_eos:
        ids.append(EOS_ID)
    return ids


def content_fingerprint(payload: dict[str, Any]) -> str:
    """SHA-256 (hex, first 16 bytes) of a JSON payload serialised canonically (sorted keys, no spaces)."""
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:32]


def resolve_tokenizer_path(path: str | os.PathLike) -> Path:
    """``path`` itself, or ``path/tokenizer.json`` when ``path`` is an existing folder (a run folder)."""
    path = Path(path)
    return path / "tokenizer.json" if path.is_dir() else path
