"""Import a local Hugging Face causal-LM folder as an lmforge run folder (``lmforge import``).

The folder holds ``config.json``, ``model.safetensors`` (or shards listed in ``model.safetensors.index.json``),
``tokenizer.json`` and usually ``tokenizer_config.json`` (special tokens, chat template) and
``generation_config.json`` (end-of-sequence ids). The result is a run folder like one ``lmforge train`` writes:
``config.yaml``, ``model.safetensors``, ``tokenizer.json`` (the ``hf`` kind, carrying the chat template) and
``summary.json`` (``chat_template: jinja`` when the checkpoint has one), so generate, chat, serve, eval, embed,
finetune and :class:`lmforge.api.LM` use it unchanged.

Weights are read tensor by tensor from the safetensors files and kept in the checkpoint's dtype (``dtype="auto"``)
or converted one tensor at a time; the model is built on the meta device and the tensors are assigned to it, so
no float32 copy of a bf16/fp16 checkpoint is ever made. Nothing is downloaded: a hub id gets an error saying how
to download it first.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch

from lmforge.config import RunConfig
from lmforge.config.transformer import TransformerConfig
from lmforge.errors import CheckpointError, ConfigError, TokenizerError
from lmforge.interop.hf_arch import lmforge_config, split_sizes, weight_map
from lmforge.models.run_folder import save_run
from lmforge.models.transformer import Transformer
from lmforge.models.transformer.positions import POSITIONS
from lmforge.models.weights import read_metadata
from lmforge.tokenizers.hf import HFTokenizer
from safetensors import safe_open

__all__ = ["import_hf", "read_hf_tokenizer", "build_transformer"]

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_GPT2_BUFFERS = re.compile(r"(^|\.)attn\.(bias|masked_bias)$")  # old GPT-2 files store the causal mask


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); {what}") from None


def _check_folder(folder: Path) -> None:
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"{folder} has no config.json; pass a Hugging Face model folder (config.json, "
                                  "*.safetensors, tokenizer.json)")
        return
    if re.fullmatch(r"[\w.-]+/[\w.-]+", str(folder)) and not folder.exists():
        raise CheckpointError(f"{folder} is not a folder here; it looks like a Hugging Face hub id, and lmforge downloads "
                              f"nothing: download it first (huggingface-cli download {folder} --local-dir DIR) "
                              "and import DIR")
    raise CheckpointError(f"model folder {folder} not found; pass a local Hugging Face model folder")


class _Tensors:
    """The checkpoint's tensors by name, across shards, read one at a time."""

    def __init__(self, folder: Path) -> None:
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map_ = _read_json(index, "the shard index is damaged; download the checkpoint again").get("weight_map")
            if not isinstance(weight_map_, dict):
                raise CheckpointError(f"{index} has no weight_map; download the checkpoint again")
            files = sorted(set(weight_map_.values()))
        elif (folder / "model.safetensors").is_file():
            files = ["model.safetensors"]
        elif any(folder.glob("*.bin")) or any(folder.glob("*.pt*")):
            raise CheckpointError(f"{folder} has only pickled PyTorch weights; lmforge reads safetensors only (never "
                                  "unpickles): convert them to model.safetensors first")
        else:
            raise CheckpointError(f"{folder} has no model.safetensors (or model.safetensors.index.json); "
                                  "download the weights too")
        self.handles, self.where = [], {}
        for name in files:
            path = folder / name
            read_metadata(path)  # a missing, truncated or corrupted file: one clear line
            try:
                handle = safe_open(str(path), framework="pt", device="cpu")
            except Exception as err:  # safetensors raises its own error types
                raise CheckpointError(f"{path} could not be read ({err}); download the checkpoint again") from None
            self.handles.append(handle)
            for key in handle.keys():
                self.where[key] = handle
        self.prefix = ""
        if "wte.weight" in self.where and "transformer.wte.weight" not in self.where:
            self.prefix = "transformer."  # the original GPT-2 files name tensors without the "transformer." prefix
        self.used: set[str] = set()

    def get(self, name: str) -> torch.Tensor:
        key = name[len(self.prefix):] if self.prefix and name.startswith(self.prefix) else name
        if key not in self.where:
            raise CheckpointError(f"the checkpoint has no tensor {key!r}; its weights do not match its config.json")
        self.used.add(key)
        return self.where[key].get_tensor(key)

    def get_dtype(self, key: str) -> torch.dtype:
        names = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}
        code = self.where[key].get_slice(key).get_dtype()
        if code not in names:
            raise CheckpointError(f"tensor {key!r} has dtype {code}; lmforge imports float32, bfloat16 and float16 weights "
                                  "(quantised checkpoints are not supported)")
        return names[code]

    def unused(self) -> list[str]:
        return sorted(k for k in self.where if k not in self.used and not _GPT2_BUFFERS.search(k))


def _state_dict(arch: str, cfg: TransformerConfig, tensors: _Tensors, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for name, sources, how in weight_map(arch, cfg):
        parts = [tensors.get(s).to(dtype) for s in sources]
        if how == "cat":
            sizes = split_sizes(name, cfg)
            if [p.shape[0] for p in parts] != sizes:
                raise CheckpointError(f"tensors {', '.join(sources)} have {[p.shape[0] for p in parts]} rows, config.json "
                                      f"implies {sizes}; the weights do not match their config")
            t = torch.cat(parts, 0)
        else:
            t = parts[0].t().contiguous() if how == "t" else parts[0]
        sd[name] = t
    if cfg.positional.encoding == "learned":
        sd["pos.weight.weight"] = sd["pos.weight.weight"][: cfg.block_size]  # a capped context keeps the first positions
    if cfg.tie_embeddings:
        if "lm_head.weight" in tensors.where and not torch.equal(tensors.get("lm_head.weight").to(dtype), sd["tok_emb.weight"]):
            raise CheckpointError("config.json ties the output head to the embeddings but lm_head.weight differs; "
                                  "set tie_word_embeddings false in config.json")
        sd["lm_head.weight"] = sd["tok_emb.weight"]
    extra = tensors.unused()
    if extra:
        raise CheckpointError(f"the checkpoint has tensors lmforge's {arch} mapping does not use (e.g. {extra[0]!r}); "
                              "its config.json does not describe it fully, so it cannot be imported exactly")
    return sd


def build_transformer(cfg: TransformerConfig, state_dict: dict[str, torch.Tensor]) -> Transformer:
    """A Transformer holding ``state_dict``'s tensors themselves (their dtype kept, nothing copied): built on the
    meta device, with only the position module (non-persistent buffers) built for real."""
    with torch.device("meta"):
        model = Transformer(cfg)
    model.pos = POSITIONS.get(cfg.positional.encoding)(cfg)
    wanted = set(model.state_dict())
    if wanted != set(state_dict):
        missing = sorted(wanted - set(state_dict))
        raise CheckpointError(f"the imported weights do not fill the model (missing {missing[:3]}); report this bug")
    model.load_state_dict(state_dict, strict=True, assign=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.tok_emb.weight
    return model.eval()


def _special(value: Any) -> Optional[str]:
    return value.get("content") if isinstance(value, dict) else value


def _chat_template(folder: Path, tok_cfg: dict) -> Optional[str]:
    source = tok_cfg.get("chat_template")
    if isinstance(source, list):  # named templates: the default one
        source = next((t.get("template") for t in source if t.get("name") == "default"), None)
    jinja_file = folder / "chat_template.jinja"
    if not source and jinja_file.is_file():
        source = jinja_file.read_text(encoding="utf-8")
    return source or None


def read_hf_tokenizer(folder: str | Path) -> HFTokenizer:
    """The ``hf`` tokenizer of a Hugging Face folder: tokenizer.json, with the special tokens and chat template of
    tokenizer_config.json and the end-of-sequence ids of generation_config.json."""
    folder = Path(folder)
    file = folder / "tokenizer.json"
    if not file.is_file():
        raise TokenizerError(f"{folder} has no tokenizer.json; lmforge reads tokenizers in the HF tokenizers format "
                             "(save it with a fast tokenizer's save_pretrained)")
    payload = _read_json(file, "download the checkpoint's tokenizer again")
    tok_cfg_file = folder / "tokenizer_config.json"
    tok_cfg = _read_json(tok_cfg_file, "fix or remove it") if tok_cfg_file.is_file() else {}
    special = {k: _special(tok_cfg.get(k)) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
    probe = HFTokenizer(payload, special, source=str(file))
    stops: list[str] = []
    gen_file = folder / "generation_config.json"
    if gen_file.is_file():
        eos = _read_json(gen_file, "fix or remove it").get("eos_token_id")
        for i in eos if isinstance(eos, list) else [eos] if eos is not None else []:
            token = probe._tok.id_to_token(int(i))
            if token is not None:
                stops.append(token)
    if special["eos_token"] is None and stops:
        special["eos_token"] = stops[0]
    return HFTokenizer(payload, special, _chat_template(folder, tok_cfg), stops,
                       bool(tok_cfg.get("add_bos_token", False)), source=str(file))


def import_hf(folder: str | Path, out_dir: str | Path, dtype: str = "auto", block_size: Optional[int] = None) -> dict:
    """Converts a local Hugging Face causal-LM folder into an lmforge run folder.

    Args:
        folder: the Hugging Face folder (config.json, *.safetensors, tokenizer.json...).
        out_dir: the run folder to create (must not exist or be empty).
        dtype: ``auto`` (the checkpoint's), ``float32``, ``bfloat16`` or ``float16``.
        block_size: cap the context (and KV cache) at this many tokens; default the checkpoint's.

    Returns:
        The run's summary (also written to ``summary.json``).

    Raises:
        CheckpointError: a missing folder or file, a hub id, corrupt or mismatched weights.
        ConfigError: an unsupported architecture or config field (named in the message).
        TokenizerError: a missing or invalid tokenizer.

    Example:
        >>> import_hf("SmolLM-135M", "runs/smollm")  # doctest: +SKIP
    """
    start = time.perf_counter()
    folder, out_dir = Path(folder), Path(out_dir)
    _check_folder(folder)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ConfigError(f"{out_dir} already exists and is not empty; choose another --out (nothing was changed)")
    if dtype != "auto" and dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose auto, {', '.join(DTYPES)}")
    data = _read_json(folder / "config.json", "download the checkpoint again")
    if not isinstance(data, dict):
        raise CheckpointError(f"{folder / 'config.json'} is not a JSON object; download the checkpoint again")
    arch, cfg = lmforge_config(data, source=str(folder / "config.json"), block_size=block_size)
    tokenizer = read_hf_tokenizer(folder)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise TokenizerError(f"tokenizer.json has {tokenizer.vocab_size} tokens but the model only {cfg.vocab_size}; "
                             "the tokenizer belongs to another checkpoint")
    tensors = _Tensors(folder)
    source_dtype = tensors.get_dtype(next(k for k in tensors.where if not _GPT2_BUFFERS.search(k)))
    target = source_dtype if dtype == "auto" else DTYPES[dtype]
    if target == torch.float64:
        target = torch.float32
    model = build_transformer(cfg, _state_dict(arch, cfg, tensors, target))
    run_cfg = RunConfig.parse({"task": "lm", "model": cfg.model_dump(mode="json"), "tokenizer": {"kind": "hf"},
                               "out_dir": str(out_dir)})
    summary = {"imported_from": str(folder.resolve()), "architecture": arch,
               "chat_template": "jinja" if tokenizer.chat_template else "plain",
               "source_dtype": str(source_dtype).removeprefix("torch."), "dtype": str(target).removeprefix("torch."),
               "parameters": model.num_parameters(), "import_seconds": round(time.perf_counter() - start, 3)}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:  # written beside, then renamed: an interrupted import leaves no half run folder
        save_run(tmp, run_cfg, model, tokenizer, summary=summary)
        if out_dir.exists():
            out_dir.rmdir()
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("imported %s (%s, %s parameters) into %s", folder, arch, f"{summary['parameters']:,}", out_dir)
    return summary
