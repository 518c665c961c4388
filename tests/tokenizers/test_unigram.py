"""Unigram (SentencePiece-style) subwords: round trips on translation text, the segmentation checked against a
from-scratch Viterbi over the saved piece scores, the saved kind, and joint/separate vocabularies in a
translation run."""

from __future__ import annotations

import json
import math

import pytest

from lmforge.errors import TokenizerError
from lmforge.tokenizers import UnigramTokenizer, load_tokenizer, train_tokenizer
from lmforge.tokenizers.unigram import SPACE_MARK

GERMAN = ["Zwei junge weiße Männer sind im Freien in der Nähe vieler Büsche.",
          "Mehrere Männer mit Schutzhelmen bedienen ein Antriebsradsystem.",
          "Ein kleines Mädchen klettert in ein Spielhaus aus Holz.",
          "Ein Mann in einem blauen Hemd steht auf einer Leiter und putzt ein Fenster."] * 10


@pytest.fixture(scope="module")
def tok() -> UnigramTokenizer:
    return train_tokenizer("unigram", GERMAN, vocab_size=120)


def _best_score(text: str, scores: dict[str, float]) -> float:
    """The highest total log-probability of any segmentation of ``text`` into known pieces (plain dynamic
    programming over prefixes, written independently of the library)."""
    best = [0.0] + [-math.inf] * len(text)
    for end in range(1, len(text) + 1):
        for start in range(end):
            piece = text[start:end]
            if piece in scores and best[start] > -math.inf:
                best[end] = max(best[end], best[start] + scores[piece])
    return best[-1]


def test_round_trip_and_kind(tok, tmp_path) -> None:
    assert tok.kind == "unigram" and tok.vocab_size <= 120
    for text in set(GERMAN) | {"Ein Mann im Freien.", "Männer  in   Holz."}:
        ids = tok.encode(text)
        assert tok.unk_id not in ids and min(ids) >= 8
        assert tok.decode(ids) == text
    tok.save(tmp_path)
    data = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    assert data["kind"] == "unigram" and data["hf_tokenizer"]["model"]["type"] == "Unigram"
    again = load_tokenizer(tmp_path, kind="unigram")
    assert again.encode(GERMAN[0]) == tok.encode(GERMAN[0]) and again.fingerprint() == tok.fingerprint()


def test_segmentation_is_the_most_likely_one(tok) -> None:
    vocab = tok.to_dict()["hf_tokenizer"]["model"]["vocab"]
    scores = {piece: score for piece, score in vocab[8:]}
    for text in ("Ein Mann", "Zwei junge Männer im Freien.", "Schutzhelmen"):
        pieces = [tok.id_to_token(i) for i in tok.encode(text)]
        assert "".join(pieces) == SPACE_MARK + text.replace(" ", SPACE_MARK)  # SentencePiece's space marks
        got = sum(scores[p] for p in pieces)
        marked = SPACE_MARK + text.replace(" ", SPACE_MARK)
        # words are segmented one by one (each pre-token starts at a space mark)
        words = [SPACE_MARK + w for w in marked.split(SPACE_MARK)[1:]]
        assert got == pytest.approx(sum(_best_score(w, scores) for w in words), abs=1e-6)


def test_unseen_characters_are_unk_and_training_is_deterministic() -> None:
    a = UnigramTokenizer.train(GERMAN, vocab_size=100)
    b = UnigramTokenizer.train(GERMAN, vocab_size=100)
    assert a.fingerprint() == b.fingerprint()  # same text, same ids, however the trainer's threads ran
    assert a.unk_id in a.encode("Ein Mann €")
    with pytest.raises(TokenizerError, match="at least"):
        UnigramTokenizer.train(GERMAN, vocab_size=10)


@pytest.mark.parametrize("joint", [True, False])
def test_translation_runs_train_joint_or_separate_unigram_vocabularies(tmp_path, joint) -> None:
    from lmforge.config import RunConfig
    from lmforge.workflows.translate_run import prepare_translation_run

    english = ["Two young men are outside.", "A little girl climbs into a playhouse.", "A man in a blue shirt."] * 10
    src, tgt = tmp_path / "s.en", tmp_path / "t.de"
    src.write_text("".join(s + "\n" for s in english), encoding="utf-8")
    tgt.write_text("".join(t + "\n" for t in GERMAN[:3] * 10), encoding="utf-8")
    model = {"family": "seq2seq_transformer", "d_model": 16, "num_heads": 2, "num_encoder_layers": 1,
             "num_decoder_layers": 1, "d_ff": 32, "share_embeddings": joint}
    cfg = RunConfig.parse({"task": "translate", "out_dir": str(tmp_path / "run"), "model": model,
                           "tokenizer": {"kind": "unigram", "vocab_size": 60},
                           "data": {"src": str(src), "tgt": str(tgt), "joint_vocab": joint, "val_fraction": 0.2}})
    run = prepare_translation_run(cfg)
    assert isinstance(run.src_tokenizer, UnigramTokenizer) and isinstance(run.tgt_tokenizer, UnigramTokenizer)
    assert (run.src_tokenizer is run.tgt_tokenizer) == joint
    if not joint:  # each side learned its own language's pieces
        pieces = [{p for p, _ in t.to_dict()["hf_tokenizer"]["model"]["vocab"]} for t in (run.src_tokenizer, run.tgt_tokenizer)]
        assert any("ä" in p for p in pieces[1]) and not any("ä" in p for p in pieces[0])
        assert set(run.tokenizer_files) == {"src_tokenizer.json", "tgt_tokenizer.json"}
    assert run.src_tokenizer.decode(run.src_tokenizer.encode(english[1])) == english[1]
    assert run.tgt_tokenizer.decode(run.tgt_tokenizer.encode(GERMAN[2])) == GERMAN[2]
