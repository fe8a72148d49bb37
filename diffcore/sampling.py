"""Sampling into a ``.npy`` file: what ``diffcore sample`` runs, callable from Python.

:func:`load_for_sampling` assembles the pipeline of a spec file or of a trained run (its EMA
weights), :func:`data_scaling` finds how to map samples back to the data's raw units, and
:func:`sample_to_file` draws the samples chunk by chunk (over the ranks of a ``torchrun`` group, see
:func:`diffcore.distributed.sample_chunks`) into a memory-mapped file that is renamed into place
when complete.
"""

from __future__ import annotations

import glob
import math
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffcore.condition import Condition
from diffcore.distributed import World, current_world, default_batch_size, on_main_rank, sample_chunks
from diffcore.errors import UsageError
from diffcore.inputs import load_npy, output_file
from diffcore.partial import check_start_time
from diffcore.pipeline import Pipeline
from diffcore.spec import PipelineSpecBase, apply_overrides, validate_spec
from diffcore.training.checkpoint import load_ema_weights, saved_spec_source, spec_or_checkpoint
from diffcore.utils import fsync_dir, progress_bar


def load_for_sampling(path: Path, *, sampler: str | None = None, steps: int | None = None,
                      overrides: Sequence[str] = ()) -> tuple[Pipeline, PipelineSpecBase, dict[str, Any]]:
    """The pipeline of a spec file, or of a run directory / checkpoint (its EMA weights loaded), with
    the spec's sampler replaced by ``sampler`` (its defaults), ``sampler.steps`` set to ``steps`` and
    the ``--set`` ``overrides`` applied; returns it with the validated spec and the checkpoint's
    metadata (``{}`` for a spec file)."""
    data, checkpoint, meta = spec_or_checkpoint(Path(path))
    if checkpoint is not None and "sampler" not in data and sampler is None and "model" in data:
        raise UsageError(f"the run {path} was trained from Python (diffcore.training.Trainer) and its saved spec "
                         "names no sampler; choose one with --sampler NAME (`diffcore list sampler`), e.g. "
                         f"diffcore sample {path} --sampler ddim --num 64 --out x.npy")
    if sampler is not None:
        data["sampler"] = {"type": sampler}
    if steps is not None:
        if not isinstance(data.get("sampler"), dict):
            raise UsageError("--steps needs a sampler mapping in the spec")
        data["sampler"]["steps"] = steps
    source = saved_spec_source(checkpoint) if checkpoint is not None else str(path)
    spec = validate_spec(apply_overrides(data, overrides), source=source)
    pipe = Pipeline.from_spec(spec)
    if checkpoint is not None:
        load_ema_weights(pipe.model, checkpoint)
    return pipe, spec, meta


def data_scaling(spec: PipelineSpecBase, meta: dict[str, Any]) -> tuple[float, float] | None:
    """``(shift, mult)`` of the spec's data (raw = value / mult + shift): saved in a checkpoint's
    metadata, or computed from the data set for a spec file; ``None`` without a data section."""
    if "scaling" in meta:
        shift, mult = meta["scaling"]
        return float(shift), float(mult)
    if getattr(spec, "data", None) is None:
        return None
    from diffcore.registry import get_registry

    data_type, data_params = spec.component("data")
    dataset = get_registry().build("dataset", data_type, **data_params)
    shift, mult = dataset.scaling  # type: ignore[attr-defined]
    return float(shift), float(mult)


def load_condition(pipe: Pipeline, num: int, *, label: int | None = None, labels: Path | None = None,
                   mask: Path | None = None, observed: Path | None = None) -> Condition | None:
    """The condition of ``diffcore sample``'s ``--label``, ``--labels``, ``--mask`` and ``--observed``
    (``None`` when none is given), with ``num`` rows.

    ``--labels`` holds ``(num,)`` integers. ``--mask`` (booleans, or 0/1) and ``--observed`` hold one
    array per sample, ``(num, ...)``, or a single one shared by every sample: an array of the sample
    shape itself (or, for measurements of a matrix operator, ``(m,)``). Observed values are in the
    model's range (the range ``--model-range`` writes)."""
    if label is not None and labels is not None:
        raise UsageError("give --label (one label for every sample) or --labels (a file), not both")
    fields: dict[str, torch.Tensor] = {}
    if label is not None:
        fields["labels"] = torch.full((num,), label, dtype=torch.long)
    if labels is not None:
        fields["labels"] = torch.from_numpy(load_npy(labels, what="--labels", kinds="iu").astype(np.int64))
    for name, path, kinds in (("mask", mask, "biu"), ("observed", observed, "fiu")):
        if path is None:
            continue
        array = torch.from_numpy(load_npy(path, what=f"--{name}", kinds=kinds))
        if name == "mask" and not bool(((array == 0) | (array == 1)).all()):
            raise UsageError(f"--mask {path} must hold booleans or 0/1 (True where observed)")
        array = array.bool() if name == "mask" else array.to(torch.float32)
        per_sample = tuple(array.shape) != tuple(pipe.shape) and array.ndim >= 2 and array.shape[0] == num
        fields[name] = array if per_sample else array.expand(num, *array.shape).clone()
    return Condition(**fields) if fields else None


def load_latents(path: Path) -> torch.Tensor:
    """A ``.npy`` float array of start states (see :func:`diffcore.inputs.load_npy`: never
    unpickled, header checked before reading); refuses NaN and Inf."""
    array = load_npy(path, what="--latents")
    if not np.isfinite(array).all():
        raise UsageError(f"--latents {path}: contains NaN or Inf")
    return torch.from_numpy(array)


def _sweep_stale_temporaries(out: Path) -> None:
    """Remove temporary files that an earlier, killed ``sample`` into ``out`` left behind (their
    writer's process id is in the name and no longer runs)."""
    for tmp in out.parent.glob(f".{glob.escape(out.name)}.*.tmp"):
        pid = tmp.name[len(out.name) + 2:-len(".tmp")]
        if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
            tmp.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _check_space(out: Path, num: int, shape: tuple[int, ...]) -> None:
    need = num * math.prod(shape) * 4 + 4096
    free = shutil.disk_usage(out.parent).free
    if need > free:
        raise UsageError(f"--out {out}: {num} samples of shape {shape} need {need / 2**30:.3g} GiB but its folder "
                         f"has {free / 2**30:.3g} GiB free; draw fewer samples (--num) or write elsewhere")


def sample_to_file(pipe: Pipeline, out: Path, num: int, *, seed: int = 0, batch_size: int | None = None,
                   latents: torch.Tensor | None = None, t_start: float | None = None,
                   scaling: tuple[float, float] | None = None, world: World | None = None,
                   device: torch.device | str | None = None, cond: Condition | None = None,
                   progress: bool = False) -> dict[str, Any] | None:
    """Draw ``num`` samples of ``pipe`` into the ``.npy`` file ``out`` (float32, ``(num, *shape)``),
    conditioned on ``cond`` (``num`` rows; checked before anything is written), from the prior or from
    ``latents`` ``(num, *shape)`` at ``T`` (or at ``t_start``: partial-range sampling).

    Sample ``i`` depends only on ``(seed, i)``; ``batch_size`` bounds the samples per chunk (default:
    all, or an equal share per rank, up to 16M values per chunk); ``scaling`` ``(shift, mult)`` maps
    them to raw units (``x / mult + shift``). The file appears complete or not at all. Returns the summary that
    ``diffcore sample --json`` prints on the main process, ``None`` on the other ranks. ``world``
    (default: the current process group, if any) sets the device; without it, ``device`` (default: the
    model's). ``progress``: a progress bar over the solver steps on stderr when it is a terminal (main
    process).
    """
    if world is None:
        model_device = next((p.device for p in pipe.model.parameters()), torch.device("cpu"))
        world = current_world(torch.device(device) if device is not None else model_device)
    out = output_file(out)
    if latents is not None and tuple(latents.shape) != (num, *pipe.shape):
        raise UsageError(f"--latents have shape {tuple(latents.shape)} but {num} samples of shape "
                         f"{tuple(pipe.shape)} need {(num, *pipe.shape)}; save exactly one start state per sample")
    if t_start is not None:
        if latents is None:
            raise UsageError(f"--t-start {t_start:g} needs --latents, the states at that time to start from")
        check_start_time(pipe.process, t_start)
    if cond is not None:
        pipe.check_condition(cond, num)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")

    def open_output() -> np.memmap:  # rank 0 writes; every rank learns if it cannot (on_main_rank)
        _sweep_stale_temporaries(out)
        _check_space(out, num, tuple(pipe.shape))
        try:
            return np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(num, *pipe.shape))
        except OSError as exc:
            raise UsageError(f"cannot write --out {out}: {exc.strerror or exc}; check that its folder "
                             "exists and is writable") from None

    start = time.perf_counter()
    nfes: list[int] = []
    passes: list[int] = []
    try:
        array = on_main_rank(world, open_output, f"preparing --out {out}")
        bar = _progress_bar(pipe, num, batch_size, world) if progress else None
        for lo, x, nfe, forward in sample_chunks(pipe, num, seed=seed, world=world, batch_size=batch_size,
                                                 latents=latents, t_start=t_start, cond=cond,
                                                 callback=(lambda _: bar.update(1)) if bar is not None else None):
            if array is not None:
                if scaling is not None:
                    x = x / scaling[1] + scaling[0]
                array[lo:lo + x.shape[0]] = x.numpy()
                nfes.append(nfe)
                passes.append(forward)
        if bar is not None:
            bar.close()
        if array is None:
            return None
        array.flush()
        del array
        os.replace(tmp, out)
        fsync_dir(out.parent)
    finally:
        tmp.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    return {
        "out": str(out), "num": num, "shape": list(pipe.shape), "seed": seed,
        "process": pipe.process.name, "model": pipe.model.name, "sampler": pipe.sampler.name,
        "guidance": [g.name for g in pipe.guidance], "t_start": t_start if t_start is not None else pipe.process.T,
        "nfe": max(nfes), "nfe_total": sum(nfes),
        "forward_passes": max(passes), "chunks": len(nfes),
        "batch_size": batch_size or default_batch_size(num, tuple(pipe.shape), world), "device": str(world.device),
        "threads": torch.get_num_threads(),
        "processes": world.size, "range": "model" if scaling is None else "raw",
        "seconds": round(seconds, 4), "samples_per_second": round(num / seconds, 2),
    }


def _progress_bar(pipe: Pipeline, num: int, batch_size: int | None, world: World) -> Any:
    """A tqdm bar over the solver steps of the main process's chunks, when stderr is a terminal; its
    total is known for samplers with ``steps`` (adaptive ones count as they go)."""
    batch = batch_size or default_batch_size(num, tuple(pipe.shape), world)
    mine = len(range(0, num, batch)[world.rank::world.size])
    steps = getattr(pipe.sampler.params, "steps", None)
    total = mine * steps if isinstance(steps, int) else None
    return progress_bar(total, "sample", "step", enabled=world.is_main)
