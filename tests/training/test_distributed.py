"""Two CPU processes under DDP (gloo) follow a single process with the same global batch."""

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
    port = _free_port()
    # fork: the children reuse the imported modules (the parent ran with one intra-op thread, so no thread
    # pool is copied half-way); spawn would re-import torch twice.
    ctx = mp.get_context("fork")
    procs = []
    for rank in range(2):
        env = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port)}
        p = ctx.Process(target=_train, args=(cfg.to_dict(), train, val, tmp_path / f"rank{rank}.json", env))
        p.start()
        procs.append(p)
    for p in procs:
        p.join(timeout=120)
        if p.is_alive():
            p.terminate()
            pytest.fail("a DDP rank hung")
        assert p.exitcode == 0
    single = json.loads((tmp_path / "single.json").read_text())
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["world"] == 2 and single["world"] == 1
    assert len(ranks[0]["losses"]) == 6
    # the logged loss is the mean over the global batch, on every rank
    assert ranks[0]["losses"] == pytest.approx(single["losses"], rel=1e-5)
    assert ranks[1]["losses"] == pytest.approx(single["losses"], rel=1e-5)
    for a, b, c in zip(single["w"], ranks[0]["w"], ranks[1]["w"]):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-6) and b == c
