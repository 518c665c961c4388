"""Training settings (torch-free)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import model_validator

from pydantic import Field

from lmforge.config.base import StrictModel

__all__ = ["TrainConfig"]

Schedule = Literal["cosine", "linear", "constant", "wsd", "inverse_sqrt"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Device = Literal["auto", "cpu", "cuda", "mps"]


class TrainConfig(StrictModel):
    """Optimiser, schedule, budget, precision and evaluation settings."""

    batch_size: int = Field(32, ge=1, description="global batch size in sequences (split across ranks)")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimiser step")
    lr: float = Field(1e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0, description="the schedule decays to lr * min_lr_ratio")
    warmup_steps: int = Field(100, ge=0)
    schedule: Schedule = "cosine"
    decay_fraction: float = Field(0.2, gt=0.0, le=1.0, description="wsd: the final fraction of steps that decays")
    weight_decay: float = Field(0.1, ge=0.0, description="applied to matrices only, not to biases, norms or 1-D tensors")
    beta1: float = Field(0.9, ge=0.0, lt=1.0)
    beta2: float = Field(0.99, ge=0.0, lt=1.0)
    grad_clip: float = Field(1.0, ge=0.0, description="0 disables clipping")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    max_steps: Optional[int] = Field(None, ge=1)
    epochs: Optional[float] = Field(None, gt=0, description="passes over the training tokens (an alternative to max_steps)")
    time_budget: Optional[float] = Field(None, gt=0, description="stop after this many seconds of training, then evaluate")
    precision: Precision = "auto"
    compile: bool = False
    device: Device = "auto"
    seed: int = 1337
    eval_interval: int = Field(250, ge=1, description="steps between evaluations")
    eval_iters: int = Field(20, ge=1, description="batches per periodic evaluation (at most eval_tokens tokens)")
    eval_tokens: int = Field(131072, ge=1, description="the periodic and final evaluation score at most this many validation tokens, in windows spread evenly over the split (all of it when smaller)")
    eval_share: float = Field(0.1, ge=0.0, description="an evaluation also scores at most this share of the tokens trained so far (at least one batch), so a short run's final evaluation stays a small part of it (scoring a token costs about half of training on it); 0: no such cap")
    log_interval: int = Field(10, ge=1)
    sample_tokens: int = Field(300, ge=0, description="length of the sample printed after training")
    max_bad_steps: int = Field(10, ge=1, description="stop after this many consecutive NaN/inf losses")
    tensorboard: bool = False
    lora_rank: int = Field(0, ge=0, description="> 0 trains LoRA adapters of this rank on a frozen model (arXiv:2106.09685)")
    lora_alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator: updates are multiplied by lora_alpha / lora_rank")
    lora_targets: list[str] = Field(default_factory=lambda: ["qkv", "o_proj", "w_in", "w_out"],
                                    description="LoRA: the linear layers to adapt (qkv, o_proj, w_in, w_out, lm_head)")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LoRA: dropout on the adapters' input")

    @model_validator(mode="after")
    def _check_lora(self) -> "TrainConfig":
        if not self.lora_targets:
            raise ValueError("train.lora_targets must name at least one layer")
        return self
