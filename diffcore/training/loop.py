"""The training loop: AdamW with linear warm-up, gradient clipping, an EMA of the weights, optional
mixed precision, and DistributedDataParallel under ``torchrun``.

Deterministic given the seed: batches are drawn with a seeded generator and every random number an
objective uses comes from counter-based noise keyed by ``(seed, step * batch_size + slot)``. Under
``torchrun`` every rank draws the same global batch and trains on its contiguous slice of it (see
:mod:`diffcore.distributed`), so N processes follow the single-process run up to summation order.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from diffcore.component import check_compatible
from diffcore.distributed import World, barrier, current_world, mean_over_ranks
from diffcore.errors import UsageError
from diffcore.model import ScoreModel
from diffcore.noise import BatchNoise, NoiseSource
from diffcore.objective import Objective
from diffcore.process import ForwardProcess
from diffcore.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from diffcore.training.config import TrainConfig
from diffcore.training.ema import ExponentialMovingAverage


def lr_factor(cfg: TrainConfig, k: int) -> float:
    """The learning rate of step ``k`` (0-based) over ``cfg.lr``: a linear warm-up over ``cfg.warmup``
    steps, then constant or, with ``lr_decay: cosine``, half a cosine towards 0 at ``cfg.steps``
    (Loshchilov and Hutter 2017, without restarts)."""
    warmup = max(cfg.warmup, 1)
    if k + 1 < warmup or cfg.lr_decay == "constant":
        return min(1.0, (k + 1) / warmup)
    progress = min(1.0, (k + 1 - warmup) / (max(cfg.steps, warmup) - warmup + 1))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class TrainResult:
    """The trained model, its EMA copy and the loss of every step."""

    model: ScoreModel
    ema: ScoreModel
    losses: list[float] = field(default_factory=list)


class _Replicated(DistributedDataParallel):
    """DistributedDataParallel around a score model, still exposing the ``output`` kind objectives read."""

    @property
    def output(self) -> str:
        return str(self.module.output)


_AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Trainer:
    """The loop with its state: model, EMA, optimiser, schedule, batch generator and step.

    ``transform(batch, noise)`` is applied to every batch (dataset dequantisation); ``metadata``
    (JSON values) is saved with every checkpoint; ``world`` (default: the current process group, if
    any) selects DistributedDataParallel training. ``run(until)``
    trains to step ``until``; ``save(run_dir)`` writes an atomic checkpoint and
    ``load(path)`` restores one, so a run resumed from a checkpoint ends bitwise equal to an
    uninterrupted run (same device and library versions).
    """

    def __init__(self, model: ScoreModel, objective: Objective, process: ForwardProcess, data: Tensor,
                 config: TrainConfig | None = None, *, labels: Tensor | None = None,
                 spec: dict[str, Any] | None = None,
                 transform: Callable[[Tensor, NoiseSource], Tensor] | None = None,
                 world: World | None = None, metadata: dict[str, Any] | None = None) -> None:
        self.config = cfg = config or TrainConfig()
        check_compatible(objective, process)
        check_compatible(model, process)
        model.bind(process)
        self.model, self.objective, self.process = model, objective, process
        self.data, self.labels, self.spec, self.transform = data, labels, spec or {}, transform
        self.metadata = metadata or {}  # saved with every checkpoint (JSON values), e.g. the data scaling
        self.world = world or current_world(data.device)
        if cfg.batch_size % self.world.size:
            raise UsageError(f"train.batch_size {cfg.batch_size} is not divisible by the {self.world.size} "
                             "processes; choose a multiple of the process count")
        self.amp_dtype = _AMP_DTYPES[cfg.precision]
        if cfg.precision == "fp16" and data.device.type != "cuda":
            raise UsageError("train.precision fp16 needs CUDA (gradient scaling); use bf16 or fp32 on CPU")
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.precision == "fp16")
        # what the objective calls: the model, or its DDP replica (gradients averaged over ranks)
        self.net: torch.nn.Module = _Replicated(model) if self.world.distributed else model
        self.optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimiser, functools.partial(lr_factor, cfg))
        self.ema = ExponentialMovingAverage(model, cfg.ema_decay)
        self.batches = torch.Generator().manual_seed(cfg.seed)
        local = cfg.batch_size // self.world.size  # this rank's contiguous slice of the global batch
        numel = max(1, data[0].numel()) if data.shape[0] else 1
        # the counter-based noise of up to 32 steps at once (a few MB at most): its integer hashing is
        # many small kernels, run once per block instead of once per step (see BatchNoise)
        self._noise = BatchNoise(cfg.seed, cfg.batch_size, offset=self.world.rank * local, size=local,
                                 device=data.device, block=max(1, min(32, 2**20 // (local * numel))))
        self._parameters = list(model.parameters())
        self.step = 0
        self.losses: list[float] = []
        self._saved_step: int | None = None  # the step of the checkpoint on disk, if any

    def train_step(self) -> float:
        """One optimiser step on a fresh batch; returns the loss (averaged over ranks)."""
        cfg, device, world = self.config, self.data.device, self.world
        rows = torch.randint(0, self.data.shape[0], (cfg.batch_size,), generator=self.batches)
        local = cfg.batch_size // world.size  # this rank's contiguous slice of the global batch
        lo = world.rank * local
        rows = rows[lo:lo + local].to(device)
        noise = self._noise.at(self.step)  # samples step * batch_size + lo + j, j < local
        cond = self.labels[rows] if self.labels is not None else None
        if not self.model.training:
            self.model.train()
        batch = self.data[rows]
        if self.transform is not None:  # e.g. uniform dequantisation, fresh noise every step
            batch = self.transform(batch, noise)
        with torch.autocast(device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            loss = self.objective.loss(self.net, self.process, batch, noise, cond)  # type: ignore[arg-type]
        self.optimiser.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        if cfg.grad_clip is not None:
            self.scaler.unscale_(self.optimiser)
            torch.nn.utils.clip_grad_norm_(self._parameters, cfg.grad_clip)
        self.scaler.step(self.optimiser)
        self.scaler.update()
        self.schedule.step()
        self.ema.update_parameters(self.model)
        self.step += 1
        self.losses.append(float(mean_over_ranks(loss.detach().float(), world)))
        return self.losses[-1]

    def run(self, until: int | None = None, on_step: Callable[[int, float], None] | None = None, *,
            run_dir: Path | None = None, checkpoint_every: int | None = None,
            on_save: Callable[[int], None] | None = None) -> TrainResult:
        """Train up to step ``until`` (default: ``config.steps``), checkpointing into ``run_dir``
        every ``checkpoint_every`` steps and at the end; ``on_save(step)`` runs after each checkpoint
        on the main process (previews, logs)."""
        until = self.config.steps if until is None else until

        def save() -> None:
            self.save(run_dir)  # type: ignore[arg-type]
            if on_save is not None and self.world.is_main:
                on_save(self.step)

        while self.step < until:
            loss = self.train_step()
            if on_step is not None:
                on_step(self.step, loss)
            if run_dir is not None and checkpoint_every and self.step % checkpoint_every == 0:
                save()
        if run_dir is not None and self._saved_step != self.step:
            save()
        self.model.eval()
        return TrainResult(model=self.model, ema=self.ema_model(), losses=list(self.losses))

    def ema_model(self) -> ScoreModel:
        """A copy of the model holding the EMA weights."""
        ema_model = copy.deepcopy(self.model)
        ema_model.load_state_dict(self.ema.module.state_dict())
        ema_model.bind(self.process)
        ema_model.eval()
        return ema_model

    # -- checkpoints -------------------------------------------------------------------------------

    def save(self, run_dir: str | Path) -> Path:
        """Write an atomic checkpoint of the current state into ``run_dir`` (the main process writes,
        every process waits for it); returns the checkpoint folder."""
        self._saved_step = self.step
        final = Path(run_dir) / f"step-{self.step:08d}"
        if self.world.is_main:
            optim = self.optimiser.state_dict()
            state = {f"optim.{i}.{k}": v for i, entry in optim["state"].items() for k, v in entry.items()}
            state["batches"] = self.batches.get_state()
            metadata = {**self.metadata, "spec": self.spec, "train": self.config.model_dump(), "losses": self.losses,
                        "param_groups": optim["param_groups"], "schedule": self.schedule.state_dict(),
                        "scaler": self.scaler.state_dict()}
            final = save_checkpoint(Path(run_dir), self.step, {"model": self.model.state_dict(),
                                                               "ema": self.ema.state_dict(), "state": state}, metadata)
        barrier(self.world)
        return final

    def load(self, path: str | Path) -> None:
        """Restore the state saved by :meth:`save` (``path``: a checkpoint or a run directory)."""
        files, meta = load_checkpoint(latest_checkpoint(Path(path)))
        self.model.load_state_dict(files["model"])
        self.ema.load_state_dict(files["ema"])
        optim_state: dict[int, dict[str, Tensor]] = {}
        for key, value in files["state"].items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                optim_state.setdefault(int(index), {})[name] = value
        self.optimiser.load_state_dict({"state": optim_state, "param_groups": meta["param_groups"]})
        self.schedule.load_state_dict(meta["schedule"])
        if meta.get("scaler"):
            self.scaler.load_state_dict(meta["scaler"])
        self.batches.set_state(files["state"]["batches"])
        self.step, self.losses = int(meta["step"]), list(meta["losses"])
        self._saved_step = self.step


def fit(model: ScoreModel, objective: Objective, process: ForwardProcess, data: Tensor,
        config: TrainConfig | None = None, *, labels: Tensor | None = None,
        on_step: Callable[[int, float], None] | None = None) -> TrainResult:
    """Train ``model`` on ``data`` ``(N, *event)`` (optional ``labels`` ``(N,)``) with ``objective``.

    Returns the model (trained in place), a separate EMA copy and the per-step losses.
    """
    return Trainer(model, objective, process, data, config, labels=labels).run(on_step=on_step)
