"""The training loop, shared by every model family and task.

One optimiser step: the task's micro-batches for this rank -> forward under autocast -> backward (DDP syncs
gradients on the last micro-batch only) -> unscale -> clip -> NaN/inf check -> AdamW step -> schedule. Every
``eval_interval`` steps (and at the end) it evaluates a fixed validation subset, appends a line to
``metrics.jsonl``, saves the last checkpoint and, when the loss improved, ``best.safetensors``. At the end it
scores the whole validation split, writes ``summary.json`` and ``loss.png``.

Budgets: ``max_steps``, ``epochs`` (converted to steps) and ``time_budget`` (seconds of training, periodic
evaluation and saving excluded); the first one reached stops training. The schedule's progress is the larger
of the step fraction and the time fraction, so with only a time budget the decay ends when the time does.

Faults: the first Ctrl-C finishes the step in flight, saves and returns (a second one aborts at once); a step
whose loss or gradient norm is NaN/inf is skipped with a warning, and ``max_bad_steps`` of them in a row stop
training with :class:`TrainingError`. Library code never prints: progress goes to the ``progress`` callback.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from lmforge.config import RunConfig
from lmforge.errors import CheckpointError, ConfigError, LMForgeError
from lmforge.models.lora import load_weights_with_adapters, lora_from_config
from lmforge.models.weights import count_parameters
from lmforge.training import checkpoint as ckpt
from lmforge.training.distributed import all_reduce_sum, cleanup, DistInfo, init_distributed, wrap_ddp
from lmforge.training.metrics_log import MetricsLog
from lmforge.training.optim import build_optimizer
from lmforge.training.plots import plot_losses
from lmforge.training.precision import resolve_device, resolve_precision
from lmforge.training.schedule import LRSchedule
from lmforge.training.tasks import epochs_to_steps, Task
from lmforge.utils.files import atomic_write_json

__all__ = ["Trainer", "TrainingError", "count_parameters"]

log = logging.getLogger(__name__)

Progress = Callable[[dict], None]


class TrainingError(LMForgeError):
    """Training cannot go on (for example, the loss keeps being NaN); the message says what to change."""


class _Interrupt:
    """Turns the first SIGINT into a flag checked between steps; a second SIGINT raises at once."""

    def __init__(self) -> None:
        self.flag = False
        self._old: Any = None

    def __enter__(self) -> "_Interrupt":
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.flag:
            raise KeyboardInterrupt
        self.flag = True

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


class Trainer:
    """Trains ``model`` on ``task`` as ``config.train`` says.

    Args:
        config: the full run config (``config.train`` drives the loop; the whole config is saved).
        model: the model (a plain ``nn.Module``; the trainer moves, compiles and wraps it).
        task: a :class:`~lmforge.training.tasks.Task`.
        run_dir: the run folder; ``None`` trains without writing anything.
        tokenizers: what :func:`~lmforge.training.checkpoint.save_run` writes beside the weights.
        progress: a callback receiving event dicts (``event`` is ``start``, ``step``, ``eval``, ``warning`` or
            ``end``); called on rank 0 only.
        device: overrides ``config.train.device``.

    Example:
        >>> summary = Trainer(cfg, model, LMTask(data.train, data.val, 64, 32), run_dir="runs/x").fit()  # doctest: +SKIP
    """

    def __init__(self, config: RunConfig, model: torch.nn.Module, task: Task, *, run_dir: str | Path | None = None,
                 tokenizers: Any = None, progress: Optional[Progress] = None,
                 device: str | torch.device | None = None) -> None:
        self.config = config
        self.tc = config.train
        self.model = model
        self.task = task
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.tokenizers = tokenizers
        self.progress = progress
        self.device = torch.device(device) if device is not None else resolve_device(self.tc.device)
        self.dist = DistInfo()
        self.history: list[dict] = []  # per-step (step, loss, lr) on rank 0, for tests and callers
        self._interrupt = _Interrupt()

    # ------------------------------------------------------------------------------------------ helpers
    def _emit(self, event: str, **info: Any) -> None:
        if self.progress is not None and self.dist.is_main:
            try:
                self.progress({"event": event, **info})
            except KeyboardInterrupt:  # a Ctrl-C that landed in the callback stops like any other
                self._interrupt.flag = True

    def _budget(self) -> Optional[int]:
        tc = self.tc
        max_steps = tc.max_steps
        if tc.epochs is not None:
            by_epochs = epochs_to_steps(tc.epochs, self.task)
            max_steps = min(max_steps, by_epochs) if max_steps else by_epochs
        if max_steps is None and tc.time_budget is None:
            max_steps = epochs_to_steps(1.0, self.task)
            log.info("no max_steps, epochs or time_budget given: training for one epoch (%d steps)", max_steps)
        return max_steps

    def _progress_fraction(self, step: int, elapsed: float) -> float:
        p = 0.0
        if self.max_steps:
            w = self.tc.warmup_steps
            p = (step - w) / (self.max_steps - w) if self.max_steps > w else step / self.max_steps
        if self.tc.time_budget:
            p = max(p, elapsed / self.tc.time_budget)
        return p

    def _state(self) -> dict:
        return {
            "step": self.step, "elapsed": self.elapsed, "wall": self.wall_before + (time.perf_counter() - self.t_start),
            "tokens_seen": self.tokens_seen, "best_val_loss": self.best_val, "best_step": self.best_step,
            "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": ckpt.capture_rng_state(), "task": self.task.state_dict(),
            "family": self.config.model.family, "world_size": self.dist.world_size,
        }

    def _save(self) -> None:
        if self.run_dir is None or not self.dist.is_main:
            return
        ckpt.save_run(self.run_dir, self.config, self.raw, self.tokenizers, trainer_state=self._state())

    def _restore(self) -> None:
        if self.run_dir is None:
            raise ConfigError("resuming needs a run folder; pass run_dir (or --out / --resume DIR)")
        state = ckpt.load_trainer_state(self.run_dir / ckpt.STATE_FILE)
        weights = self.run_dir / ckpt.WEIGHTS_FILE
        if not weights.is_file():
            raise CheckpointError(f"{self.run_dir} has no {ckpt.WEIGHTS_FILE}; it cannot be resumed (train it again)")
        if state.get("weights_sha256") != ckpt.file_sha256(weights):
            raise CheckpointError(
                f"{weights.name} and {ckpt.STATE_FILE} in {self.run_dir} come from different saves (a save was "
                "interrupted); load the weights with `lmforge generate`/`eval`, or train again without --resume"
            )
        if state.get("family") != self.config.model.family:
            raise CheckpointError(
                f"{self.run_dir} holds a {state.get('family')!r} run but the config asks for {self.config.model.family!r}; "
                "resume with the run's own config.yaml"
            )
        load_weights_with_adapters(self.raw, weights)  # a LoRA run: frozen base + adapters
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, RuntimeError) as err:
            fix = ckpt.optimizer_mismatch_fix(self.raw, weights)
            raise CheckpointError(f"the optimizer state in {self.run_dir} does not fit this model ({err}); {fix}") from None
        self.scaler.load_state_dict(state["scaler"])
        self.schedule.load_state_dict(state.get("schedule", {}))
        self.task.load_state_dict(state["task"])
        ckpt.restore_rng_state(state["rng"])
        self.step = int(state["step"])
        self.elapsed = float(state["elapsed"])
        self.wall_before = float(state.get("wall", 0.0))
        self.tokens_seen = int(state.get("tokens_seen", 0))
        self.best_val = float(state.get("best_val_loss", math.inf))
        self.best_step = state.get("best_step")
        log.info("resumed %s at step %d", self.run_dir, self.step)

    def _eta(self, step_time: float) -> Optional[float]:
        etas = []
        if self.max_steps:
            etas.append(max(0, self.max_steps - self.step) * step_time)
        if self.tc.time_budget:
            etas.append(max(0.0, self.tc.time_budget - self.elapsed))
        return min(etas) if etas else None

    # ------------------------------------------------------------------------------------------ the loop
    def fit(self, resume: bool = False) -> dict:
        """Trains until a budget is reached (or Ctrl-C), then evaluates and writes the run folder.

        Args:
            resume: continue from ``run_dir``'s ``trainer_state.pt`` and ``model.safetensors``.

        Returns:
            The summary dict (also written to ``summary.json``): ``val_loss``, ``val_ppl``, ``val_bits_per_char``,
            ``val_bits_per_byte``, ``train_tokens_per_s``, ``parameters``, ``wall_time`` and more.

        Raises:
            TrainingError: ``max_bad_steps`` NaN/inf steps in a row.
            CheckpointError: a run that cannot be resumed.
        """
        self.dist = init_distributed(self.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        try:
            return self._fit(resume)
        finally:
            cleanup(self.dist)

    def _setup(self, resume: bool) -> tuple[Any, list, Optional[MetricsLog], Any, int]:
        """Optimizer, schedule, precision and budget; restores a resumed run. Returns the (wrapped) model, the
        trainable parameters, the metrics log, the TensorBoard writer and the parameter count."""
        tc = self.tc
        self.raw = lora_from_config(ckpt.unwrap_model(self.model), tc).to(self.device)  # train.lora_rank > 0: LoRA
        self.raw.train()
        self.task.setup(device=self.device, rank=self.dist.rank, world_size=self.dist.world_size, grad_accum=tc.grad_accum)
        self.precision = resolve_precision(tc.precision, self.device)
        self.optimizer = build_optimizer(self.raw, tc.lr, tc.weight_decay, (tc.beta1, tc.beta2), self.device.type)
        self.schedule = LRSchedule(self.optimizer, tc.schedule, tc.warmup_steps, tc.min_lr_ratio, tc.decay_fraction,
                                   tc.warmup_fraction)
        self.scaler = self.precision.grad_scaler()
        self.max_steps = self._budget()
        self.step, self.elapsed, self.wall_before, self.tokens_seen = 0, 0.0, 0.0, 0
        self.best_val, self.best_step = math.inf, None
        self.t_start = time.perf_counter()
        if resume:
            self._restore()
        elif self.run_dir is not None and self.dist.is_main:
            for stale in (ckpt.BEST_WEIGHTS_FILE, ckpt.SUMMARY_FILE, "loss.png"):  # from an earlier run here
                (self.run_dir / stale).unlink(missing_ok=True)
        model = wrap_ddp(self.raw, self.dist, self.device)
        if tc.compile:
            model = torch.compile(model)
        params = [p for p in self.raw.parameters() if p.requires_grad]
        metrics = MetricsLog(self.run_dir / "metrics.jsonl", resume_step=self.step if resume else None) \
            if self.run_dir is not None and self.dist.is_main else None
        tb = self._tensorboard()
        n_params = count_parameters(self.raw)
        self._emit("start", step=self.step, max_steps=self.max_steps, time_budget=tc.time_budget, parameters=n_params,
                   device=str(self.device), precision=self.precision.name, world_size=self.dist.world_size)
        return model, params, metrics, tb, n_params

    def _fit(self, resume: bool) -> dict:
        tc = self.tc
        model, params, metrics, tb, n_params = self._setup(resume)

        bad_steps, loss_acc, loss_n, step_time, stopped_by = 0, 0.0, 0, None, None
        last_eval: dict = {}
        done = self._finished()
        with self._interrupt as interrupt:
            while not done:
                t0 = time.perf_counter()
                lr = self.schedule.set(self.step, self._progress_fraction(self.step, self.elapsed))
                batches = self.task.next_batches()
                loss_sum, n_tokens = self._accumulate(model, batches)
                self.scaler.unscale_(self.optimizer)
                gnorm = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip if tc.grad_clip > 0 else math.inf)
                flags = torch.stack([loss_sum / len(batches),
                                     (~torch.isfinite(loss_sum)).float(),
                                     torch.tensor(float(interrupt.flag), device=self.device),
                                     torch.tensor(float(n_tokens), device=self.device)])
                all_reduce_sum(flags, self.dist)
                loss_val = flags[0].item() / self.dist.world_size
                bad = flags[1].item() > 0 or (not self.scaler.is_enabled() and not math.isfinite(gnorm.item()))
                if bad:
                    self.optimizer.zero_grad(set_to_none=True)
                    self.scaler.update()
                    bad_steps += 1
                    msg = f"step {self.step + 1}: loss {loss_val} or gradient norm is not finite; skipped the step"
                    log.warning(msg)
                    self._emit("warning", message=msg, step=self.step)
                    if bad_steps >= tc.max_bad_steps:
                        raise TrainingError(
                            f"the loss was NaN/inf for {bad_steps} steps in a row (train.max_bad_steps); lower the learning "
                            f"rate (now {tc.lr:g}), keep gradient clipping on, or use --precision fp32/bf16 instead of fp16"
                        )
                else:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    self.optimizer.zero_grad(set_to_none=True)
                    bad_steps = 0
                    self.step += 1
                    self.tokens_seen += int(flags[3].item())
                    loss_acc += loss_val
                    loss_n += 1
                dt = time.perf_counter() - t0
                self.elapsed += dt
                step_time = dt if step_time is None else 0.9 * step_time + 0.1 * dt
                if not bad:
                    self.history.append({"step": self.step, "loss": loss_val, "lr": lr})
                    self._emit("step", step=self.step, max_steps=self.max_steps, loss=loss_val, lr=lr,
                               tokens_per_s=flags[3].item() / dt if dt > 0 else 0.0, elapsed=self.elapsed,
                               time_budget=tc.time_budget, eta=self._eta(step_time))
                    if tb is not None:
                        tb.add_scalar("train/loss", loss_val, self.step)
                        tb.add_scalar("train/lr", lr, self.step)
                done = self._finished()
                interrupted = flags[2].item() > 0 or (not self.dist.enabled and interrupt.flag)
                if done or interrupted or (not bad and self.step % tc.eval_interval == 0):
                    if self.dist.is_main and not interrupted:
                        last_eval = self._periodic_eval(metrics, tb, loss_acc / max(1, loss_n), lr)
                        loss_acc, loss_n = 0.0, 0
                    self._save()
                if interrupted:
                    stopped_by = "interrupted"
                    break
        if stopped_by is None:
            stopped_by = "max_steps" if self.max_steps and self.step >= self.max_steps else "time_budget"
        return self._finish(stopped_by, n_params, last_eval, metrics, tb)

    def _accumulate(self, model: Any, batches: list) -> tuple[torch.Tensor, int]:
        """Forward and backward over a step's micro-batches (gradients synchronised on the last one only);
        returns the summed loss and the tokens seen."""
        loss_sum = torch.zeros((), device=self.device)
        n_tokens = 0
        for i, batch in enumerate(batches):
            sync = i == len(batches) - 1 or not self.dist.enabled
            ctx = contextlib.nullcontext() if sync else model.no_sync()
            with ctx:
                with self.precision.autocast():
                    loss = self.task.loss(model, batch)
                self.scaler.scale(loss / len(batches)).backward()
            loss_sum += loss.detach().float()
            n_tokens += self.task.batch_tokens(batch)
        return loss_sum, n_tokens

    def _finished(self) -> bool:
        if self.max_steps is not None and self.step >= self.max_steps:
            return True
        return self.tc.time_budget is not None and self.elapsed >= self.tc.time_budget

    def _periodic_eval(self, metrics: Optional[MetricsLog], tb: Any, train_loss: float, lr: float) -> dict:
        with self.precision.autocast():
            figs = self.task.evaluate(self.raw, max_batches=self.tc.eval_iters)
        val = float(figs["loss"])
        improved = val < self.best_val
        if improved:
            self.best_val, self.best_step = val, self.step
            if self.run_dir is not None:
                ckpt.save_run(self.run_dir, self.config, self.raw, None, weights_file=ckpt.BEST_WEIGHTS_FILE)
        record = {"step": self.step, "elapsed": round(self.elapsed, 3),
                  "wall": round(self.wall_before + time.perf_counter() - self.t_start, 3),
                  "tokens": self.tokens_seen, "lr": lr, "train_loss": train_loss, "val_loss": val,
                  **{f"val_{k}": v for k, v in figs.items() if k not in ("loss", "tokens", "tokens_per_s")}}
        if metrics is not None:
            metrics.write(record)
        if tb is not None:
            tb.add_scalar("val/loss", val, self.step)
        self._emit("eval", **record, best=improved)
        return record

    def _tensorboard(self) -> Any:
        if not self.tc.tensorboard or self.run_dir is None or not self.dist.is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("train.tensorboard needs the tensorboard package; pip install tensorboard, "
                              "or set train.tensorboard=false") from None
        return SummaryWriter(str(self.run_dir / "tensorboard"))

    def _finish(self, stopped_by: str, n_params: int, last_eval: dict, metrics: Optional[MetricsLog], tb: Any) -> dict:
        summary: dict[str, Any] = {
            "family": self.config.model.family, "task": self.config.task, "parameters": n_params,  # LoRA: + adapters
            "trainable_parameters": count_parameters(self.raw, trainable_only=True),
            "steps": self.step, "tokens_seen": self.tokens_seen, "train_time": round(self.elapsed, 3),
            "train_tokens_per_s": self.tokens_seen / self.elapsed if self.elapsed > 0 else 0.0,
            "best_val_loss": self.best_val if math.isfinite(self.best_val) else None, "best_step": self.best_step,
            "stopped_by": stopped_by, "interrupted": stopped_by == "interrupted", "device": str(self.device),
            "precision": self.precision.name, "world_size": self.dist.world_size}
        if not self.dist.is_main:
            return summary
        if stopped_by != "interrupted":
            with self.precision.autocast():  # (the clock is read before the evaluation starts)
                t_eval, final = time.perf_counter(), self.task.evaluate(self.raw, max_batches=None)
            summary.update({f"val_{ {'perplexity': 'ppl'}.get(k, k)}": v for k, v in final.items()})
            summary["final_eval_time"] = round(time.perf_counter() - t_eval, 3)
        else:
            summary.update({"val_loss": last_eval.get("val_loss")})
        summary["wall_time"] = round(self.wall_before + time.perf_counter() - self.t_start, 3)
        if tb is not None:
            tb.close()
        if self.run_dir is not None:
            atomic_write_json(self.run_dir / ckpt.SUMMARY_FILE, summary)
            if metrics is not None:
                try:
                    plot_losses(metrics.records(), self.run_dir / "loss.png", title=f"{self.config.model.family}")
                except Exception as err:  # a figure must never lose a finished run
                    log.warning("could not draw loss.png: %s", err)
        self._emit("end", summary=summary)
        return summary
