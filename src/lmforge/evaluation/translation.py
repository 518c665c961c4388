"""Translation quality: sacreBLEU (arXiv:1804.08771) BLEU, chrF and TER on detokenised text, and sacreBLEU's
paired bootstrap resampling (Koehn, "Statistical Significance Tests for Machine Translation Evaluation", EMNLP
2004) between two systems.

lmforge's tokenizers decode to plain text, so hypotheses are scored exactly as a user would read them, with
sacreBLEU's own tokenisation (``13a``) and the signature that makes the figure reproducible. TER (translation
edit rate, Snover et al. 2006) is an error rate: lower is better.

Example:
    >>> s = corpus_scores(["the cat sat on the mat"], ["the cat sat on the mat"])
    >>> round(s["bleu"], 1), round(s["chrf"], 1), round(s["ter"], 1)
    (100.0, 100.0, 0.0)
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional, Sequence
from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.significance import PairedTest

__all__ = ["corpus_scores", "evaluate_translator", "paired_bootstrap", "METRICS"]

METRICS = ("bleu", "chrf", "ter")  # sacreBLEU's metric names, lower-cased: BLEU, chrF, TER


def corpus_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """Corpus-level BLEU, chrF and TER of ``hypotheses`` against one reference each.

    Args:
        hypotheses: detokenised system outputs, one per sentence.
        references: detokenised references, aligned with ``hypotheses``.

    Returns:
        ``bleu``, ``chrf``, ``ter`` (0-100; TER can exceed 100), ``bleu_signature``, ``chrf_signature``,
        ``ter_signature``, ``bleu_details`` (sacreBLEU's line with the n-gram precisions, brevity penalty and
        lengths) and ``sentences``.

    Raises:
        ValueError: the two lists differ in length.
    """
    hyps, refs = _aligned(hypotheses, references)
    figs: dict[str, Any] = {}
    for key, metric in _metrics().items():
        score = metric.corpus_score(hyps, refs)
        figs[key], figs[f"{key}_signature"] = float(score.score), str(metric.get_signature())
        if key == "bleu":
            figs["bleu_details"] = str(score)
    return {**figs, "sentences": len(hyps)}


def _metrics() -> dict[str, Any]:
    return {"bleu": BLEU(), "chrf": CHRF(), "ter": TER()}


def _aligned(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references; they must be aligned")
    return [str(h) for h in hypotheses], [[str(r) for r in references]]


def paired_bootstrap(systems: Sequence[tuple[str, Sequence[str]]], references: Sequence[str],
                     n_samples: int = 1000) -> dict[str, Any]:
    """sacreBLEU's paired bootstrap resampling test: each system's BLEU, chrF and TER with the mean and 95%
    confidence interval over ``n_samples`` resamples of the test sentences, and the p-value of each later
    system's difference from the first (the baseline).

    Resamples are drawn with sacreBLEU's seed (12345 unless the ``SACREBLEU_SEED`` environment variable says
    otherwise; it is in the signatures), so the figures are reproducible.

    Args:
        systems: ``(name, hypotheses)`` pairs, the baseline first, all aligned with ``references``.
        references: one reference per sentence.
        n_samples: bootstrap resamples.

    Returns:
        ``systems``: one dict per system with ``name`` and, per metric (``bleu``, ``chrf``, ``ter``), ``score``,
        ``mean``, ``ci`` (half-width of the 95% interval around ``mean``) and ``p_value`` (``None`` for the
        baseline); ``signatures`` (per metric, with the seed and resample count); ``n_samples``; ``sentences``.

    Raises:
        ValueError: fewer than two systems, or a system not aligned with the references.
    """

    if len(systems) < 2:
        raise ValueError("a paired test needs two systems: a baseline and one to compare")
    named = [(name, _aligned(hyps, references)[0]) for name, hyps in systems]
    test = PairedTest(named, _metrics(), references=[[str(r) for r in references]], test_type="bs",
                      n_samples=n_samples)
    signatures, results = test()
    names = dict(zip(_metrics(), signatures))  # our keys -> sacreBLEU's display names (BLEU, chrF2, TER)
    out = [{"name": name} for name, _ in named]
    for key, shown in names.items():
        for row, res in zip(out, results[shown]):
            row[key] = {"score": float(res.score), "mean": float(res.mean), "ci": float(res.ci),
                        "p_value": None if res.p_value is None else float(res.p_value)}
    return {"systems": out, "signatures": {k: str(signatures[v]) for k, v in names.items()},
            "n_samples": test.n_samples, "sentences": len(references)}


def evaluate_translator(translator: Any, sources: Sequence[str], references: Sequence[str], beam: int = 5,
                        batch_size: int = 32, progress: Optional[Callable[[int], None]] = None) -> dict[str, Any]:
    """Translates ``sources`` with a :class:`~lmforge.inference.translate.Translator` and scores the result.

    Returns:
        :func:`corpus_scores`' figures plus ``beam``, ``hypotheses`` (kept beside the scores) and ``seconds``.
    """

    if len(sources) != len(references):
        raise ValueError(f"{len(sources)} sources but {len(references)} references; they must be aligned")
    t0 = time.perf_counter()
    hyps = translator.translate(list(sources), beam=beam, batch_size=batch_size, progress=progress)
    seconds = time.perf_counter() - t0
    return {**corpus_scores(hyps, references), "beam": beam, "seconds": round(seconds, 3), "hypotheses": hyps}
