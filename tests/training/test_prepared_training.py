"""Training on prepared shards: DDP ranks read disjoint windows, bounded evaluation is deterministic and equals the
full evaluation on a small split, bits per byte from the index equal the figure from the raw text, and the CLI
path prepare -> train -> eval works on a prepared folder."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from lmforge.data.shards import INDEX_COLUMNS, ShardedTokens, ShardWriter
from lmforge.training.tasks import LMTask

T = 8


def _arange_store(folder, n: int, shard: int = 1000) -> ShardedTokens:
    """A multi-shard store whose token at position i is i (so a window's first input is its start)."""
    folder.mkdir(parents=True, exist_ok=True)
    w = ShardWriter(folder, "train", np.dtype(np.uint32))
    entries = []
    for lo in range(0, n, shard):
        w.write(np.arange(lo, min(n, lo + shard)), 0, 0, 0, 0)
        entries.append(w.flush())
    return ShardedTokens(folder, entries, np.uint32)


def _draw(rank: int, world: int, folder: str, out_file, env=None) -> None:
    """Draws 5 steps of this rank's windows (in a gloo group of ``world`` when ``env`` is given)."""
    if env:
        os.environ.update(env)
        import torch.distributed as dist

        dist.init_process_group("gloo", rank=rank, world_size=world)
    with open(os.path.join(folder, "entries.json")) as f:
        store = ShardedTokens(folder, json.load(f), np.uint32)
    task = LMTask(store, store, T, batch_size=8, seed=3)
    task.setup(device=torch.device("cpu"), rank=rank, world_size=world, grad_accum=2)
    drawn = []
    for _ in range(5):
        batches = task.next_batches()
        for x, y in batches:
            assert torch.equal(y, x + 1)  # targets are the inputs shifted by one token
        drawn.append([int(s) for x, _ in batches for s in x[:, 0]])
    if env:
        gathered = [None] * world
        dist.all_gather_object(gathered, drawn)
        assert gathered[rank] == drawn
        dist.destroy_process_group()
    with open(out_file, "w") as f:
        json.dump(drawn, f)


def _rank_entry(rank, folder, out_file, env):
    _draw(rank, 2, folder, out_file, env)


def test_ddp_ranks_read_disjoint_windows(tmp_path):
    from test_distributed import _two_ranks

    folder = str(tmp_path / "store")
    store = _arange_store(tmp_path / "store", 5000)  # 5 shards: windows cross shard boundaries
    (tmp_path / "store" / "entries.json").write_text(json.dumps(store.shards))
    _draw(0, 1, folder, tmp_path / "single.json")
    _two_ranks(_rank_entry, lambda rank, env: (rank, folder, str(tmp_path / f"r{rank}.json"), env))
    single = json.loads((tmp_path / "single.json").read_text())
    r0, r1 = (json.loads((tmp_path / f"r{r}.json").read_text()) for r in range(2))
    for step in range(5):
        mine, theirs = r0[step], r1[step]
        assert len(mine) == len(theirs) == 4  # 8 windows a step: 2 micro-batches of 2 rows on each rank
        assert not set(mine) & set(theirs)
        starts = sorted(mine + theirs)
        assert all(b - a >= T for a, b in zip(starts, starts[1:]))  # the windows do not even overlap
        assert sorted(single[step]) == starts  # together: the batch a single process draws


def _tiny_model(vocab: int):
    from lmforge.config import RunConfig
    from lmforge.models import build_model

    cfg = RunConfig.parse({"model": {"family": "transformer", "vocab_size": vocab, "d_model": 16, "num_layers": 1,
                                     "block_size": T, "attention": {"num_heads": 2}}})
    torch.manual_seed(0)
    return build_model(cfg.model)


def test_bounded_evaluation_is_deterministic_and_equals_the_full_one_on_a_small_split():
    from lmforge.evaluation.perplexity import evaluate_lm

    rng = np.random.default_rng(0)
    val = rng.integers(0, 40, 301).astype(np.uint16)
    model = _tiny_model(40)
    meta = {"chars": 400, "bytes": 450}
    full = evaluate_lm(model, val, meta, T, 4)
    big = evaluate_lm(model, val, meta, T, 4, max_tokens=10_000)
    drop = ("tokens_per_s",)
    assert {k: v for k, v in big.items() if k not in drop} == {k: v for k, v in full.items() if k not in drop}
    assert full["tokens"] == 300
    a = evaluate_lm(model, val, meta, T, 4, max_tokens=80)
    b = evaluate_lm(model, val, meta, T, 4, max_tokens=80)
    assert a["tokens"] == 80 and a["loss"] == b["loss"] and a["loss"] != full["loss"]
    seen = []
    evaluate_lm(model, val, meta, T, 4, max_tokens=80, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(4, 10), (8, 10), (10, 10)]
    task = LMTask(val, val, T, 4, val_meta=meta, eval_tokens=10_000)  # a training run's final evaluation
    assert task.evaluate(model)["loss"] == full["loss"]
    task.eval_tokens = 80
    assert task.evaluate(model)["loss"] == a["loss"]
    short = LMTask(val, val, T, 4, val_meta=meta, eval_tokens=10_000, eval_share=0.1)  # a run of few steps
    assert short.evaluate(model)["tokens"] == 32  # nothing trained yet: one evaluation batch (4 windows of 8)
    for _ in range(50):
        short.next_batches()
    assert short.evaluate(model)["tokens"] == 160  # a tenth of the 50 x 4 x 8 tokens trained


DOCS = ["Café au lait, s'il vous plaît.\n", "naïve ☕ façade\n", "plain ascii text here\n", "日本語のテキスト\n",
        "more words, more words\n", "ünïcödé everywhere ✓\n"] * 3


def test_bits_per_byte_from_the_index_equal_the_raw_text(tmp_path):
    from lmforge.data import prepare
    from lmforge.tokenizers import TokenizerSpec
    from lmforge.evaluation.perplexity import evaluate_lm

    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS), encoding="utf-8")
    data = prepare(path, tmp_path / "p", tokenizer=TokenizerSpec("char"), val_fraction=0.4)
    val_docs = [DOCS[i] for i in data.val.segments()[:, INDEX_COLUMNS.index("doc")]]
    raw_chars, raw_bytes = sum(map(len, val_docs)), sum(len(d.encode("utf-8")) for d in val_docs)
    assert raw_bytes > raw_chars  # the text is not ASCII, so the two figures differ
    assert (data.meta["val"]["chars"], data.meta["val"]["bytes"]) == (raw_chars, raw_bytes)
    model = _tiny_model(data.tokenizer.vocab_size)
    figs = evaluate_lm(model, data.val, data.meta["val"], T, 4)
    # independently: the summed loss over every target of the split, from one forward pass per window
    ids = torch.from_numpy(np.asarray(data.val, dtype=np.int64))
    nats = 0.0
    with torch.no_grad():
        for s in range(0, len(ids) - 1, T):
            x, y = ids[s:s + T][None, : len(ids) - 1 - s], ids[s + 1:s + T + 1][None]
            logits, _ = model(x)
            nats += float(torch.nn.functional.cross_entropy(logits[0], y[0], reduction="sum"))
    assert figs["bits_per_byte"] == pytest.approx(nats / math.log(2) / raw_bytes, rel=1e-5)
    assert figs["bits_per_char"] == pytest.approx(nats / math.log(2) / raw_chars, rel=1e-5)


def test_prepare_then_train_then_eval_from_the_cli(tmp_path, tiny_corpus, capsys):
    from lmforge.cli.main import main

    assert main(["prepare", str(tiny_corpus), "--tokenizer", "char", "--out", str(tmp_path / "prep"), "--quiet"]) == 0
    assert "lmforge train --data" in capsys.readouterr().out
    run = tmp_path / "run"
    args = ["--data", str(tmp_path / "prep"), "--out", str(run), "--max-steps", "3", "model.d_model=16",
            "model.num_layers=1", "model.block_size=16", "model.attention.num_heads=2", "train.batch_size=4",
            "train.eval_interval=100", "train.sample_tokens=0", "train.eval_tokens=64", "--threads", "1", "--quiet", "--json"]
    assert main(["train", *args]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["val_tokens"] == 64 and summary["final_eval_time"] >= 0  # bounded final evaluation
    state = torch.load(run / "trainer_state.pt", weights_only=True)
    assert state["task"]["sampler"] == {"epoch": 0, "pos": 12}  # the data position, restored by --resume
    assert main(["train", "--resume", str(run), "--max-steps", "5", "--quiet", "--json"]) == 0
    assert torch.load(run / "trainer_state.pt", weights_only=True)["task"]["sampler"]["pos"] == 20
    capsys.readouterr()
    assert main(["eval", str(run), "--max-tokens", "32", "--json"]) == 0
    few = json.loads(capsys.readouterr().out)
    assert main(["eval", str(run), "--json"]) == 0
    full = json.loads(capsys.readouterr().out)
    assert few["tokens"] == 32 and full["tokens"] > few["tokens"]


def test_train_on_raw_data_reuses_what_prepare_wrote(tmp_path, tiny_corpus, capsys, monkeypatch):
    from lmforge.cli.main import main

    monkeypatch.setenv("LMFORGE_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["prepare", str(tiny_corpus), "--tokenizer", "bpe", "--vocab-size", "300", "--quiet", "--json"]) == 0
    folder = json.loads(capsys.readouterr().out)["folder"]
    stamp = os.stat(os.path.join(folder, "manifest.json")).st_mtime_ns
    assert main(["train", "--data", str(tiny_corpus), "--tokenizer", "bpe", "--vocab-size", "300", "--out",
                 str(tmp_path / "run"), "--max-steps", "1", "model.d_model=16", "model.num_layers=1",
                 "model.block_size=16", "model.attention.num_heads=2", "train.batch_size=2", "train.sample_tokens=0",
                 "--threads", "1", "--quiet"]) == 0
    assert os.listdir(tmp_path / "cache") == [os.path.basename(folder)]  # the same cache, not a second copy
    assert os.stat(os.path.join(folder, "manifest.json")).st_mtime_ns == stamp  # reused as it was
