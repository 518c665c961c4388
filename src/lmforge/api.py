"""The facade: load a run folder and generate, stream, chat, embed or search with it.

The command line and the server use only this module. :func:`load` returns an :class:`LM` for a language-model
run and a ``Translator`` (``lmforge.inference.translate``) for a translation run.

Example:
    >>> from lmforge.api import LM
    >>> lm = LM.load("runs/latest")  # doctest: +SKIP
    >>> print(lm.generate("ROMEO:", max_new_tokens=50, temperature=0.8, seed=1))  # doctest: +SKIP
    >>> lm.chat([{"role": "user", "content": "What is 2 + 3?"}], temperature=0).text  # doctest: +SKIP
    >>> lm.embed(["a cat", "a dog"]).shape  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence

from lmforge.config import RunConfig
from lmforge.errors import CheckpointError, ConfigError
from lmforge.inference.chat import (
    CHAT_TEMPLATES,
    ChatSession,
    prompt_budget,
    render_chat,
    run_chat_repl,
    trim_messages,
)
from lmforge.inference.embeddings import Embedder
from lmforge.inference.generation import generate, stream
from lmforge.inference.retrieval import load_or_build_index, read_texts as _read, SearchIndex
from lmforge.inference.sampling import SamplingParams
from lmforge.inference.translate import Translator
from lmforge.models.capabilities import model_capabilities
from lmforge.models.protocol import CausalLM
from lmforge.models.quantized import quantization_of, quantize_model
from lmforge.models.run_folder import load_run
from lmforge.models.transformer.decode import compile_decoding
from lmforge.tokenizers.base import Tokenizer
from lmforge.utils.device import resolve_device as _resolve_device
from lmforge.inference.engine import BatchEngine
from lmforge.inference.engine_proc import EngineProcess
from lmforge.inference.chat import CHAT_TEMPLATES
from lmforge.inference.scoring import token_logprobs

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from lmforge.inference.chat import ChatSession
    from lmforge.inference.engine import BatchEngine
    from lmforge.inference.generation import Completion, TextChunk
    from lmforge.inference.sampling import SamplingParams
    from lmforge.inference.retrieval import SearchHit

__all__ = ["LM", "load", "resolve_device", "Translator", "chat_repl", "read_texts", "default_index_path"]


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when available, else ``"mps"`` when available, else ``"cpu"``; see
    :func:`lmforge.utils.device.resolve_device`."""
    return str(_resolve_device(device))


class LM:
    """A language model with its tokenizer: generation, streaming, chat, embeddings and search.

    Args:
        model: a CausalLM (``Transformer`` or ``LSTMLanguageModel``) in eval mode.
        tokenizer: its tokenizer.
        name: a display name (the run folder's name when loaded).
        chat_template: ``"tokens"`` for runs fine-tuned by ``lmforge finetune``, ``"plain"`` for raw-text models.
        path: the run folder, when loaded from one.
    """

    def __init__(self, model: CausalLM, tokenizer: Tokenizer, name: str = "model", chat_template: str = "plain",
                 path: Optional[Path] = None, summary: Optional[dict] = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.chat_template = chat_template
        self.path = path
        self.summary = summary or {}
        self._embedders: dict[str, Any] = {}

    @classmethod
    def load(cls, run_dir: str | Path, device: str = "auto", chat_template: Optional[str] = None,
             weights: str = "last") -> "LM":
        """Loads a language-model run folder.

        Args:
            run_dir: a folder written by ``lmforge train`` or ``lmforge finetune``.
            device: ``"auto"``, ``"cpu"``, ``"cuda"``...
            chat_template: overrides the template the run records (``summary.json`` ``chat_template``).
            weights: ``"last"`` or ``"best"``.
        """

        run = load_run(run_dir, device=resolve_device(device), weights=weights)
        if run.config.task != "lm":
            raise CheckpointError(f"{run_dir} is a {run.config.task!r} run, not a language model; use lmforge.api.load() or Translator.load()")
        if run.tokenizer is None:
            raise CheckpointError(f"{run_dir} has no tokenizer.json; copy the tokenizer the model was trained with into it")
        summary = run.summary or {}
        # an imported checkpoint's tokenizer carries its chat template (also in runs continued from it)
        own = "jinja" if getattr(run.tokenizer, "chat_template", None) else "plain"
        template = chat_template or summary.get("chat_template") or own
        return cls(run.model, run.tokenizer, name=Path(run_dir).resolve().name, chat_template=template,
                   path=Path(run_dir), summary=summary)

    # ------------------------------------------------------------------ facts
    @property
    def max_context(self) -> Optional[int]:
        """Tokens the model can attend to (``None`` for an LSTM, which has no limit)."""
        return getattr(self.model, "max_context", None)

    @property
    def capabilities(self) -> frozenset[str]:
        """What the model can do (``causal_lm``, ``embeddings``, ``kv_cache``...), as its family declares."""
        return model_capabilities(self.model)

    @property
    def family(self) -> str:
        """The model family (``transformer`` or ``lstm``)."""
        return str(getattr(self.model.config, "family", type(self.model).__name__))

    def compile_decoding(self, enabled: bool = True) -> bool:
        """Decodes through a ``torch.compile``'d step from now on (see
        :func:`lmforge.models.transformer.decode.compile_decoding`); returns whether this model and device support
        it. The first generation then compiles (seconds); later ones decode about twice as fast on a CPU."""

        return compile_decoding(self.model, enabled)

    def quantize(self, bits: int = 8, group_size: int = 32) -> "LM":
        """Quantizes the model's weights in place (weight-only int8 or int4, see
        :func:`lmforge.models.quantized.quantize_model`); a model already quantized is left as it is.
        Returns ``self``."""
        if quantization_of(self.model) is None:
            quantize_model(self.model, bits, group_size)
        return self

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text``."""
        return len(self.tokenizer.encode(text))

    # ------------------------------------------------------------------ generation
    def complete(self, prompts: Sequence[Any], **sampling: Any) -> list["Completion"]:
        """Completions of several prompts (texts or token ids), batched; see ``SamplingParams`` for options."""

        return generate(self.model, self.tokenizer, list(prompts), **sampling)

    def generate(self, prompt: str | Sequence[int], **sampling: Any) -> str:
        """The text generated after one prompt: a string, or a list of token ids.

        Several prompts go to :meth:`complete` (batched, one ``Completion`` each); a list of strings here is a
        :class:`~lmforge.errors.ConfigError` that says so, rather than being misread as token ids.
        """
        if not isinstance(prompt, str) and not all(isinstance(t, int) for t in prompt):
            raise ConfigError("LM.generate takes one prompt (a string or a list of token ids); for several prompts "
                              "use lm.complete([...]) (one Completion each) or [lm.generate(p) for p in prompts]")
        return self.complete([prompt], **{**sampling, "num_samples": 1})[0].text

    def stream(self, prompt: Any, **sampling: Any) -> Iterator["TextChunk"]:
        """The text generated after ``prompt``, piece by piece (the last piece has ``finish_reason``)."""

        return stream(self.model, self.tokenizer, prompt, **sampling)

    # ------------------------------------------------------------------ chat
    def chat_session(self, system: Optional[str] = None, use_context: bool = True, **sampling: Any) -> "ChatSession":
        """A multi-turn :class:`~lmforge.inference.chat.ChatSession` with this model's chat template."""

        params = SamplingParams.from_kwargs(SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=128), **sampling)
        return ChatSession(self.model, self.tokenizer, self.chat_template, system=system, params=params,
                           use_context=use_context)

    def _chat_prompt(self, messages: Sequence[dict], max_new_tokens: int) -> list[int]:
        budget = prompt_budget(self.max_context, max_new_tokens)
        kept = trim_messages(self.tokenizer, messages, budget, self.chat_template)
        return render_chat(self.tokenizer, kept, True, self.chat_template)

    def _chat_params(self, sampling: dict) -> Any:
        tpl = CHAT_TEMPLATES.get(self.chat_template)
        p = SamplingParams.from_kwargs(None, **sampling)
        return SamplingParams.from_kwargs(p, stop=list(p.stop) + list(tpl.stop),
                                          stop_token_ids=list(p.stop_token_ids) + list(tpl.stop_token_ids))

    def chat(self, messages: Sequence[dict], **sampling: Any) -> "Completion":
        """The assistant's reply to ``messages`` (``[{"role": "user", "content": ...}, ...]``), history trimmed
        to the context window (oldest turns first, the system prompt kept)."""

        p = self._chat_params(sampling)
        done = generate(self.model, self.tokenizer, [self._chat_prompt(messages, p.max_new_tokens)], p)[0]
        done.text = CHAT_TEMPLATES.get(self.chat_template).clean(done.text)
        return done

    def stream_chat(self, messages: Sequence[dict], **sampling: Any) -> Iterator["TextChunk"]:
        """The assistant's reply to ``messages``, streamed."""

        p = self._chat_params(sampling)
        started = False
        for chunk in stream(self.model, self.tokenizer, self._chat_prompt(messages, p.max_new_tokens), p):
            if not started:
                chunk.text = chunk.text.lstrip()
                started = bool(chunk.text)
            yield chunk

    # ------------------------------------------------------------------ serving many users, scoring
    def batch_engine(self, max_batch: int = 32, prefill_chunk: int = 512, max_queue: int = 256,
                     process: bool = False, reader: bool = True,
                     event_interval: float = 0.0) -> "BatchEngine | EngineProcess":
        """A started :class:`~lmforge.inference.engine.BatchEngine` (continuous batching) for this model; with
        ``process``, the same engine in a child process (:class:`~lmforge.inference.engine_proc.EngineProcess`:
        what a server uses, so that its event loop and the engine do not share a GIL), whose events a thread of
        this process receives, or with ``reader=False`` the caller (its ``pump()``, when ``fileno()`` is
        readable); ``event_interval`` > 0 lets the child merge a choice's events over that many seconds."""

        if process:
            return EngineProcess(self.model, self.tokenizer, max_batch, prefill_chunk, max_queue, reader=reader,
                                 event_interval=event_interval)
        return BatchEngine(self.model, self.tokenizer, max_batch, prefill_chunk, max_queue).start()

    def sampling_params(self, **sampling: Any) -> "SamplingParams":
        """``SamplingParams`` from keyword options (``temperature=0``, ``max_new_tokens=64``...)."""

        return SamplingParams.from_kwargs(None, **sampling)

    def chat_request(self, messages: Sequence[dict], **sampling: Any) -> tuple[list[int], "SamplingParams"]:
        """The prompt ids and sampling settings (with the chat template's stops) of a reply to ``messages``,
        for :meth:`batch_engine`; the reply text is then cleaned with :meth:`clean_reply`."""
        p = self._chat_params(sampling)
        return self._chat_prompt(messages, p.max_new_tokens), p

    def clean_reply(self, text: str) -> str:
        """A chat reply as :meth:`chat` returns it (the template's clean-up, e.g. surrounding spaces removed)."""

        return CHAT_TEMPLATES.get(self.chat_template).clean(text)

    def token_logprobs(self, ids: Sequence[int], top: int = 0) -> list[Any]:
        """Log-probabilities of each token of ``ids`` given those before it (``None`` for the first); see
        :func:`lmforge.inference.scoring.token_logprobs`."""

        return token_logprobs(self.model, ids, top)

    def loglikelihood(self, context: str, continuation: str) -> tuple[float, bool]:
        """``(log P(continuation | context), whether greedy decoding would produce it)``: the sum of the
        continuation tokens' log-probabilities, each token encoded as ``encode(context) + encode(continuation)``
        (what lm-evaluation-harness scores multiple-choice answers with)."""
        ctx, cont = self.tokenizer.encode(context), self.tokenizer.encode(continuation)
        if not ctx:
            ctx = [int(self.tokenizer.eos_id)]
        scored = self.token_logprobs(ctx + cont, top=1)[len(ctx):]
        total = sum(t.logprob for t in scored)
        return total, all(t.top[0][0] == t.token_id for t in scored)

    # ------------------------------------------------------------------ embeddings and search
    def embedder(self, pooling: str = "mean") -> Any:
        """The :class:`~lmforge.inference.embeddings.Embedder` of this model (cached per pooling)."""

        if pooling not in self._embedders:
            self._embedders[pooling] = Embedder(self.model, self.tokenizer, pooling=pooling)
        return self._embedders[pooling]

    def embed(self, texts: Sequence[str], pooling: str = "mean") -> "np.ndarray":
        """Unit-length vectors (N, D), one per text."""
        return self.embedder(pooling).embed(list(texts))

    def search(self, docs: Sequence[str], query: str, top_k: int = 5, index_path: Optional[str | Path] = None,
               pooling: str = "mean") -> tuple[list["SearchHit"], bool]:
        """Ranks ``docs`` by similarity to ``query``. With ``index_path`` the document vectors are saved there
        and reused while the documents and the model stay the same. Returns ``(hits, index_rebuilt)``."""

        emb = self.embedder(pooling)
        if index_path is None:
            index, rebuilt = SearchIndex.build(emb, docs), True
        else:
            index, rebuilt = load_or_build_index(emb, docs, index_path)
        return index.search(emb, query, top_k), rebuilt

    def __repr__(self) -> str:
        return f"LM(name={self.name!r}, family={self.family!r}, max_context={self.max_context}, chat_template={self.chat_template!r})"


def chat_repl(session: "ChatSession", lines: Any = None, out: Any = None, interactive: bool = True) -> int:
    """Runs the chat loop (``/help``, ``/clear``, ``/system``, ``/save``, ``/exit``) on ``session``; see
    :func:`lmforge.inference.chat.run_chat_repl`. Returns the number of replies."""

    return run_chat_repl(session, lines=lines, out=out, interactive=interactive)


def read_texts(path: str | Path) -> list[str]:
    """Texts of a file: one per non-empty line, or the ``"text"`` fields of a ``.jsonl``."""

    return _read(path)


def default_index_path(run_dir: str | Path, docs_path: str | Path, pooling: str = "mean") -> Path:
    """Where ``lmforge search`` keeps the index of ``docs_path`` for a run: inside the run folder's cache, one
    file per documents file (the file records what it was built from, so a change triggers a rebuild)."""

    docs_path = Path(docs_path).resolve()
    tag = hashlib.sha256(f"{docs_path}|{pooling}".encode()).hexdigest()[:12]
    return Path(run_dir) / ".lmforge_cache" / "search" / f"{docs_path.stem}-{tag}.npz"


def load(run_dir: str | Path, device: str = "auto") -> "LM | Translator":
    """Loads whatever the run folder holds: an :class:`LM`, or a ``Translator`` for a translation run."""

    cfg_path = Path(run_dir) / "config.yaml"
    if cfg_path.is_file():
        try:
            task = RunConfig.from_yaml(cfg_path).task
        except Exception:  # a damaged config: LM.load reports it properly
            task = "lm"
        if task == "translate":
            return Translator.load(run_dir, device=device)
    return LM.load(run_dir, device=device)
