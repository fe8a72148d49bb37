"""The ``train`` section of a spec."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TrainConfig(BaseModel):
    """Optimisation settings (the ``train`` section of a training spec)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True, strict=True)

    steps: int = Field(2000, gt=0, description="Optimiser steps.")
    batch_size: int = Field(256, gt=0, description="Samples per step.")
    lr: float = Field(2e-3, gt=0, description="Peak learning rate of AdamW.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup: int = Field(100, ge=0, description="Steps of linear learning-rate warm-up.")
    lr_decay: Literal["constant", "cosine"] = Field(
        "constant", description="After the warm-up: keep lr, or decay it along half a cosine towards 0 "
        "at the last step.")
    grad_clip: float | None = Field(1.0, gt=0, description="Max global gradient norm; null: no clipping.")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="Decay of the EMA of the weights.")
    seed: int = Field(0, ge=0, description="Seed of batches, times and noise.")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="Autocast precision of forward passes: fp32 (none); bf16 (CPU or CUDA); fp16 (CUDA "
        "only, with dynamic gradient scaling). Weights, optimiser and EMA stay in fp32.")
