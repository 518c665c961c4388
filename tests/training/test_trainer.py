"""The training loop: overfitting, exact resumption, NaN steps, Ctrl-C, budgets, accumulation, run folders."""

import json
import math
import os
import signal

import pytest
import torch

from lmforge.models import build_model
from lmforge.training import checkpoint as ckpt
from lmforge.training.schedule import lr_factor
from lmforge.training.tasks import LMTask
from lmforge.training.trainer import Trainer, TrainingError


def _task(tokens, cfg, **kw):
    train, val = tokens
    return LMTask(train, val, cfg.block_size, cfg.train.batch_size, seed=cfg.train.seed, **kw)


def _model(cfg, seed=0):
    torch.manual_seed(seed)
    return build_model(cfg.model)


class OneBatch(LMTask):
    """Always the same batch, whose windows start at different phases of the toy language's period (so no two
    share a context and the batch can be memorised exactly)."""

    def next_batches(self):
        if not hasattr(self, "_fixed"):
            from lmforge.data.lm_dataset import gather_windows

            w = torch.from_numpy(gather_windows(self.train_tokens, [0, 17, 34, 51][:self.rows], self.block_size + 1))
            self._fixed = [(w[:, :-1].contiguous(), w[:, 1:].contiguous())]
        return self._fixed


@pytest.mark.parametrize("family", ["transformer", "lstm"])
def test_overfits_a_single_batch(tokens, tiny_config, family):
    cfg = tiny_config(family, max_steps=150, lr=1e-2, warmup_steps=5, eval_interval=1000, batch_size=4,
                      weight_decay=0.0, schedule="constant")
    train, val = tokens
    task = OneBatch(train, val, cfg.block_size, 4, seed=1)
    trainer = Trainer(cfg, _model(cfg), task)
    trainer.fit()
    losses = [h["loss"] for h in trainer.history]
    assert losses[0] > 3.0  # about ln(40) at the start
    assert losses[-1] < 0.05, losses[-10:]


def test_resume_after_interrupt_matches_an_uninterrupted_run(tokens, tiny_config, tmp_path):
    cfg = tiny_config(max_steps=16, eval_interval=4, out_dir=str(tmp_path / "a"), **{"schedule": "cosine"})
    cfg = cfg.with_overrides({"model.dropout": 0.1})  # dropout makes the RNG state matter
    full = Trainer(cfg, _model(cfg), _task(tokens, cfg), run_dir=tmp_path / "a")
    full.fit()

    cfg_b = cfg.with_overrides({"out_dir": str(tmp_path / "b")})

    def stop_at_7(ev):
        if ev["event"] == "step" and ev["step"] == 7:
            raise KeyboardInterrupt

    first = Trainer(cfg_b, _model(cfg_b), _task(tokens, cfg_b), run_dir=tmp_path / "b", progress=stop_at_7)
    summary = first.fit()
    assert summary["interrupted"] and summary["steps"] == 7
    assert ckpt.load_trainer_state(tmp_path / "b" / ckpt.STATE_FILE)["step"] == 7
    # a fresh process would build a fresh model (another init) and task; everything comes from the checkpoint
    second = Trainer(cfg_b, _model(cfg_b, seed=123), _task(tokens, cfg_b), run_dir=tmp_path / "b")
    second.fit(resume=True)
    resumed = [h["loss"] for h in first.history] + [h["loss"] for h in second.history]
    straight = [h["loss"] for h in full.history]
    assert [h["step"] for h in second.history] == list(range(8, 17))
    assert resumed == pytest.approx(straight, rel=1e-6, abs=1e-7)
    for p, q in zip(full.raw.parameters(), second.raw.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    steps = [r["step"] for r in map(json.loads, (tmp_path / "b" / "metrics.jsonl").read_text().splitlines())]
    assert steps == [4, 8, 12, 16]


def test_resume_refuses_mixed_checkpoint(tokens, tiny_config, tmp_path):
    cfg = tiny_config(max_steps=4, eval_interval=2, out_dir=str(tmp_path / "r"))
    Trainer(cfg, _model(cfg), _task(tokens, cfg), run_dir=tmp_path / "r").fit()
    other = _model(cfg, seed=5)
    ckpt.save_run(tmp_path / "r", cfg, other, None)  # new weights, old trainer state: a save cut in between
    from lmforge.errors import CheckpointError

    with pytest.raises(CheckpointError, match="different saves"):
        Trainer(cfg, _model(cfg), _task(tokens, cfg), run_dir=tmp_path / "r").fit(resume=True)


class NaNAt(LMTask):
    def __init__(self, *a, bad_steps=(), **k):
        super().__init__(*a, **k)
        self.bad, self.calls = set(bad_steps), 0

    def loss(self, model, batch):
        self.calls += 1
        loss = super().loss(model, batch)
        return loss * float("nan") if self.calls in self.bad else loss


def test_nan_steps_are_skipped_then_training_stops(tokens, tiny_config):
    cfg = tiny_config(max_steps=6, eval_interval=100)
    train, val = tokens
    events = []
    model = _model(cfg)
    snapshots = {}

    def watch(ev):
        events.append(ev)
        if ev["event"] == "step":
            snapshots[ev["step"]] = [p.detach().clone() for p in model.parameters()]

    task = NaNAt(train, val, cfg.block_size, cfg.train.batch_size, bad_steps={3, 4})
    trainer = Trainer(cfg, model, task, progress=watch)
    summary = trainer.fit()
    warnings = [e for e in events if e["event"] == "warning"]
    assert len(warnings) == 2 and "not finite" in warnings[0]["message"]
    assert summary["steps"] == 6 and all(math.isfinite(h["loss"]) for h in trainer.history)
    assert all(torch.isfinite(p).all() for p in model.parameters())

    cfg = tiny_config(max_steps=50, max_bad_steps=3)
    always = NaNAt(train, val, cfg.block_size, cfg.train.batch_size, bad_steps=set(range(3, 100)))
    with pytest.raises(TrainingError, match="3 steps in a row"):
        Trainer(cfg, _model(cfg), always).fit()


def test_sigint_saves_and_returns(tokens, tiny_config, tmp_path):
    cfg = tiny_config(max_steps=50, eval_interval=100, out_dir=str(tmp_path / "c"))

    def ctrl_c(ev):
        if ev["event"] == "step" and ev["step"] == 5:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C: the handler lets the step finish

    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a shell's background job
    summary = Trainer(cfg, _model(cfg), _task(tokens, cfg), run_dir=tmp_path / "c", progress=ctrl_c).fit()
    assert summary["interrupted"] and summary["stopped_by"] == "interrupted"
    assert summary["steps"] in (5, 6)
    assert ckpt.load_trainer_state(tmp_path / "c" / ckpt.STATE_FILE)["step"] == summary["steps"]
    assert signal.getsignal(signal.SIGINT) is before  # the handler was restored


def test_grad_accumulation_equals_the_full_batch(tokens, tiny_config):
    cfg1 = tiny_config(max_steps=5, eval_interval=100, batch_size=8)
    cfg2 = tiny_config(max_steps=5, eval_interval=100, batch_size=8, grad_accum=4)
    t1 = Trainer(cfg1, _model(cfg1), _task(tokens, cfg1))
    t1.fit()
    t2 = Trainer(cfg2, _model(cfg2), _task(tokens, cfg2))
    t2.fit()
    assert [h["loss"] for h in t2.history] == pytest.approx([h["loss"] for h in t1.history], rel=1e-5)


def test_budgets_and_schedule(tokens, tiny_config):
    cfg = tiny_config(max_steps=None, time_budget=0.6, eval_interval=1000, schedule="linear", warmup_steps=0,
                      min_lr_ratio=0.0)
    summary = Trainer(cfg, _model(cfg), _task(tokens, cfg)).fit()
    assert summary["stopped_by"] == "time_budget" and 0.6 <= summary["train_time"] < 5.0

    cfg = tiny_config(max_steps=None, epochs=0.5, eval_interval=1000)
    task = _task(tokens, cfg)
    summary = Trainer(cfg, _model(cfg), task).fit()
    assert summary["steps"] == math.ceil(0.5 * (len(tokens[0]) - 1) / (8 * 16))

    cfg = tiny_config(max_steps=10, warmup_steps=3, schedule="cosine", min_lr_ratio=0.1, lr=1e-2, eval_interval=1000)
    trainer = Trainer(cfg, _model(cfg), _task(tokens, cfg))
    trainer.fit()
    want = [1e-2 * lr_factor("cosine", s, (s - 3) / 7, 3, 0.1) for s in range(10)]
    assert [h["lr"] for h in trainer.history] == pytest.approx(want)


def test_batch_must_divide(tokens, tiny_config):
    from lmforge.errors import ConfigError

    cfg = tiny_config(batch_size=6, grad_accum=4)
    with pytest.raises(ConfigError, match="divisible"):
        Trainer(cfg, _model(cfg), _task(tokens, cfg)).fit()


def test_tensorboard_logs_or_says_how_to_install(tokens, tiny_config, tmp_path):
    from lmforge.errors import ConfigError

    cfg = tiny_config(max_steps=2, eval_interval=1, tensorboard=True, out_dir=str(tmp_path / "tb"))
    trainer = Trainer(cfg, _model(cfg), _task(tokens, cfg), run_dir=tmp_path / "tb")
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="pip install tensorboard"):
            trainer.fit()
    else:
        trainer.fit()
        assert list((tmp_path / "tb" / "tensorboard").glob("events.out.tfevents.*"))
