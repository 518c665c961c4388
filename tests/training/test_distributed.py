"""Two CPU processes under DDP (gloo) follow a single process with the same global batch, and only rank 0
trains the tokenizers and writes the token cache."""

import json
import multiprocessing as mp
import os
import socket

import numpy as np
import pytest
import torch

from lmforge.config import RunConfig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(cfg_dict, train, val, out_file, env=None):
    if env:
        os.environ.update(env)
    torch.set_num_threads(1)
    from lmforge.models import build_model
    from lmforge.training.tasks import LMTask
    from lmforge.training.trainer import Trainer

    cfg = RunConfig.parse(cfg_dict)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    task = LMTask(train, val, cfg.block_size, cfg.train.batch_size, seed=cfg.train.seed)
    trainer = Trainer(cfg, model, task)
    summary = trainer.fit()
    weights = [p.detach().flatten()[:20].tolist() for p in trainer.raw.parameters()]
    with open(out_file, "w") as f:
        json.dump({"losses": [h["loss"] for h in trainer.history], "world": summary["world_size"], "w": weights}, f)


def test_two_gloo_ranks_match_one_process(tokens, tiny_config, tmp_path):
    cfg = tiny_config(max_steps=6, eval_interval=100, batch_size=8, grad_accum=2, device="cpu")
    train, val = (np.asarray(t) for t in tokens)
    _train(cfg.to_dict(), train, val, tmp_path / "single.json")
    _two_ranks(_train, lambda rank, env: (cfg.to_dict(), train, val, tmp_path / f"rank{rank}.json", env))
    single = json.loads((tmp_path / "single.json").read_text())
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["world"] == 2 and single["world"] == 1
    assert len(ranks[0]["losses"]) == 6
    # the logged loss is the mean over the global batch, on every rank
    assert ranks[0]["losses"] == pytest.approx(single["losses"], rel=1e-5)
    assert ranks[1]["losses"] == pytest.approx(single["losses"], rel=1e-5)
    for a, b, c in zip(single["w"], ranks[0]["w"], ranks[1]["w"]):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6) and b == c


_TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n" * 40
_WORDS = ["abc", "hello", "speak", "citizen", "proceed", "further", "resolved", "famish"]


def _run_configs(tmp_path) -> tuple[dict, dict]:
    (tmp_path / "corpus.txt").write_text(_TEXT, encoding="utf-8")
    (tmp_path / "pairs.src").write_text("".join(w + "\n" for w in _WORDS * 10), encoding="utf-8")
    (tmp_path / "pairs.tgt").write_text("".join(w[::-1] + "\n" for w in _WORDS * 10), encoding="utf-8")
    lm = {"model": {"family": "transformer", "d_model": 32, "num_layers": 1, "block_size": 16,
                    "attention": {"num_heads": 2}},
          "tokenizer": {"kind": "char"}, "data": {"path": str(tmp_path / "corpus.txt")}, "out_dir": str(tmp_path / "lm"),
          "train": {"max_steps": 2, "batch_size": 4, "eval_interval": 100, "eval_iters": 1, "sample_tokens": 0,
                    "device": "cpu"}}
    mt = {"task": "translate", "model": {"family": "seq2seq_lstm", "emb_dim": 16, "hidden_dim": 16, "num_layers": 1},
          "tokenizer": {"kind": "char"}, "out_dir": str(tmp_path / "mt"),
          "data": {"src": str(tmp_path / "pairs.src"), "tgt": str(tmp_path / "pairs.tgt"), "val_fraction": 0.1,
                   "joint_vocab": False},
          "train": {"device": "cpu"}}
    return lm, mt


def _prepare(task: str, cfg: dict, out_file, env=None) -> None:
    """``train_lm`` (task "lm") or ``prepare_translation_run`` in a process group (task "mt"); records who trained
    tokenizers and who wrote the token cache (from the data module's log line)."""
    import logging

    import lmforge.tokenizers.spec as spec_mod
    import lmforge.workflows.translate_run as mt_run_mod
    from lmforge.training.distributed import process_group
    from lmforge.workflows.lm_run import train_lm
    from lmforge.workflows.translate_run import prepare_translation_run

    if env:
        os.environ.update(env)
    torch.set_num_threads(1)
    calls, real = [], spec_mod.train_tokenizer  # the LM run's tokenizer is trained by its TokenizerSpec
    counted = lambda *a, **k: calls.append(a[0]) or real(*a, **k)  # noqa: E731
    spec_mod.train_tokenizer = mt_run_mod.train_tokenizer = counted
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("lmforge.data.prepare")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        if task == "lm":
            world, fingerprints = train_lm(RunConfig.parse(cfg), sample_prompt=None)["world_size"], []
        else:
            with process_group(torch.device("cpu")) as info:
                run = prepare_translation_run(RunConfig.parse(cfg))
            world, fingerprints = info.world_size, [run.src_tokenizer.fingerprint(), run.tgt_tokenizer.fingerprint()]
    finally:  # the single-process calls run in the test process itself
        spec_mod.train_tokenizer = mt_run_mod.train_tokenizer = real
        logger.removeHandler(handler)
    with open(out_file, "w") as f:
        json.dump({"world": world, "calls": len(calls), "fingerprints": fingerprints,
                   "cache": [m.split(" ")[0] for m in messages if "prepared data" in m or "tokenizing" in m]}, f)


def _two_ranks(target, args) -> None:
    """Runs ``target(*args(rank, env))`` in two processes joined as a gloo group, and checks both finish."""
    port = _free_port()
    # fork: the children reuse the imported modules (the parent ran with one intra-op thread, so no thread
    # pool is copied half-way); spawn would re-import torch twice.
    ctx = mp.get_context("fork")
    procs = []
    for rank in range(2):
        env = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port)}
        p = ctx.Process(target=target, args=args(rank, env))
        p.start()
        procs.append(p)
    for p in procs:
        p.join(timeout=120)
        if p.is_alive():
            p.terminate()
            pytest.fail("a DDP rank hung")
        assert p.exitcode == 0


def _prepared_by_two_ranks(task: str, cfg: dict, tmp_path) -> list[dict]:
    _two_ranks(_prepare, lambda rank, env: (task, cfg, tmp_path / f"{task}{rank}.json", env))
    return [json.loads((tmp_path / f"{task}{r}.json").read_text()) for r in range(2)]


def test_only_rank_zero_trains_the_tokenizers_and_writes_the_token_cache(tmp_path):
    lm, mt = _run_configs(tmp_path)
    for task, cfg in (("lm", lm), ("mt", mt)):  # one process: trains as before and shares nothing
        _prepare(task, cfg, tmp_path / f"{task}.json")
    single_lm, single_mt = (json.loads((tmp_path / f"{t}.json").read_text()) for t in ("lm", "mt"))
    assert single_lm["world"] == single_mt["world"] == 1
    assert single_lm["calls"] == 1 and single_lm["cache"] == ["start"] and single_mt["calls"] == 2

    lm["out_dir"], mt["out_dir"] = str(tmp_path / "lm2"), str(tmp_path / "mt2")
    lm["data"]["cache_dir"] = str(tmp_path / "prepared2")  # a fresh cache: rank 0 must prepare it again
    lm0, lm1 = _prepared_by_two_ranks("lm", lm, tmp_path)  # train_lm end to end under a 2-rank gloo group
    assert lm0["world"] == lm1["world"] == 2
    assert lm0["calls"] == 1 and lm1["calls"] == 0
    assert lm0["cache"] == ["start"] and lm1["cache"] == ["reusing"]  # rank 1 opened rank 0's shards
    assert len(list((tmp_path / "prepared2").glob("*/tokenizer.json"))) == 1
    mt0, mt1 = _prepared_by_two_ranks("mt", mt, tmp_path)  # both translation tokenizers (separate vocabularies)
    assert mt0["world"] == mt1["world"] == 2
    assert mt0["calls"] == 2 and mt1["calls"] == 0
    assert mt0["fingerprints"] == mt1["fingerprints"] == single_mt["fingerprints"]
