"""The training loop: AdamW with linear warm-up, gradient clipping, an EMA of the weights, optional
mixed precision, and DistributedDataParallel under ``torchrun``.

Deterministic given the seed: batches are drawn with a seeded generator and every random number an
objective uses comes from counter-based noise keyed by ``(seed, step * batch_size + slot)``. Under
``torchrun`` every rank draws the same global batch and trains on its contiguous slice of it (see
:mod:`diffcore.distributed`), so N processes follow the single-process run up to summation order.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from diffcore.classifier import NoiseClassifier
from diffcore.component import Component, check_compatible
from diffcore.distributed import World, current_world, mean_over_ranks, on_every_rank, on_main_rank
from diffcore.errors import TrainingError, UsageError
from diffcore.model import ScoreModel
from diffcore.noise import BatchNoise, NoiseSource
from diffcore.objective import Objective
from diffcore.process import ForwardProcess
from diffcore.threads import Recheck, Threads, cpu_threads, requested
from diffcore.training.checkpoint import (
    check_tensors,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    step_name,
)
from diffcore.training.config import MAX_CONSECUTIVE_SKIPS, TrainConfig
from diffcore.training.ema import ExponentialMovingAverage
from diffcore.training.rundir import hold_run_dir

Network = TypeVar("Network", ScoreModel, NoiseClassifier)
"""What a :class:`Trainer` trains: a score model, or a noise-conditional classifier."""


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
class TrainResult(Generic[Network]):
    """The trained model, its EMA copy and the loss of every step."""

    model: Network
    ema: Network
    losses: list[float] = field(default_factory=list)


class _Replicated(DistributedDataParallel):
    """DistributedDataParallel around a score model, still exposing what objectives read: the ``output``
    kind and whether it is class-conditional."""

    @property
    def output(self) -> str:
        return str(self.module.output)

    @property
    def null_label(self) -> int | None:
        return self.module.null_label  # type: ignore[no-any-return]

    @property
    def conditional(self) -> bool:
        return bool(self.module.conditional)


_AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Trainer(Generic[Network]):
    """The loop with its state: model, EMA, optimiser, schedule, batch generator and step.

    ``transform(batch, noise)`` is applied to every batch (dataset dequantisation); ``metadata``
    (JSON values) is saved with every checkpoint; ``world`` (default: the current process group, if
    any) selects DistributedDataParallel training; ``threads``, torch's CPU threads while training (a
    count, or ``"auto"``, the default: the cores other processes leave idle, measured again every 30 s;
    :mod:`diffcore.threads`; the float summation order, and so the last bits of the weights, can
    depend on the count: fix it for a bitwise-reproducible run). ``run(until)``
    trains to step ``until``; ``save(run_dir)`` writes an atomic checkpoint and
    ``load(path)`` restores one, so a run resumed from a checkpoint ends bitwise equal to an
    uninterrupted run (same device and library versions): the checkpoint holds the global torch,
    CUDA, numpy and Python random states too, for models that draw from them (dropout).

    A step whose loss or global gradient norm is NaN or Inf raises :class:`TrainingError` before
    the optimiser step (``train.nonfinite: stop``) or is skipped (``skip``; counted in
    :attr:`skipped`); either way no non-finite weights reach a checkpoint.
    """

    def __init__(self, model: Network, objective: Objective, process: ForwardProcess, data: Tensor,
                 config: TrainConfig | None = None, *, labels: Tensor | None = None,
                 spec: dict[str, Any] | None = None,
                 transform: Callable[[Tensor, NoiseSource], Tensor] | None = None,
                 world: World | None = None, metadata: dict[str, Any] | None = None, threads: Threads = None) -> None:
        self.config = cfg = config or TrainConfig()
        check_compatible(objective, process)
        check_compatible(model, process)
        model.bind(process)
        self.model: Network = model
        self.objective, self.process = objective, process
        self.data, self.labels, self.transform = data, labels, transform
        # saved with every checkpoint, so that `diffcore sample RUN` can rebuild the model
        self.spec = spec if spec is not None else components_spec(model, objective, process, cfg)
        self.metadata = metadata or {}  # saved with every checkpoint (JSON values), e.g. the data scaling
        self.threads = threads  # torch's CPU threads while training (diffcore.threads); checked now, used by run
        requested(threads)
        self.world = world or current_world(data.device)
        if cfg.batch_size % self.world.size:
            raise UsageError(f"train.batch_size {cfg.batch_size} is not divisible by the {self.world.size} "
                             "processes; choose a multiple of the process count")
        self.amp_dtype = _AMP_DTYPES[cfg.precision]
        self.null_label = model.null_label if isinstance(model, ScoreModel) else None
        if cfg.label_dropout > 0 and (labels is None or self.null_label is None):
            raise UsageError(f"train.label_dropout is {cfg.label_dropout} but "
                             + ("the data set has no labels" if labels is None else
                                f"{model.name!r} is not a class-conditional model (no null label)")
                             + "; label dropout trains a class-conditional model for classifier-free guidance: "
                             "set the model's num_classes and use labelled data, or drop train.label_dropout")
        if cfg.precision == "fp16" and data.device.type != "cuda":
            raise UsageError("train.precision fp16 needs CUDA (gradient scaling); use bf16 or fp32 on CPU")
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.precision == "fp16")
        # what the objective calls: the model, or its DDP replica (gradients averaged over ranks)
        self.net: torch.nn.Module = _Replicated(model) if self.world.distributed else model
        if not any(p.requires_grad for p in model.parameters()):
            raise UsageError(f"{type(model).__name__} {model.name!r} has no trainable parameters (an analytic model "
                             "is exact as it stands): train a network, or use it directly")
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
        self.losses: list[float] = []  # the loss of every step taken (skipped steps have none)
        self.skipped = 0  # steps skipped for a non-finite loss or gradient norm (train.nonfinite: skip)
        self._consecutive_skips = 0
        self._saved_step: int | None = None  # the step of the checkpoint on disk, if any

    def train_step(self) -> float:
        """One optimiser step on a fresh batch; returns the loss (averaged over ranks), non-finite
        for a skipped step."""
        cfg, device, world = self.config, self.data.device, self.world
        rows = torch.randint(0, self.data.shape[0], (cfg.batch_size,), generator=self.batches)
        local = cfg.batch_size // world.size  # this rank's contiguous slice of the global batch
        lo = world.rank * local
        rows = rows[lo:lo + local].to(device)
        noise = self._noise.at(self.step)  # samples step * batch_size + lo + j, j < local
        cond = self.labels[rows] if self.labels is not None else None
        if cond is not None and cfg.label_dropout > 0:  # classifier-free guidance (Ho & Salimans 2022)
            drop = noise.uniform((), step=0, stream="label_dropout", dtype=torch.float64) < cfg.label_dropout
            cond = torch.where(drop, torch.full_like(cond, int(self.null_label or 0)), cond)
        if not self.model.training:
            self.model.train()
        batch = self.data[rows]
        if self.transform is not None:  # e.g. uniform dequantisation, fresh noise every step
            batch = self.transform(batch, noise)
        with torch.autocast(device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            loss = self.objective.loss(self.net, self.process, batch, noise, cond)  # type: ignore[arg-type]
        self.optimiser.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        if self.scaler.is_enabled():  # what scaler.step would do first; the gradients are then true ones
            self.scaler.unscale_(self.optimiser)
        norm = self._gradient_norm()
        loss_mean, norm_ok = self._agreed_check(loss, norm)
        if not (math.isfinite(loss_mean) and norm_ok):
            return self._nonfinite_step(loss_mean, None if norm is None else float(norm))
        self.scaler.step(self.optimiser)
        self.scaler.update()
        self.schedule.step()
        self.ema.update_parameters(self.model)
        self.step += 1
        self._consecutive_skips = 0
        self.losses.append(loss_mean)
        return loss_mean

    def _gradient_norm(self) -> Tensor | None:
        """The global 2-norm of the gradients (before they are clipped to ``train.grad_clip``, when
        set), computed after DDP's all-reduce so it is the same on every rank; ``None`` with fp16,
        whose gradient scaler already skips steps with Inf gradients (and lowers its scale)."""
        cfg = self.config
        if cfg.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(self._parameters, cfg.grad_clip)
        elif cfg.precision == "fp16":
            return None
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in self._parameters if p.grad is not None])
        return None if cfg.precision == "fp16" else norm

    def _agreed_check(self, loss: Tensor, norm: Tensor | None) -> tuple[float, bool]:
        """``(loss averaged over ranks, whether the gradient norm is finite on every rank)`` from one
        all-reduce, so every rank takes the same decision on a non-finite step."""
        bad_norm = torch.zeros((), device=loss.device) if norm is None else (~torch.isfinite(norm)).float()
        both = mean_over_ranks(torch.stack([loss.detach().float(), bad_norm.to(loss.device)]), self.world)
        loss_mean, bad = both.tolist()
        return float(loss_mean), bad == 0

    def _nonfinite_step(self, loss: float, norm: float | None) -> float:
        """Stop (``train.nonfinite: stop``) or skip the step about to be taken: no optimiser,
        schedule or EMA update; the batch and its noise are consumed all the same."""
        step = self.step + 1
        what = f"the loss is {loss}" + ("" if norm is None else f" and the gradient norm {norm}")
        if self.config.nonfinite == "stop":
            raise TrainingError(
                f"training stopped at step {step}: {what} (NaN or Inf), caught before the optimiser step, so the "
                "weights and the checkpoints written so far are finite. Lower train.lr, set train.grad_clip, check "
                "the data for NaN or Inf, or set train.nonfinite: skip to skip such steps", step=step)
        self.optimiser.zero_grad(set_to_none=True)
        if self.scaler.is_enabled():
            self.scaler.update()  # lowers the scale after Inf gradients, as a skipped fp16 step does
        self.step, self.skipped = step, self.skipped + 1
        self._consecutive_skips += 1
        if self._consecutive_skips >= MAX_CONSECUTIVE_SKIPS:
            raise TrainingError(
                f"training stopped at step {step}: the last {self._consecutive_skips} steps all had a NaN or Inf "
                f"loss or gradient norm ({what} now) and were skipped; the weights or the data are broken. Lower "
                "train.lr, set train.grad_clip, or check the data for NaN or Inf", step=step)
        return loss

    def run(self, until: int | None = None, on_step: Callable[[int, float], None] | None = None, *,
            run_dir: Path | None = None, checkpoint_every: int | None = None,
            on_save: Callable[[int], None] | None = None) -> TrainResult[Network]:
        """Train up to step ``until`` (default: ``config.steps``), checkpointing into ``run_dir``
        (locked for the whole run, see :func:`~diffcore.training.rundir.hold_run_dir`) every
        ``checkpoint_every`` steps and at the end; ``on_save(step)`` runs after each checkpoint
        on the main process (previews, logs)."""
        until = self.config.steps if until is None else until
        held = hold_run_dir(Path(run_dir), self.world) if run_dir is not None else contextlib.nullcontext()
        recheck = Recheck()
        with held, cpu_threads(self.threads):
            while self.step < until:
                recheck()
                loss = self.train_step()
                if on_step is not None:
                    on_step(self.step, loss)
                if run_dir is not None and checkpoint_every and self.step % checkpoint_every == 0:
                    self._save_and_report(Path(run_dir), on_save)
            if run_dir is not None and self._saved_step != self.step:
                self._save_and_report(Path(run_dir), on_save)
        self.model.eval()
        return TrainResult(model=self.model, ema=self.ema_model(), losses=list(self.losses))

    def _save_and_report(self, run_dir: Path, on_save: Callable[[int], None] | None) -> None:
        self.save(run_dir)
        if on_save is not None and self.world.is_main:
            on_save(self.step)

    def ema_model(self) -> Network:
        """A copy of the model holding the EMA weights."""
        ema_model = copy.deepcopy(self.model)
        ema_model.load_state_dict(self.ema.module.state_dict())
        ema_model.bind(self.process)
        ema_model.eval()
        return ema_model

    # -- checkpoints -------------------------------------------------------------------------------

    def save(self, run_dir: str | Path) -> Path:
        """Write an atomic checkpoint of the current state into ``run_dir`` (the main process writes
        holding the run directory's lock; every process learns whether it succeeded); returns the
        checkpoint folder. Refuses (:class:`TrainingError`) weights that are not finite."""
        run_dir = Path(run_dir)
        with hold_run_dir(run_dir, self.world):
            on_main_rank(self.world, lambda: self._write(run_dir), f"writing checkpoint {step_name(self.step)}")
        self._saved_step = self.step
        return run_dir / step_name(self.step)

    def _write(self, run_dir: Path) -> Path:
        weights = {"model": self.model.state_dict(), "ema": self.ema.state_dict()}
        bad = [f"{name}.{key}" for name, tensors in weights.items() for key, value in tensors.items()
               if value.is_floating_point() and not bool(value.isfinite().all())]
        if bad:
            raise TrainingError(f"no checkpoint written at step {self.step}: the weights {', '.join(bad[:5])} hold "
                                f"NaN or Inf (the optimiser step overflowed); the earlier checkpoints in {run_dir} "
                                "are intact. Lower train.lr or set train.grad_clip", step=self.step)
        optim = self.optimiser.state_dict()
        state = {f"optim.{i}.{k}": v for i, entry in optim["state"].items() for k, v in entry.items()}
        state["batches"] = self.batches.get_state()
        rng_tensors, rng_meta = global_rng_state()
        state.update(rng_tensors)
        metadata = {**self.metadata, "spec": self.spec, "train": self.config.model_dump(), "losses": self.losses,
                    "param_groups": optim["param_groups"], "schedule": self.schedule.state_dict(),
                    "scaler": self.scaler.state_dict(), "rng": rng_meta, "skipped": self.skipped,
                    "consecutive_skips": self._consecutive_skips}
        return save_checkpoint(run_dir, self.step, {**weights, "state": state}, metadata)

    def load(self, path: str | Path) -> None:
        """Restore the state saved by :meth:`save` (``path``: a checkpoint or a run directory), after
        checking every tensor and metadata field against this trainer (errors name the file and the
        field; nothing is changed then). Every process reads it and learns whether all succeeded."""
        on_every_rank(self.world, lambda: self._load(Path(path)), f"reading the checkpoint {path}")

    def _load(self, path: Path) -> None:
        checkpoint = latest_checkpoint(path)
        files, meta = load_checkpoint(checkpoint)
        restore = self._checked_restore(checkpoint, files, meta)
        restore()
        self._saved_step = self.step

    def _checked_restore(self, checkpoint: Path, files: dict[str, dict[str, Tensor]],
                         meta: dict[str, Any]) -> Callable[[], None]:
        """Check everything first (so a refused checkpoint leaves the trainer untouched), then return
        the function that restores it."""
        state_file = checkpoint / "state.safetensors"
        check_tensors(checkpoint / "model.safetensors", files["model"], self.model.state_dict())
        check_tensors(checkpoint / "ema.safetensors", files["ema"], self.ema.state_dict())
        optim_state = self._optimiser_state(state_file, files["state"])
        fields = {"param_groups": self.optimiser.state_dict()["param_groups"],
                  "schedule": self.schedule.state_dict(), "scaler": self.scaler.state_dict()}
        for key, template in fields.items():
            _check_like(state_file, key, meta.get(key), template)
        missing = [key for key in ("losses", "skipped", "consecutive_skips") if key not in meta]
        if missing:
            raise UsageError(f"{state_file}: metadata field `{missing[0]}` is missing; the checkpoint was not "
                             "written by diffcore train: use another one")
        batches = files["state"].get("batches")
        expected = self.batches.get_state()
        if batches is None or batches.shape != expected.shape or batches.dtype != expected.dtype:
            raise UsageError(f"{state_file}: tensor `batches` (the batch generator's state) is missing or not "
                             f"{expected.dtype} of shape {list(expected.shape)}; use another checkpoint")
        set_rng = checked_rng_restore(state_file, files["state"], meta.get("rng"))

        def restore() -> None:
            self.model.load_state_dict(files["model"])
            self.ema.load_state_dict(files["ema"])
            self.optimiser.load_state_dict({"state": optim_state, "param_groups": meta["param_groups"]})
            self.schedule.load_state_dict(meta["schedule"])
            if meta["scaler"]:
                self.scaler.load_state_dict(meta["scaler"])
            self.batches.set_state(batches)
            set_rng()
            self.step, self.losses = int(meta["step"]), [float(x) for x in meta["losses"]]
            self.skipped, self._consecutive_skips = int(meta["skipped"]), int(meta["consecutive_skips"])

        return restore

    def _optimiser_state(self, file: Path, tensors: Mapping[str, Tensor]) -> dict[int, dict[str, Tensor]]:
        """AdamW's per-parameter state from the ``optim.<index>.<name>`` tensors, checked: an index per
        parameter, each with exactly this optimiser's entries, of the parameter's shape."""
        params = self._parameters
        state: dict[int, dict[str, Tensor]] = {}
        tensor_name: str
        for tensor_name, value in tensors.items():
            if not tensor_name.startswith("optim."):
                continue
            _, index, name = [*tensor_name.split(".", 2), "", ""][:3]
            if not (index.isascii() and index.isdigit()) or int(index) >= len(params):
                raise UsageError(f"{file}: tensor `{tensor_name}` names no parameter of the model ({len(params)} "
                                 "parameters); the checkpoint belongs to another model: use one of this run")
            state.setdefault(int(index), {})[name] = value
        names = {"step", "exp_avg", "exp_avg_sq"}
        if self.optimiser.defaults["amsgrad"]:
            names.add("max_exp_avg_sq")
        for i, entry in state.items():
            expected = {n: torch.empty(() if n == "step" else params[i].shape) for n in names}
            check_tensors(file, {f"optim.{i}.{n}": v for n, v in entry.items()},
                          {f"optim.{i}.{n}": v for n, v in expected.items()})
        return state


def _check_like(file: Path, key: str, value: Any, template: Any) -> None:
    """Refuse the metadata field ``key`` unless ``value`` has the structure of ``template`` (this
    trainer's own state): the same keys, list lengths and kinds of values, numbers finite."""
    problem = _unlike(value, template, key)
    if problem is not None:
        raise UsageError(f"{file}: metadata field {problem}; the checkpoint was written by another version of "
                         "diffcore or torch, or edited: use a checkpoint of this run")


def _unlike(value: Any, template: Any, where: str) -> str | None:
    """Where ``value`` departs from the structure of ``template`` (``None`` if nowhere)."""
    if isinstance(template, Mapping):
        if not isinstance(value, dict) or set(value) != {str(k) for k in template}:
            return f"`{where}` must be a mapping with the keys {sorted(map(str, template))}"
        return next((p for k, t in template.items() if (p := _unlike(value[str(k)], t, f"{where}.{k}"))), None)
    if isinstance(template, list | tuple):
        if not isinstance(value, list) or len(value) != len(template):
            return f"`{where}` must be a list of {len(template)} items"
        return next((p for i, (v, t) in enumerate(zip(value, template, strict=True))
                     if (p := _unlike(v, t, f"{where}.{i}"))), None)
    if template is None or isinstance(template, bool | str):
        ok = value is None if template is None else type(value) is type(template)
    elif isinstance(template, int):
        ok = type(value) is int
    elif isinstance(template, float):
        ok = type(value) in (int, float) and math.isfinite(value)
    else:
        ok = False
    return None if ok else f"`{where}` is {str(value)[:40]!r}, expected a value like {template!r}"


# -- global random states ---------------------------------------------------------------------------


def global_rng_state() -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The global random states a model or objective may draw from (dropout, ...): torch's CPU
    generator and CUDA's (every device, when CUDA is in use), numpy's and Python's, as tensors
    (``rng.*``, for ``state.safetensors``) and JSON metadata; never pickled."""
    tensors = {"rng.torch": torch.get_rng_state()}
    meta: dict[str, Any] = {"cuda_devices": 0}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states = torch.cuda.get_rng_state_all()
        tensors.update({f"rng.cuda.{i}": state for i, state in enumerate(states)})
        meta["cuda_devices"] = len(states)
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    meta["numpy"] = {"kind": str(kind), "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    version, internal, gauss_next = random.getstate()
    tensors["rng.python"] = torch.tensor(internal, dtype=torch.int64)
    meta["python"] = {"version": version, "gauss_next": gauss_next}
    return tensors, meta


def checked_rng_restore(file: Path, tensors: Mapping[str, Tensor], meta: Any) -> Callable[[], None]:
    """Check the random states saved by :func:`global_rng_state` and return the function that
    restores them (CUDA's on as many devices as both the checkpoint and this machine have)."""
    def refuse(what: str) -> UsageError:
        return UsageError(f"{file}: the saved random state {what}; use another checkpoint of this run")

    current, template = global_rng_state()
    if not isinstance(meta, dict) or set(meta) != set(template):
        raise refuse(f"(metadata field `rng`) must be a mapping with the keys {sorted(template)}")
    n_cuda = meta["cuda_devices"]
    if type(n_cuda) is not int or not 0 <= n_cuda <= 1024:
        raise refuse("count of CUDA devices (`rng.cuda_devices`) is not a small integer")
    numpy_meta, python_meta = meta["numpy"], meta["python"]
    if (_unlike(numpy_meta, template["numpy"], "rng.numpy") or numpy_meta["kind"] != "MT19937"
            or not 0 <= numpy_meta["pos"] <= 624):
        raise refuse("of numpy (`rng.numpy`) is not MT19937's")
    if (not isinstance(python_meta, dict) or set(python_meta) != {"version", "gauss_next"}
            or type(python_meta["version"]) is not int
            or not (python_meta["gauss_next"] is None or type(python_meta["gauss_next"]) is float)):
        raise refuse("of Python (`rng.python`) is not what random.getstate() gives")
    expected = {k: current[k] for k in ("rng.torch", "rng.numpy", "rng.python")}
    cuda_state = current.get("rng.cuda.0", torch.empty(16, dtype=torch.uint8))  # Philox: seed and offset
    expected.update({f"rng.cuda.{i}": cuda_state for i in range(n_cuda)})
    got = {k: v for k, v in tensors.items() if k.startswith("rng.")}
    for key, value in expected.items():
        if key not in got or got[key].shape != value.shape or got[key].dtype != value.dtype:
            raise refuse(f"tensor `{key}` is missing or not {value.dtype} of shape {list(value.shape)}")
    if set(got) - set(expected):
        raise refuse(f"has unexpected tensors {sorted(set(got) - set(expected))}")
    words = got["rng.python"].tolist()
    if not all(0 <= w < 2**32 for w in words[:-1]) or not 1 <= words[-1] <= 624 or not bool(
            ((got["rng.numpy"] >= 0) & (got["rng.numpy"] < 2**32)).all()):
        raise refuse("holds words outside the Mersenne Twister's range")
    python_state = (python_meta["version"], tuple(words), python_meta["gauss_next"])

    def restore() -> None:
        torch.set_rng_state(got["rng.torch"])
        if n_cuda and torch.cuda.is_available():
            for i in range(min(n_cuda, torch.cuda.device_count())):
                torch.cuda.set_rng_state(got[f"rng.cuda.{i}"], device=i)
        np.random.set_state(("MT19937", got["rng.numpy"].numpy().astype(np.uint32), numpy_meta["pos"],
                             numpy_meta["has_gauss"], numpy_meta["cached_gaussian"]))
        random.setstate(python_state)

    try:  # random.setstate validates more than the checks above; try it on a scratch generator
        random.Random().setstate(python_state)  # noqa: S311 - a scratch copy, only to validate the state
    except (ValueError, TypeError) as exc:
        raise refuse(f"of Python is invalid ({exc})") from None
    return restore


def fit(model: ScoreModel, objective: Objective, process: ForwardProcess, data: Tensor,
        config: TrainConfig | None = None, *, labels: Tensor | None = None,
        on_step: Callable[[int, float], None] | None = None) -> TrainResult[ScoreModel]:
    """Train ``model`` on ``data`` ``(N, *event)`` (optional ``labels`` ``(N,)``) with ``objective``.

    Returns the model (trained in place), a separate EMA copy and the per-step losses.
    """
    return Trainer(model, objective, process, data, config, labels=labels).run(on_step=on_step)


def components_spec(model: ScoreModel | NoiseClassifier, objective: Objective, process: ForwardProcess,
                    config: TrainConfig) -> dict[str, Any]:
    """The spec of a run built in Python: its components as ``{type: name, ...params}`` and the
    training settings (no sampler: ``diffcore sample RUN --sampler NAME`` chooses one; no data section:
    the data were given as a tensor, in the model's range)."""

    def entry(component: Component) -> dict[str, Any]:
        return {"type": component.name, **component.params.model_dump(mode="json")}

    if isinstance(model, NoiseClassifier):
        return {"process": entry(process), "classifier": entry(model), "train": config.model_dump(mode="json")}
    return {"process": entry(process), "model": entry(model), "objective": entry(objective),
            "train": config.model_dump(mode="json")}
