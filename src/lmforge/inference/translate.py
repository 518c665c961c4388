"""``Translator``: text in, text out, over a trained encoder-decoder run.

Sentences are encoded (source + ``<eos>``), sorted by length into batches so that little padding is decoded,
searched (beam search, or greedy for ``beam=1``) and decoded back to plain text in their original order.

Example:
    >>> tr = Translator.load("runs/multi30k")  # doctest: +SKIP
    >>> tr.translate(["A man is riding a bike."], beam=5)  # doctest: +SKIP
    ['Ein Mann fährt Fahrrad.']
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from lmforge.data.pair_batching import encode_source
from lmforge.errors import CheckpointError
from lmforge.inference.beam_search import beam_search, greedy_search, sample_search
from lmforge.models.capabilities import model_capabilities
from lmforge.models.protocol import Seq2SeqLM
from lmforge.models.run_folder import load_run
from lmforge.tokenizers.base import Tokenizer
from lmforge.utils.device import resolve_device

__all__ = ["Translator"]





class Translator:
    """Translates sentences with a seq2seq model and its tokenizers.

    Args:
        model: a seq2seq model (``lmforge.models.seq2seq``), put in eval mode.
        src_tokenizer: the source-side tokenizer.
        tgt_tokenizer: the target-side tokenizer (default: the source's, a joint vocabulary).
        alpha: the GNMT length-penalty exponent used by beam search.
        name: a display name (the run folder's name when loaded).
    """

    def __init__(self, model: Seq2SeqLM, src_tokenizer: Tokenizer, tgt_tokenizer: Optional[Tokenizer] = None, *, alpha: float = 0.6,
                 name: str = "translator") -> None:
        self.model = model.eval()
        self.src_tokenizer = src_tokenizer
        self.tgt_tokenizer = tgt_tokenizer if tgt_tokenizer is not None else src_tokenizer
        self.alpha = alpha
        self.name = name
        tgt = self.tgt_tokenizer
        self._ids = dict(bos_id=tgt.bos_id, eos_id=tgt.eos_id)
        self._banned = sorted({tgt.pad_id, tgt.bos_id})

    @classmethod
    def load(cls, run_dir: str | Path, device: str | torch.device = "auto", weights: str = "last",
             alpha: float = 0.6) -> "Translator":
        """Loads a translation run folder written by ``lmforge train --task translate``.

        Raises:
            CheckpointError: the folder is missing, damaged, or not a translation run.
        """

        run = load_run(run_dir, device=resolve_device(device), weights=weights)
        if run.config.task != "translate":
            raise CheckpointError(f"{run_dir} is a {run.config.task!r} run, not a translation run: translating needs a run "
                                  "trained with --task translate (use a language model with `lmforge generate`, or "
                                  "lmforge.api.LM.load)")
        if run.src_tokenizer is None:
            raise CheckpointError(f"{run_dir} has no tokenizer files; the run folder is incomplete (train it again)")
        return cls(run.model, run.src_tokenizer, run.tgt_tokenizer, alpha=alpha, name=Path(run_dir).name)

    @property
    def device(self) -> torch.device:
        """Where the model lives."""
        return next(self.model.parameters()).device

    @property
    def capabilities(self) -> frozenset[str]:
        """What the model can do (``{"seq2seq"}``), as its family declares."""
        return model_capabilities(self.model)

    def _batches(self, texts: Sequence[str], batch_size: int) -> list[tuple[list[int], torch.Tensor]]:
        ids = [encode_source(self.src_tokenizer, t) for t in texts]
        order = sorted((i for i, t in enumerate(texts) if t.strip()), key=lambda i: len(ids[i]))
        pad = self.src_tokenizer.pad_id
        out = []
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            src = torch.full((len(rows), max(len(ids[i]) for i in rows)), pad, dtype=torch.long)
            for r, i in enumerate(rows):
                src[r, : len(ids[i])] = torch.tensor(ids[i])
            out.append((rows, src.to(self.device)))
        return out

    def _run(self, texts: Sequence[str] | str, batch_size: int, progress: Optional[Callable[[int], None]],
             search: Callable[[torch.Tensor], list]) -> list:
        texts = [texts] if isinstance(texts, str) else list(texts)
        results: list = [None] * len(texts)
        done = 0
        for rows, src in self._batches(texts, batch_size):
            for i, r in zip(rows, search(src)):
                results[i] = r
            done += len(rows)
            if progress is not None:
                progress(done)
        return results

    def translate(self, texts: Sequence[str] | str, beam: int = 5, max_len: Optional[int] = None,
                  batch_size: int = 32, progress: Optional[Callable[[int], None]] = None) -> list[str]:
        """Translates each text.

        Args:
            texts: sentences (a single string is one sentence).
            beam: beam size; 1 is greedy search.
            max_len: the most output tokens per sentence; default ``1.5 x source length + 10`` (at most the
                model's ``max_len``).
            batch_size: sentences decoded together.
            progress: called with the number of sentences done after each batch.

        Returns:
            One translation per input, in order (an empty input gives an empty output).
        """
        out = self.translate_ids(texts, beam=beam, max_len=max_len, batch_size=batch_size, progress=progress)
        return [self.tgt_tokenizer.decode(ids) if ids else "" for ids in out]

    def translate_ids(self, texts: Sequence[str] | str, beam: int = 5, max_len: Optional[int] = None,
                      batch_size: int = 32, progress: Optional[Callable[[int], None]] = None) -> list[list[int]]:
        """As :meth:`translate`, but each translation's target token ids (without ``<bos>``/``<eos>``)."""
        def search(src: torch.Tensor) -> list[list[int]]:
            n = max_len  # None: each sentence's own default budget
            if beam <= 1:
                return greedy_search(self.model, src, max_len=n, banned_ids=self._banned, **self._ids)
            hyps = beam_search(self.model, src, beam_size=beam, alpha=self.alpha, max_len=n, banned_ids=self._banned,
                               **self._ids)
            return [h[0].tokens if h else [] for h in hyps]

        return [[] if ids is None else list(ids) for ids in self._run(texts, batch_size, progress, search)]

    def translate_nbest(self, texts: Sequence[str] | str, beam: int = 5, n: int = 5, max_len: Optional[int] = None,
                        batch_size: int = 32) -> list[list[tuple[str, float]]]:
        """The ``n`` best translations of each text with their length-normalised log-probability scores."""
        def search(src: torch.Tensor) -> list:
            return beam_search(self.model, src, beam_size=beam, n_best=n, alpha=self.alpha, max_len=max_len,
                               banned_ids=self._banned, **self._ids)

        out = self._run(texts, batch_size, None, search)
        return [[] if hyps is None else [(self.tgt_tokenizer.decode(h.tokens), h.score) for h in hyps] for hyps in out]

    def sample(self, texts: Sequence[str] | str, temperature: float = 1.0, top_k: Optional[int] = None,
               top_p: Optional[float] = None, seed: Optional[int] = None, max_len: Optional[int] = None,
               batch_size: int = 32) -> list[str]:
        """Sampled translations (``temperature=0`` is greedy); ``seed`` makes them reproducible."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None

        def search(src: torch.Tensor) -> list[list[int]]:
            return sample_search(self.model, src, max_len=max_len, temperature=temperature, top_k=top_k,
                                 top_p=top_p, generator=gen, banned_ids=self._banned, **self._ids)

        out = self._run(texts, batch_size, None, search)
        return ["" if ids is None else self.tgt_tokenizer.decode(ids) for ids in out]
