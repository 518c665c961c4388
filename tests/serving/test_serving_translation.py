"""/v1/translations on a real (tiny, untrained) translation run folder, loaded by path."""

from __future__ import annotations

import httpx
import pytest


@pytest.fixture(scope="module")
def mt_run(tmp_path_factory):
    import torch

    from lmforge.config import RunConfig
    from lmforge.models import build_model
    from lmforge.tokenizers import train_tokenizer
    from lmforge.training.checkpoint import save_run

    tok = train_tokenizer("char", ["a man rides a bike. ein mann faehrt fahrrad."])
    cfg = RunConfig.model_validate({
        "task": "translate",
        "model": {"family": "seq2seq_transformer", "d_model": 32, "num_heads": 2, "num_encoder_layers": 1,
                  "num_decoder_layers": 1, "d_ff": 64, "dropout": 0.0, "src_vocab_size": tok.vocab_size,
                  "tgt_vocab_size": tok.vocab_size, "max_len": 64},
        "tokenizer": {"kind": "char"},
        "out_dir": str(tmp_path_factory.mktemp("mt") / "tiny-mt"),
    })
    torch.manual_seed(2)
    return save_run(cfg.out_dir, cfg, build_model(cfg.model), tok)


def test_translations_match_the_translator(serve, mt_run):
    from lmforge.api import load
    from lmforge.serving.app import create_app

    direct = load(mt_run)
    texts = ["a man", "ride a bike", "ein mann"]
    srv = serve(mt_run)  # a path: create_app loads it with lmforge.api.load
    assert isinstance(create_app(mt_run).state.engine, type(direct))
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        card = c.get("/v1/models").json()["data"][0]
        beam3 = c.post("/v1/translations", json={"input": texts, "beam": 3, "max_len": 8}).json()
        greedy = c.post("/v1/translations", json={"input": texts, "beam": 1, "max_len": 8}).json()
        refused = c.post("/v1/completions", json={"prompt": "a man"})
    assert card["id"] == "tiny-mt" and card["lmforge"]["kind"] == "translation"
    assert [d["text"] for d in beam3["data"]] == direct.translate(texts, beam=3, max_len=8)
    assert [d["text"] for d in greedy["data"]] == direct.translate(texts, beam=1, max_len=8)
    assert [d["index"] for d in beam3["data"]] == [0, 1, 2]
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "unsupported_for_model"
