"""The ``train`` section of a spec."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from diffcore.limits import MAX_STEPS

MAX_BATCH_SIZE = 1 << 24
"""Most samples in one optimiser step (16 Mi): far beyond any batch that fits in memory, so a typo
is refused at once instead of allocating terabytes."""
MAX_CONSECUTIVE_SKIPS = 100
"""With ``nonfinite: skip``, the run stops anyway after this many non-finite steps in a row: the
weights or the data are broken, not one unlucky batch."""


class TrainConfig(BaseModel):
    """Optimisation settings (the ``train`` section of a training spec)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True, strict=True)

    steps: int = Field(2000, gt=0, le=MAX_STEPS, description=f"Optimiser steps (at most {MAX_STEPS}).")
    batch_size: int = Field(256, gt=0, le=MAX_BATCH_SIZE,
                            description=f"Samples per step, over all processes (at most {MAX_BATCH_SIZE}).")
    lr: float = Field(2e-3, gt=0, description="Peak learning rate of AdamW.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup: int = Field(100, ge=0, le=MAX_STEPS, description="Steps of linear learning-rate warm-up.")
    lr_decay: Literal["constant", "cosine"] = Field(
        "constant", description="After the warm-up: keep lr, or decay it along half a cosine towards 0 "
        "at the last step.")
    grad_clip: float | None = Field(1.0, gt=0, description="Max global gradient norm; null: no clipping.")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="Decay of the EMA of the weights.")
    seed: int = Field(0, ge=0, lt=2**64, description="Seed of batches, times and noise (below 2**64).")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="Autocast precision of forward passes: fp32 (none); bf16 (CPU or CUDA); fp16 (CUDA "
        "only, with dynamic gradient scaling). Weights, optimiser and EMA stay in fp32.")
    label_dropout: float = Field(
        0.0, ge=0, lt=1, description="Probability of replacing a training label by the model's null label, so "
        "one network learns the conditional and the unconditional score: what classifier-free guidance needs "
        "(Ho & Salimans 2022 use 0.1 to 0.2). Class-conditional models only.")
    nonfinite: Literal["stop", "skip"] = Field(
        "stop", description="A step whose loss or global gradient norm is NaN or Inf: stop the run with an "
        "error naming the step (the last checkpoint stays intact), or skip it (no optimiser, schedule or "
        f"EMA update; counted in the summary; the run still stops after {MAX_CONSECUTIVE_SKIPS} in a row).")
