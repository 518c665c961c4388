"""The ``hf`` kind against the ``tokenizers`` library it wraps: same ids, special-token strings in plain text stay
text, save/load keeps the chat template and stops, and it cannot be trained."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from lmforge.errors import TokenizerError
from lmforge.tokenizers import load_tokenizer, train_tokenizer
from lmforge.tokenizers.hf import HFTokenizer

TEXT = "hello world, the cat sat on the mat. <|im_end|> is a marker"


@pytest.fixture()
def hf_json():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator([TEXT] * 5, trainers.BpeTrainer(vocab_size=80, special_tokens=["<s>", "</s>", "<|im_end|>"]))
    return tok, json.loads(tok.to_str())


def test_ids_match_the_library_and_specials_in_text_stay_text(hf_json):
    ref, payload = hf_json
    tok = HFTokenizer(payload, {"bos_token": "<s>", "eos_token": "</s>"}, stop_tokens=["<|im_end|>"])
    assert tok.encode("the cat sat") == ref.encode("the cat sat", add_special_tokens=False).ids
    assert tok.decode(tok.encode("the cat sat")) == "the cat sat"
    special = ref.token_to_id("<|im_end|>")
    assert special not in tok.encode("a <|im_end|> b")  # plain text: no special id from user text
    assert special in tok.encode_with_offsets("a <|im_end|> b")[0]  # a rendered template: recognised
    assert tok.encode("cat", add_bos=True, add_eos=True)[::len(tok.encode("cat")) + 1] == [tok.bos_id, tok.eos_id]
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (ref.token_to_id("<s>"), ref.token_to_id("</s>"), ref.token_to_id("</s>"))
    assert tok.stop_ids == [ref.token_to_id("</s>"), special]


def test_save_and_load_keep_everything(hf_json, tmp_path):
    _, payload = hf_json
    tok = HFTokenizer(payload, {"eos_token": "</s>"}, chat_template="{{ messages }}", stop_tokens=["<|im_end|>"])
    tok.save(tmp_path / "tokenizer.json")
    back = load_tokenizer(tmp_path)
    assert back.kind == "hf" and back.chat_template == "{{ messages }}" and back.stop_ids == tok.stop_ids
    assert back.fingerprint() == tok.fingerprint() and back.encode(TEXT) == tok.encode(TEXT)


def test_bad_inputs(hf_json, tmp_path):
    _, payload = hf_json
    with pytest.raises(TokenizerError, match="not in the vocabulary"):
        HFTokenizer(payload, {"eos_token": "<|eot|>"})
    with pytest.raises(TokenizerError, match="not a valid Hugging Face tokenizer.json"):
        HFTokenizer({"model": {"type": "nonsense"}})
    with pytest.raises(TokenizerError, match="not trained by lmforge"):
        train_tokenizer("hf", ["text"])
