"""Previews written at each checkpoint of ``diffcore train``: the loss curve and EMA samples."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch

from diffcore.data import Dataset
from diffcore.errors import DiffcoreError
from diffcore.model import ScoreModel
from diffcore.pipeline import Pipeline
from diffcore.training.loop import Trainer


def previewer(trainer: Trainer[ScoreModel], pipe: Pipeline, dataset: Dataset, out: Path, *,
              every: bool = False) -> Callable[[int], None]:
    """``on_save(step)``: the loss curve and a picture of EMA samples (2-D scatter against the data, or
    an image grid), written into the run directory ``out``; a failure is reported, never fatal. The
    samples are drawn at the last step only unless ``every`` (sampling with the spec's sampler can cost
    more than the training between two checkpoints). The global random states are left as they were,
    so previews never change the training."""
    from diffcore.plots import save_loss_curve, save_samples

    num = 1000 if len(pipe.shape) == 1 else 64
    reference = dataset.to_raw(trainer.data[:num].cpu())

    devices = [trainer.world.device] if trainer.world.device.type == "cuda" else []

    def on_save(step: int) -> None:
        with torch.random.fork_rng(devices=devices):  # a run with previews resumes bitwise as one without
            write(step)

    def write(step: int) -> None:
        try:
            (out / "samples").mkdir(parents=True, exist_ok=True)
            save_loss_curve(trainer.losses, out / "loss.png")
            if not every and step < trainer.config.steps:
                return
            preview = Pipeline(pipe.process, trainer.ema_model(), pipe.sampler, (), pipe.shape)
            x = preview.sample(num, seed=trainer.config.seed, device=trainer.world.device).x.cpu()
            save_samples(dataset.to_raw(x), out / "samples" / f"step-{step:08d}.png", reference=reference,
                         title=f"EMA samples at step {step}")
        except (DiffcoreError, OSError, ValueError) as exc:
            print(f"diffcore: warning: no preview at step {step}: {exc}", file=sys.stderr)

    return on_save
