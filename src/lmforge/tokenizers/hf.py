"""The ``hf`` tokenizer kind: a Hugging Face ``tokenizer.json`` run by the ``tokenizers`` library, as it comes
with an imported checkpoint (``lmforge import``).

Unlike the kinds lmforge trains, its special tokens are the checkpoint's own (``<|im_start|>``, ``</s>``...), not
the fixed ids 0-7: ``bos_id``/``eos_id``/``pad_id`` come from the folder's ``tokenizer_config.json``, and
``stop_ids`` lists every id that ends a generation (the end-of-sequence token plus the ``eos_token_id`` list of
``generation_config.json``). The folder's chat template (Jinja source) travels with it, so a run folder holds
everything chat needs in one ``tokenizer.json``::

    {"format": "lmforge-tokenizer", "version": 1, "kind": "hf", "tokenizer": {...HF tokenizer.json...},
     "chat_template": "...", "special": {"bos_token": "<s>", ...}, "stop_tokens": ["</s>"], "add_bos": false}

``encode`` reads its input as plain text (a special-token string in user text stays ordinary text, as in every
lmforge kind); :meth:`HFTokenizer.encode_with_offsets` recognises special tokens, which a rendered chat
template needs.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Optional, Sequence

from lmforge.errors import TokenizerError
from lmforge.tokenizers.base import FORMAT_NAME, FORMAT_VERSION, SavedAsJSON
from tokenizers import Tokenizer as _HF

__all__ = ["HFTokenizer"]

SPECIAL_NAMES = ("bos_token", "eos_token", "pad_token", "unk_token")


class HFTokenizer(SavedAsJSON):
    """A Hugging Face ``tokenizers`` tokenizer behind the lmforge :class:`~lmforge.tokenizers.base.Tokenizer`
    contract.

    Args:
        payload: the HF ``tokenizer.json`` content (a dict).
        special: ``bos_token``/``eos_token``/``pad_token``/``unk_token`` strings (or None).
        chat_template: Jinja source of the chat template, or None.
        stop_tokens: token strings that end a generation (the eos token is always one).
        add_bos: whether the checkpoint's own tokenizer starts every text with ``bos_token``.
        source: names the file in errors.
    """

    kind = "hf"

    def __init__(self, payload: dict, special: Optional[dict] = None, chat_template: Optional[str] = None,
                 stop_tokens: Sequence[str] = (), add_bos: bool = False, source: str = "tokenizer") -> None:
        try:
            self._tok = _HF.from_str(json.dumps(payload))
        except Exception as err:  # the library raises its own exception type for a malformed file
            raise TokenizerError(f"{source} is not a valid Hugging Face tokenizer.json ({str(err).splitlines()[0]}); "
                                 "use the tokenizer.json of the checkpoint") from None
        self._payload = payload
        self.special = {k: (special or {}).get(k) for k in SPECIAL_NAMES}
        self.chat_template = chat_template
        self.add_bos = bool(add_bos)
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.special_tokens = {t.content: i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}
        self.bos_id = self._id(self.special["bos_token"], source)
        self.eos_id = self._id(self.special["eos_token"], source)
        self.unk_id = self._id(self.special["unk_token"], source)
        pad = self._id(self.special["pad_token"], source)
        self.pad_id = pad if pad is not None else (self.eos_id if self.eos_id is not None else 0)
        self.stop_tokens = [t for t in dict.fromkeys([self.special["eos_token"], *stop_tokens]) if t]
        self.stop_ids = [i for i in (self._id(t, source) for t in self.stop_tokens) if i is not None]

    def _id(self, token: Optional[str], source: str) -> Optional[int]:
        if token is None:
            return None
        i = self._tok.token_to_id(token)
        if i is None:
            raise TokenizerError(f"{source}: special token {token!r} is not in the vocabulary; "
                                 "the tokenizer files of the checkpoint do not belong together")
        return i

    # ------------------------------------------------------------------ the Tokenizer contract
    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Ids of ``text`` read as plain text (special-token strings are not turned into special ids)."""
        self._tok.encode_special_tokens = True
        try:
            ids = self._tok.encode(text, add_special_tokens=False).ids
        finally:
            self._tok.encode_special_tokens = False
        return self._frame(ids, add_bos, add_eos)

    def _frame(self, ids: list[int], add_bos: bool, add_eos: bool) -> list[int]:
        if add_bos and self.bos_id is not None:
            ids.insert(0, self.bos_id)
        if add_eos and self.eos_id is not None:
            ids.append(self.eos_id)
        return ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids of ``text`` with special tokens recognised (what a rendered chat template needs, and what
        ``transformers``' ``apply_chat_template`` does), with each id's character span in ``text``."""
        enc = self._tok.encode(text, add_special_tokens=False)
        return list(enc.ids), [tuple(o) for o in enc.offsets]

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """Text of ``ids``; with ``skip_special`` the special tokens are left out."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        """``encode`` applied to each text."""
        return [self.encode(t) for t in texts]

    def token_to_id(self, token: str) -> Optional[int]:
        """The id of one vocabulary entry, or None."""
        return self._tok.token_to_id(token)

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """The lmforge ``tokenizer.json`` payload."""
        return {"format": FORMAT_NAME, "version": FORMAT_VERSION, "kind": self.kind, "tokenizer": self._payload,
                "chat_template": self.chat_template, "special": self.special, "stop_tokens": self.stop_tokens,
                "add_bos": self.add_bos}



    @classmethod
    def from_dict(cls, data: dict, source: str = "tokenizer") -> "HFTokenizer":
        """Rebuilds the tokenizer from :meth:`to_dict`'s payload."""
        payload = data.get("tokenizer")
        if not isinstance(payload, dict):
            raise TokenizerError(f"{source} is an 'hf' tokenizer without its 'tokenizer' payload; import the checkpoint again")
        return cls(payload, data.get("special") or {}, data.get("chat_template"), data.get("stop_tokens") or (),
                   bool(data.get("add_bos")), source=source)

    @classmethod
    def train(cls, texts: Any, **_: Any) -> "HFTokenizer":
        """Not available: an ``hf`` tokenizer comes with a checkpoint."""
        raise TokenizerError("an 'hf' tokenizer is not trained by lmforge; it comes with a checkpoint "
                             "(`lmforge import HF_FOLDER --out RUN`), or choose char, bpe or word")

    def __repr__(self) -> str:
        return f"HFTokenizer(vocab_size={self.vocab_size}, eos={self.special['eos_token']!r}, chat_template={self.chat_template is not None})"
