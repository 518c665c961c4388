"""Tiny random Hugging Face checkpoints built by ``transformers`` itself (no download), with a tokenizer.json built
by ``tokenizers`` and a tokenizer_config.json holding a chat template."""

from __future__ import annotations

import json
from pathlib import Path

import torch

V = 128  # model vocabulary (the tokenizer uses fewer ids)
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' and not loop.first %}{{ raise_exception('system must come first') }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] | trim + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>"]
CORPUS = ["the cat sat on the mat.\nwhat is my name? you are zorp.\nhello there, how are you?",
          "abcdefghijklmnopqrstuvwxyz 0123456789 +?.,!\n", "i am bela. my name? bela. 17+1? 18"]


def hf_configs():
    import transformers as T

    small = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=64)
    return {
        "llama": T.LlamaConfig(**small, num_key_value_heads=2, tie_word_embeddings=False, attention_bias=True,
                               rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                             "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
        "mistral": T.MistralConfig(**small, num_key_value_heads=2, sliding_window=4),
        "qwen2": T.Qwen2Config(**small, num_key_value_heads=1, tie_word_embeddings=True),
        "gpt2": T.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0),
    }


def build_tokenizer(folder: Path, merges: bool = True) -> None:
    """tokenizer.json (BPE with Metaspace, like SentencePiece models; without merges: one token per character)
    and tokenizer_config.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(CORPUS * 20, trainers.BpeTrainer(vocab_size=120 if merges else 8, special_tokens=SPECIALS))
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "unk_token": None, "chat_template": CHAT_TEMPLATE, "model_max_length": 64,
    }))
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [tok.token_to_id("<|im_end|>"),
                                                                                 tok.token_to_id("<|endoftext|>")]}))


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Random values everywhere (norm gains and biases too, which an initialisation leaves at 1 / 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            base = 1.0 if p.dim() == 1 and p.shape[0] == 32 else 0.0  # norm gains near 1
            p.copy_(torch.randn(p.shape, generator=g) * 0.2 + base)


def build_checkpoint(arch: str, folder: Path, dtype: torch.dtype = torch.float32, config=None, merges: bool = True,
                     random_norms: bool = True):
    """A random ``arch`` model (or ``config``) saved with save_pretrained, plus the tokenizer files; returns the
    HF model."""
    import transformers as T

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(config or hf_configs()[arch]).eval()
    if random_norms:
        randomize(model)
    model.to(dtype).save_pretrained(folder)
    build_tokenizer(folder, merges)
    return model.float()
