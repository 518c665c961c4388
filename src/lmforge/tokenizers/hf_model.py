"""The part every tokenizer backed by a Hugging Face ``tokenizers.Tokenizer`` shares (byte-level BPE, unigram):
the special-id check, encoding (long text cut at safe boundaries where the kind allows it), decoding and the
``tokenizer.json`` payload, which keeps the library's own JSON under ``"hf_tokenizer"``."""

from __future__ import annotations

import json
import re
from typing import Any, Iterable, Iterator, Sequence

from lmforge.errors import TokenizerError
from lmforge.tokenizers.base import (
    BOS_ID,
    EOS_ID,
    FORMAT_NAME,
    FORMAT_VERSION,
    PAD_ID,
    SPECIAL_TOKENS,
    SavedAsJSON,
    UNK_ID,
    frame_ids,
)
import tokenizers

__all__ = ["HFModelTokenizer", "hf_tokenizers"]

# A single line break between two non-space characters ("x\nY") is always a pre-token of its own under the
# GPT-2 regex, whether or not the text is cut right after it (a longer whitespace run is not: at the end of a
# piece "\n\n" would stay one pre-token). Merges never cross pre-tokens, so cutting long text there gives
# exactly the ids of the whole text; the pieces are then encoded in parallel by the library.
_SAFE_CUT = re.compile(r"(?<=\S\n)(?=\S)")
_CHUNK_CHARS = 1 << 16


def _chunks(text: str, size: int = _CHUNK_CHARS) -> Iterator[str]:
    """``text`` cut at safe boundaries into pieces of about ``size`` characters (concatenation == text)."""
    start = 0
    n = len(text)
    while n - start > size:
        m = _SAFE_CUT.search(text, start + size)
        if m is None:
            break
        yield text[start:m.start()]
        start = m.start()
    yield text[start:]


def _not_text(text: object) -> str:
    if not isinstance(text, str):
        return f"can only encode str, got {type(text).__name__}"
    bad = next((i for i, c in enumerate(text) if 0xD800 <= ord(c) <= 0xDFFF), None)
    return f"text holds a lone surrogate U+{ord(text[bad]):04X} at index {bad}, which is not valid Unicode; fix the text's encoding"


def hf_tokenizers() -> Any:
    """The ``tokenizers`` package (a core dependency)."""
    return tokenizers


class HFModelTokenizer(SavedAsJSON):
    """A Hugging Face ``tokenizers.Tokenizer`` whose ids 0-7 are lmforge's special tokens; subclasses add ``kind``
    and ``train``. ``cuttable`` says whether long text may be cut at :data:`_SAFE_CUT` and encoded in parallel
    with the same ids (true when a line break between two non-space characters is always its own pre-token)."""

    kind = "hf"
    cuttable = False
    pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID

    def __init__(self, hf_tokenizer: Any) -> None:
        """Args:
        hf_tokenizer: a ``tokenizers.Tokenizer`` whose ids 0-7 are lmforge's special tokens.
        """
        for token, i in SPECIAL_TOKENS.items():
            if hf_tokenizer.token_to_id(token) != i:
                raise TokenizerError(f"{self.kind} tokenizer has no {token!r} at id {i}; the file is corrupted or not lmforge's, retrain it")
        # Special-token strings inside input text are plain text, never special ids.
        hf_tokenizer.encode_special_tokens = True
        self._tok = hf_tokenizer
        self.special_tokens = dict(SPECIAL_TOKENS)
        self._vocab_size = hf_tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def hf_tokenizer(self) -> Any:
        """The underlying ``tokenizers.Tokenizer`` (for interop; do not change it)."""
        return self._tok

    def _batch(self, texts: list[str]) -> list[Any]:
        # encode_batch_fast (tokenizers >= 0.20) skips character offsets, which lmforge never uses.
        fast = getattr(self._tok, "encode_batch_fast", None)
        return (fast or self._tok.encode_batch)(texts, add_special_tokens=False)

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Ids of ``text`` (long text is cut at safe boundaries and encoded in parallel, same ids)."""
        try:
            if self.cuttable and len(text) > _CHUNK_CHARS:
                ids = [i for enc in self._batch(list(_chunks(text))) for i in enc.ids]
            else:
                ids = self._tok.encode(text, add_special_tokens=False).ids
        except TypeError:
            raise TokenizerError(_not_text(text)) from None
        return frame_ids(ids, add_bos, add_eos)

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        """``encode`` of each text (short texts in one parallel call)."""
        texts = list(texts)
        try:
            if self.cuttable and any(len(t) > _CHUNK_CHARS for t in texts):  # long texts: their safe-cut pieces, all in one call
                pieces = [list(_chunks(t)) for t in texts]
                flat = iter(self._batch([p for ps in pieces for p in ps]))
                return [[i for _ in ps for i in next(flat).ids] for ps in pieces]
            return [enc.ids for enc in self._batch(texts)]
        except TypeError:
            return [self.encode(t) for t in texts]  # names the bad text

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        """The text of ``ids``; specials are dropped when ``skip_special``, written out otherwise."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self._vocab_size]
        if bad:
            raise TokenizerError(f"token id {bad[0]} is outside the vocabulary (size {self._vocab_size}); is this the model's tokenizer?")
        return self._tok.decode(ids, skip_special_tokens=skip_special)

    def token_to_id(self, token: str) -> int | None:
        """The id of a vocabulary entry (byte-level form, e.g. ``"Ġthe"`` for " the") or None."""
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str:
        """The vocabulary entry (byte-level form) of ``token_id``."""
        token = self._tok.id_to_token(int(token_id))
        if token is None:
            raise TokenizerError(f"token id {token_id} is outside the vocabulary (size {self._vocab_size})")
        return token

    def to_dict(self) -> dict[str, Any]:
        """The JSON payload written by :meth:`save` (the library's own JSON under ``"model"``)."""
        return {"format": FORMAT_NAME, "version": FORMAT_VERSION, "kind": self.kind,
                "special_tokens": dict(SPECIAL_TOKENS), "hf_tokenizer": json.loads(self._tok.to_str())}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "tokenizer") -> Any:
        """Rebuilds the tokenizer from :meth:`to_dict`'s payload (``source`` names the file in errors)."""
        payload = data.get("hf_tokenizer")
        if not isinstance(payload, dict):
            raise TokenizerError(f"{source}: field 'hf_tokenizer' is missing; the file is corrupted, retrain the tokenizer")
        try:
            tok = hf_tokenizers().Tokenizer.from_str(json.dumps(payload))
        except Exception as err:  # the library raises a bare Exception on malformed JSON
            raise TokenizerError(f"{source}: the {cls.kind} model cannot be read ({str(err).splitlines()[0][:120]}); the file is corrupted, retrain the tokenizer") from None
        return cls(tok)



    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"
