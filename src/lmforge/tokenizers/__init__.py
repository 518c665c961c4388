"""Tokenizers: ``char``, ``bpe`` (byte-level) and ``word``, each saved as one ``tokenizer.json``.

Every kind shares the fixed special ids of :data:`SPECIAL_TOKENS` (``<pad>``=0 ... ``<|end|>``=7).

Example:
    >>> from lmforge.tokenizers import train_tokenizer, load_tokenizer
    >>> tok = train_tokenizer("char", ["hello"])
    >>> tok.encode("hello", add_bos=True)[0] == tok.bos_id == 2
    True
"""

from lmforge.tokenizers.base import (
    ASSISTANT_ID,
    BOS_ID,
    END_ID,
    EOS_ID,
    FIRST_REGULAR_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    SYSTEM_ID,
    UNK_ID,
    USER_ID,
    Tokenizer,
)
from lmforge.tokenizers.bpe import BPETokenizer
from lmforge.tokenizers.char import CharTokenizer
from lmforge.tokenizers.serialization import TOKENIZERS, load_tokenizer, tokenizer_from_dict, train_tokenizer
from lmforge.tokenizers.spec import TokenizerSpec
from lmforge.tokenizers.word import WordTokenizer

__all__ = [
    "Tokenizer",
    "CharTokenizer",
    "BPETokenizer",
    "WordTokenizer",
    "TOKENIZERS",
    "train_tokenizer",
    "load_tokenizer",
    "tokenizer_from_dict",
    "TokenizerSpec",
    "SPECIAL_TOKENS",
    "FIRST_REGULAR_ID",
    "PAD_ID",
    "UNK_ID",
    "BOS_ID",
    "EOS_ID",
    "SYSTEM_ID",
    "USER_ID",
    "ASSISTANT_ID",
    "END_ID",
]
