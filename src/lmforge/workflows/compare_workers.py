"""The per-model work of ``lmforge compare``: train one model, or load its run and measure it.

:func:`run_job` runs :func:`train_worker` or :func:`measure_worker` in a fresh process (``spawn``) when isolated,
so that one phase's or one model's peak memory never leaks into another's figure (see
:mod:`lmforge.workflows.compare`, which builds the jobs). A job is a plain, picklable dict.
"""

from __future__ import annotations

import time
import logging
import statistics
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable

from lmforge.config import RunConfig
from lmforge.data import prepare_lm_data, read_documents, split_documents
from lmforge.evaluation import metrics as M
from lmforge.evaluation.metrics import _sync, PeakMemory, time_call
from lmforge.inference.generation import generate
from lmforge.inference.sampling import SamplingParams
from lmforge.models import build_model
from lmforge.tokenizers import load_tokenizer
from lmforge.models.run_folder import load_run
from lmforge.training.precision import resolve_device
from lmforge.training.tasks import LMTask
from lmforge.training.trainer import Trainer
import torch
import numpy as np

__all__ = ["train_worker", "measure_worker", "run_job", "capped_warmup"]

log = logging.getLogger(__name__)


def _setup_worker(job: dict) -> None:
    """Logging and thread count of a worker (a fresh process when isolated)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=job["log_level"], format="%(message)s")
    if job.get("threads"):
        torch.set_num_threads(job["threads"])


def _load_data(job: dict) -> tuple[Any, Any, Any, dict]:
    """The shared tokenizer, the token cache, and the (possibly shortened) validation split with its lengths."""
    tok = load_tokenizer(job["tokenizer_path"])
    train_docs, val_docs = split_documents(read_documents(job["data"]), val_fraction=job["val_fraction"])
    data = prepare_lm_data(train_docs, val_docs, tok, job["cache_dir"])
    val, meta = data.val, data.meta["val"]
    if job.get("eval_tokens") and job["eval_tokens"] + 1 < len(val):
        val = np.asarray(val[: job["eval_tokens"] + 1])
        text = tok.decode(val.tolist(), skip_special=True)  # the text these tokens stand for
        meta = {"tokens": len(val), "chars": len(text), "bytes": len(text.encode("utf-8"))}
    return tok, data, val, meta


def _calibrate_step_time(model: Any, task: Any, device: Any, steps: int = 3) -> float:
    """Median seconds of a forward + backward pass on a training batch (weights are not changed)."""
    model.to(device).train()
    task.setup(device=device, rank=0, world_size=1, grad_accum=1)
    x, y = task.next_batches()[0]
    times = []
    for _ in range(steps + 1):
        _sync(device)
        t0 = time.perf_counter()
        _, loss = model(x, y)
        loss.backward()
        _sync(device)
        times.append(time.perf_counter() - t0)
    model.zero_grad(set_to_none=True)
    return statistics.median(times[1:])


def capped_warmup(configured: int, expected_steps: int) -> int:
    """The configured warm-up, capped at 5% of the steps the budget allows, so that a short budget is not spent
    mostly warming up (each model gets the same fraction)."""
    return min(configured, max(1, expected_steps // 20))


def train_worker(job: dict) -> dict:
    """Trains one model (in its own process when isolated) and returns its training figures and curve."""
    _setup_worker(job)
    name = job["name"]
    config = RunConfig.parse(job["config"])
    device = resolve_device(config.train.device)
    tok, data, val, val_meta = _load_data(job)
    torch.manual_seed(config.train.seed)
    model = build_model(config.model)
    curve: list[dict] = []

    def progress(event: dict) -> None:
        if event.get("event") == "eval":
            curve.append({"step": event["step"], "tokens": event["tokens"], "time_s": event["elapsed"],
                          "wall_s": event["wall"], "loss": event["val_loss"]})
            log.info("%s: step %d, %.0f s, %d tokens, val loss %.4f", name, event["step"], event["elapsed"],
                     event["tokens"], event["val_loss"])

    with PeakMemory(device) as mem:
        task = LMTask(data.train, val, config.block_size, config.train.batch_size, seed=config.train.seed,
                      val_meta=val_meta)
        if config.train.max_steps is None:  # a time budget: spread the evaluations over the expected steps
            step_s = _calibrate_step_time(model, task, device)
            expected = max(1, int(config.train.time_budget / max(step_s, 1e-6)))
            config = config.with_overrides({"train.eval_interval": max(1, expected // job["evals"]),
                                            "train.warmup_steps": capped_warmup(config.train.warmup_steps, expected)})
            log.info("%s: about %.3f s per step, so about %d steps; warm-up %d, evaluating every %d", name, step_s,
                     expected, config.train.warmup_steps, config.train.eval_interval)
            task = LMTask(data.train, val, config.block_size, config.train.batch_size, seed=config.train.seed,
                          val_meta=val_meta)
        torch.manual_seed(config.train.seed)  # calibration drew dropout masks; the weights are untouched
        summary = Trainer(config, model, task, run_dir=job["run_dir"], tokenizers=tok, progress=progress,
                          device=device).fit()
    return {"summary": summary, "curve": curve, "memory": mem.to_dict(), "config": config.to_dict()}


def measure_worker(job: dict) -> dict:
    """Loads a trained run (in its own process when isolated) and measures latency, generation and memory."""
    _setup_worker(job)
    device = resolve_device(job["device"])
    out: dict[str, Any] = {}
    with M.PeakMemory(device) as mem:
        run = load_run(job["run_dir"], device=device)
        model, tok = run.model, run.tokenizer
        vocab = run.config.model.vocab_size
        block = job["block_size"]
        for b in (1, 32):
            out[f"latency_b{b}_ms"] = _guard(lambda: M.forward_latency(model, b, block, vocab, job["repeats"],
                                                                       job["warmup"]).median_s * 1000)
        out["decode_ms_per_token"] = _guard(lambda: [t * 1000 for t in M.decode_step_times(
            model, job["decode_length"], batch_size=1, repeats=max(3, min(job["repeats"], 5)), start_id=tok.bos_id)])
        for b in (1, 32):
            out[f"gen_tokens_per_s_b{b}"] = _guard(lambda: _generation_speed(model, tok, b, job, device))
        out["samples"] = _guard(lambda: _samples(model, tok, job))
        out["params"] = M.parameter_split(model, vocab)
    out["memory"] = mem.to_dict()
    out["disk_bytes"] = M.size_on_disk(Path(job["run_dir"]) / "model.safetensors")
    return out


def _guard(fn: Callable[[], Any]) -> Any:
    """``fn()``, or ``{"unavailable": why}`` when the machine cannot run it (out of memory, missing module)."""
    try:
        return fn()
    except (RuntimeError, ImportError, MemoryError) as err:
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        log.warning("measurement failed: %s", first)
        return {"unavailable": f"{type(err).__name__}: {first}"}


def _generation_speed(model: Any, tok: Any, batch: int, job: dict, device: Any) -> float:
    params = SamplingParams(temperature=1.0, max_new_tokens=job["gen_tokens"], ignore_eos=True, seed=job["seed"])
    prompts = [job["prompts"][0]] * batch
    produced: list[int] = []

    def once() -> None:
        produced.append(sum(c.completion_tokens for c in generate(model, tok, prompts, params)))

    t = time_call(once, repeats=max(1, job["repeats"] // 3), warmup=1, device=device)
    return produced[-1] / t.median_s


def _samples(model: Any, tok: Any, job: dict) -> list[dict]:
    params = SamplingParams(temperature=0.8, top_k=None, max_new_tokens=job["sample_tokens"], seed=job["seed"])
    done = generate(model, tok, job["prompts"], params)
    return [{"prompt": p, "completion": c.text} for p, c in zip(job["prompts"], done)]


def run_job(fn: Callable[[dict], dict], job: dict, isolate: bool) -> dict:
    if not isolate:
        return fn(job)
    # A fresh interpreter per phase: "spawn", not "fork", so no torch threads or allocator state is inherited.
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, job).result()
