"""BLEU/chrF: equal to sacreBLEU called directly, with hand-checkable edge cases."""

from __future__ import annotations

import math

import pytest
import sacrebleu

from lmforge.evaluation.translation import corpus_scores, evaluate_translator

HYPS = ["Ein Mann fährt auf einem Fahrrad.", "Zwei Hunde spielen im Schnee", "Eine Frau liest ein Buch .", ""]
REFS = ["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee.", "Eine Frau liest ein Buch.", "Ein Kind lacht."]


def test_scores_equal_sacrebleu_called_directly() -> None:
    s = corpus_scores(HYPS, REFS)
    assert s["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score, abs=1e-9)
    assert s["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score, abs=1e-9)
    assert s["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert s["chrf_signature"].startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:")
    assert s["sentences"] == 4 and "BP =" in s["bleu_details"]


def test_hand_computed_bleu() -> None:
    assert corpus_scores(["a b c d"], ["a b c d"])["bleu"] == pytest.approx(100.0)
    # hypothesis "a b c d e" vs reference "a b c d x": precisions 4/5, 3/4, 2/3, 1/2; no brevity penalty
    expected = 100 * math.exp(sum(math.log(p) for p in (4 / 5, 3 / 4, 2 / 3, 1 / 2)) / 4)
    assert corpus_scores(["a b c d e"], ["a b c d x"])["bleu"] == pytest.approx(expected, abs=1e-6)
    # a shorter hypothesis pays the brevity penalty exp(1 - r/c)
    short = corpus_scores(["a b c d"], ["a b c d e f"])["bleu"]
    assert short == pytest.approx(100 * math.exp(1 - 6 / 4), abs=1e-6)
    assert corpus_scores(["x y z"], ["a b c"])["bleu"] == 0.0
    with pytest.raises(ValueError, match="aligned"):
        corpus_scores(["a"], ["a", "b"])


def test_evaluate_translator_keeps_hypotheses() -> None:
    class Echo:
        def translate(self, texts, beam=5, batch_size=32, progress=None):
            return [t.upper() for t in texts]

    out = evaluate_translator(Echo(), ["ab cd", "ef"], ["AB CD", "EG"], beam=3)
    assert out["hypotheses"] == ["AB CD", "EF"] and out["beam"] == 3
    assert out["bleu"] == pytest.approx(sacrebleu.corpus_bleu(["AB CD", "EF"], [["AB CD", "EG"]]).score)
