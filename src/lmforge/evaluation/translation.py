"""Translation quality: sacreBLEU BLEU and chrF (arXiv:1804.08771) on detokenised text.

lmforge's tokenizers decode to plain text, so hypotheses are scored exactly as a user would read them, with
sacreBLEU's own tokenisation (``13a``) and the signature that makes the figure reproducible.

Example:
    >>> s = corpus_scores(["the cat sat on the mat"], ["the cat sat on the mat"])
    >>> round(s["bleu"], 1), round(s["chrf"], 1)
    (100.0, 100.0)
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

__all__ = ["corpus_scores", "evaluate_translator"]


def corpus_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """Corpus-level BLEU and chrF of ``hypotheses`` against one reference each.

    Args:
        hypotheses: detokenised system outputs, one per sentence.
        references: detokenised references, aligned with ``hypotheses``.

    Returns:
        ``bleu``, ``chrf`` (0-100), ``bleu_signature``, ``chrf_signature``, ``bleu_details`` (sacreBLEU's line with
        the n-gram precisions, brevity penalty and lengths) and ``sentences``.

    Raises:
        ValueError: the two lists differ in length.
    """
    from sacrebleu.metrics import BLEU, CHRF

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references; they must be aligned")
    hyps, refs = [str(h) for h in hypotheses], [[str(r) for r in references]]
    bleu, chrf = BLEU(), CHRF()
    b, c = bleu.corpus_score(hyps, refs), chrf.corpus_score(hyps, refs)
    return {
        "bleu": float(b.score), "chrf": float(c.score),
        "bleu_signature": str(bleu.get_signature()), "chrf_signature": str(chrf.get_signature()),
        "bleu_details": str(b), "sentences": len(hyps),
    }


def evaluate_translator(translator: Any, sources: Sequence[str], references: Sequence[str], beam: int = 5,
                        batch_size: int = 32, progress: Optional[Callable[[int], None]] = None) -> dict[str, Any]:
    """Translates ``sources`` with a :class:`~lmforge.inference.translate.Translator` and scores the result.

    Returns:
        :func:`corpus_scores`' figures plus ``beam``, ``hypotheses`` (kept beside the scores) and ``seconds``.
    """
    import time

    if len(sources) != len(references):
        raise ValueError(f"{len(sources)} sources but {len(references)} references; they must be aligned")
    t0 = time.perf_counter()
    hyps = translator.translate(list(sources), beam=beam, batch_size=batch_size, progress=progress)
    seconds = time.perf_counter() - t0
    return {**corpus_scores(hyps, references), "beam": beam, "seconds": round(seconds, 3), "hypotheses": hyps}
