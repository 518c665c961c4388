"""Export to GGUF, the file format of llama.cpp (and Ollama, LM Studio): a Llama-architecture file with the
tokenizer inside, written with PyPI's ``gguf`` package (``pip install 'lmforge[gguf]'``).

What can be exported:

* **models**: Llama-compatible Transformers (RMSNorm, pre-norm, RoPE with optional linear scaling, SwiGLU,
  mha/gqa/mqa, causal mask; see :func:`lmforge.interop.hf.llama_export_problems`), with or without biases
  and a tied head. Anything else (an LSTM, complex attention, ALiBi, post-norm...) raises a
  :class:`~lmforge.errors.ConfigError` naming what GGUF's ``llama`` architecture cannot hold.
* **tokenizers**: byte-level BPE only, carried as llama.cpp's GPT-2-style BPE vocabulary
  (``tokenizer.ggml.model = "gpt2"``, pre-tokenizer ``gpt-2``, tokens, token types, merges and the special ids).
  Character and word tokenizers cannot be carried: llama.cpp's vocabularies (SentencePiece, BPE over bytes,
  WordPiece, Unigram) all fall back to byte tokens for unseen text, which those vocabularies do not have.

Weights: ``f32`` (exact), ``f16`` (matrices in half precision, norms in float32), ``q8_0`` or ``q4_0``
(llama.cpp's 8-bit and 4-bit blocks of 32, for the matrices and the embedding). A run quantized by ``lmforge quantize`` is exported from its
dequantized weights.

llama.cpp rotates Llama queries and keys in interleaved pairs (channels 2j, 2j+1), where lmforge, like Hugging
Face, pairs channel j with j + hd/2; the Q and K rows of each head are permuted accordingly, which leaves every
attention score unchanged (the same reordering llama.cpp's own ``convert_hf_to_gguf.py`` applies).
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from lmforge.config.transformer import TransformerConfig
from lmforge.errors import ConfigError
from lmforge.interop.hf import llama_export_problems, llama_state_dict
from lmforge.models.quantized import dequantize_model, quantization_of
from lmforge.models.run_folder import load_model
from lmforge.utils.files import atomic_path

__all__ = ["export_gguf", "export_run_gguf", "gguf_incompatibilities", "GGUF_DTYPES"]

log = logging.getLogger(__name__)

GGUF_DTYPES = ("f32", "f16", "q8_0", "q4_0")


def gguf_incompatibilities(model: nn.Module) -> list[str]:
    """What GGUF's ``llama`` architecture cannot hold in ``model`` (empty when it can be exported)."""
    cfg = getattr(model, "config", None)
    if not isinstance(cfg, TransformerConfig):
        family = getattr(cfg, "family", type(model).__name__)
        return [f"a {family!r} model (GGUF's llama architecture holds decoder-only Transformers only)"]
    problems = llama_export_problems(cfg)
    if cfg.positional.rope_scaling_type != "linear":
        problems.append(f"positional.rope_scaling_type={cfg.positional.rope_scaling_type!r} (lmforge writes linear "
                        "RoPE scaling to GGUF only)")
    return problems


def _gguf() -> Any:
    try:
        import gguf
    except ImportError:
        raise ConfigError("GGUF export needs the `gguf` package: pip install 'lmforge[gguf]'") from None
    return gguf


def _interleave_rows(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Each head's rows from half-split (x1..., x2...) to interleaved pairs (x1, x2, ...), as llama.cpp
    expects for the Llama architecture's Q and K."""
    rest = w.shape[1:]
    hd = w.shape[0] // heads
    return w.reshape(heads, 2, hd // 2, *rest).transpose(1, 2).reshape(w.shape)


def _tokenizer_fields(tokenizer: Any, vocab_size: int) -> dict[str, Any]:
    """Tokens, token types and merges of a byte-level BPE tokenizer, padded to the model's vocabulary."""
    kind = getattr(tokenizer, "kind", type(tokenizer).__name__)
    if tokenizer is None:
        raise ConfigError("the run has no tokenizer.json; GGUF files carry their tokenizer, so copy it into the run")
    if kind != "bpe":
        raise ConfigError(f"GGUF carries byte-level BPE tokenizers only, not a {kind!r} tokenizer (llama.cpp has no "
                          "character or word vocabulary); train the model with a bpe tokenizer, or use --format hf")
    data = json.loads(tokenizer.hf_tokenizer.to_str())
    model, pre = data.get("model") or {}, data.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or pre.get("type") != "ByteLevel" or data.get("normalizer"):
        raise ConfigError("this BPE tokenizer is not plain byte-level BPE (GPT-2 style); llama.cpp could not reproduce it")
    vocab: dict[str, int] = dict(model["vocab"])
    for added in data.get("added_tokens") or []:
        vocab[added["content"]] = added["id"]
    n = max(vocab_size, max(vocab.values()) + 1)
    tokens = [f"[PAD{i}]" for i in range(n)]
    types = [5] * n  # UNUSED until filled
    special = set(getattr(tokenizer, "special_tokens", {}).values())
    for tok, i in vocab.items():
        tokens[i] = tok
        types[i] = 3 if i in special else 1  # CONTROL or NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    return {"tokens": tokens, "types": types, "merges": merges, "special": getattr(tokenizer, "special_tokens", {})}


def _write_tokenizer(w: Any, tokenizer: Any, vocab_size: int) -> None:
    t = _tokenizer_fields(tokenizer, vocab_size)
    if len(t["tokens"]) != vocab_size:  # padded up to the model's vocabulary, never cut down
        raise ConfigError(f"the tokenizer has {len(t['tokens'])} tokens but the model only {vocab_size}; "
                          "the run's tokenizer does not belong to this model")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")  # the GPT-2 regex, which lmforge's ByteLevel(use_regex=True) applies
    w.add_token_list(t["tokens"])
    w.add_token_types(t["types"])
    w.add_token_merges(t["merges"])
    sp = t["special"]
    for key, add in (("<bos>", w.add_bos_token_id), ("<eos>", w.add_eos_token_id), ("<unk>", w.add_unk_token_id),
                     ("<pad>", w.add_pad_token_id), ("<|end|>", w.add_eot_token_id)):
        if key in sp:
            add(sp[key])
    w.add_add_bos_token(False)  # lmforge prompts carry no <bos>
    w.add_add_eos_token(False)


def _tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(GGUF name, float32 tensor) of every weight, Q/K rows permuted for llama.cpp's rotary layout."""
    c = model.config
    H, Hkv = c.attention.num_heads, c.attention.kv_heads
    sd = llama_state_dict(model, dtype=torch.float32)
    out = [("token_embd.weight", sd["model.embed_tokens.weight"]), ("output_norm.weight", sd["model.norm.weight"])]
    if "lm_head.weight" in sd:
        out.append(("output.weight", sd["lm_head.weight"]))
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down"}
    for i in range(c.num_layers):
        src = f"model.layers.{i}."
        out.append((f"blk.{i}.attn_norm.weight", sd[src + "input_layernorm.weight"]))
        out.append((f"blk.{i}.ffn_norm.weight", sd[src + "post_attention_layernorm.weight"]))
        for hf, gg in names.items():
            for kind in ("weight", "bias"):
                t = sd.get(f"{src}{hf}.{kind}")
                if t is None:
                    continue
                if gg in ("attn_q", "attn_k"):
                    t = _interleave_rows(t, H if gg == "attn_q" else Hkv)
                out.append((f"blk.{i}.{gg}.{kind}", t))
    return out


def export_gguf(model: nn.Module, tokenizer: Any, path: str | Path, dtype: str = "f32",
                name: Optional[str] = None) -> Path:
    """Writes ``model`` and ``tokenizer`` as one GGUF file (atomically) that llama.cpp loads.

    Args:
        model: a Llama-compatible :class:`~lmforge.models.transformer.Transformer` (float or quantized).
        tokenizer: its byte-level BPE tokenizer.
        path: the ``.gguf`` file to write.
        dtype: ``f32``, ``f16``, ``q8_0`` or ``q4_0``.
        name: the model's name in the file (``general.name``).

    Returns:
        ``path`` as a Path.

    Raises:
        ConfigError: the model or tokenizer cannot be held by GGUF (the message names what), a bad ``dtype``,
            or the ``gguf`` package is missing.
    """
    if dtype not in GGUF_DTYPES:
        raise ConfigError(f"unknown GGUF dtype {dtype!r}; choose one of {', '.join(GGUF_DTYPES)}")
    problems = gguf_incompatibilities(model)
    if problems:
        raise ConfigError("GGUF (llama architecture) cannot hold " + "; ".join(problems)
                          + "; only Llama-style Transformers export to GGUF")
    gguf = _gguf()
    if quantization_of(model) is not None:
        model = dequantize_model(copy.deepcopy(model))
    c, a = model.config, model.config.attention
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[dtype]
    qtype = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}.get(dtype)
    with atomic_path(path) as tmp:
        w = gguf.GGUFWriter(str(tmp), "llama")
        w.add_name(name or "lmforge")
        w.add_context_length(c.block_size)
        w.add_embedding_length(c.d_model)
        w.add_block_count(c.num_layers)
        w.add_feed_forward_length(c.ffn_hidden)
        w.add_head_count(a.num_heads)
        w.add_head_count_kv(a.kv_heads)
        w.add_key_length(c.head_size)
        w.add_value_length(c.head_size)
        w.add_rope_dimension_count(c.head_size)
        w.add_layer_norm_rms_eps(c.norm.eps)
        w.add_rope_freq_base(float(c.positional.rope_base))
        if c.positional.rope_scaling != 1.0:
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(c.positional.rope_scaling))
        w.add_vocab_size(c.vocab_size)
        w.add_file_type(ftype)
        _write_tokenizer(w, tokenizer, c.vocab_size)
        for tname, t in _tensors(model):
            arr = t.numpy()
            if dtype == "f16" and arr.ndim == 2:
                w.add_tensor(tname, arr.astype(np.float16))
            elif qtype is not None and arr.ndim == 2 and arr.shape[1] % 32 == 0:
                w.add_tensor(tname, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)
            else:
                w.add_tensor(tname, arr.astype(np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    log.info("wrote %s (%s)", path, dtype)
    return path


def export_run_gguf(run_dir: str | Path, path: str | Path, dtype: str = "f32") -> Path:
    """Exports a run folder (or a ``save_model`` folder) to a GGUF file; see :func:`export_gguf`."""
    model = load_model(run_dir)
    return export_gguf(model, getattr(model, "tokenizer", None), path, dtype, name=Path(run_dir).resolve().name)
