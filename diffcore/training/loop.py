"""The training loop: AdamW with linear warm-up, gradient clipping and an EMA of the weights.

Deterministic given the seed: batches are drawn with a seeded generator and every random number an
objective uses comes from counter-based noise keyed by ``(seed, step * batch_size + slot)``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor
from torch.optim.swa_utils import AveragedModel

from diffcore.model import ScoreModel
from diffcore.noise import NoiseSource
from diffcore.objective import Objective
from diffcore.process import ForwardProcess
from diffcore.sampler import check_compatible


class TrainConfig(BaseModel):
    """Optimisation settings (the ``train`` section of a training spec)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True, strict=True)

    steps: int = Field(2000, gt=0, description="Optimiser steps.")
    batch_size: int = Field(256, gt=0, description="Samples per step.")
    lr: float = Field(2e-3, gt=0, description="Peak learning rate of AdamW.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    warmup: int = Field(100, ge=0, description="Steps of linear learning-rate warm-up.")
    grad_clip: float | None = Field(1.0, gt=0, description="Max global gradient norm; null: no clipping.")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="Decay of the EMA of the weights.")
    seed: int = Field(0, ge=0, description="Seed of batches, times and noise.")


@dataclass
class TrainResult:
    """The trained model, its EMA copy and the loss of every step."""

    model: ScoreModel
    ema: ScoreModel
    losses: list[float] = field(default_factory=list)


def _ema_with_warmup(decay: float) -> Callable[[Tensor, Tensor, Tensor | int], Tensor]:
    """EMA update whose decay ramps up as ``min(decay, (1 + n) / (10 + n))`` over the first updates,
    so the average does not remember the initial weights (the usual EMA warm-up)."""

    def update(averaged: Tensor, current: Tensor, num_averaged: Tensor | int) -> Tensor:
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        return d * averaged + (1.0 - d) * current

    return update


def fit(model: ScoreModel, objective: Objective, process: ForwardProcess, data: Tensor,
        config: TrainConfig | None = None, *, labels: Tensor | None = None,
        on_step: Callable[[int, float], None] | None = None) -> TrainResult:
    """Train ``model`` on ``data`` ``(N, *event)`` (optional ``labels`` ``(N,)``) with ``objective``.

    Returns the model (trained in place), a separate EMA copy and the per-step losses.
    """
    config = config or TrainConfig()
    check_compatible(objective, process)
    model.bind(process)
    device = data.device
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warmup = max(config.warmup, 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: min(1.0, (step + 1) / warmup))
    ema = AveragedModel(model, avg_fn=_ema_with_warmup(config.ema_decay), use_buffers=True)
    batches = torch.Generator().manual_seed(config.seed)
    losses: list[float] = []
    model.train()
    for step in range(config.steps):
        rows = torch.randint(0, data.shape[0], (config.batch_size,), generator=batches).to(device)
        first = step * config.batch_size
        noise = NoiseSource(config.seed, torch.arange(first, first + config.batch_size, device=device))
        cond = labels[rows] if labels is not None else None
        loss = objective.loss(model, process, data[rows], noise, cond)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimiser.step()
        schedule.step()
        ema.update_parameters(model)
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, losses[-1])
    model.eval()
    ema_model = copy.deepcopy(model)
    ema_model.load_state_dict(ema.module.state_dict())
    ema_model.bind(process)
    return TrainResult(model=model, ema=ema_model, losses=losses)
