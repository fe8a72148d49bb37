"""Training from a spec: what ``diffcore train`` and ``diffcore demo`` run, callable from Python.

:func:`setup_training` assembles a :class:`~diffcore.training.loop.Trainer` from a spec with
``objective``, ``data`` and ``train`` sections; :func:`run_training` trains it with a progress bar,
checkpoints and previews, as ``diffcore train`` does::

    from diffcore.training.setup import run_training, setup_training

    setup = setup_training("examples/train_moons.yaml", device="cpu", overrides=["train.steps=200"])
    summary = run_training(setup, Path("runs/moons"))
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from diffcore.classifier import CrossEntropy, NoiseClassifier
from diffcore.component import check_compatible, component_errors
from diffcore.data import Dataset
from diffcore.devices import resolve_device
from diffcore.distributed import World, on_main_rank
from diffcore.errors import UsageError
from diffcore.objective import Objective
from diffcore.pipeline import Pipeline
from diffcore.registry import Registry, get_registry
from diffcore.spec import PipelineSpecBase, apply_overrides, is_classifier_spec, load_spec, validate_spec
from diffcore.training.checkpoint import (
    holds_checkpoints,
    is_checkpoint,
    latest_checkpoint,
    run_dir_of,
    saved_spec_source,
    spec_or_checkpoint,
)
from diffcore.training.loop import Trainer
from diffcore.training.rundir import hold_run_dir
from diffcore.utils import progress_bar


@dataclass
class TrainingSetup:
    """A spec assembled for training: the untrained pipeline (its model is ``trainer.model``, on the
    training device; ``None`` for a classifier spec, whose classifier is ``trainer.model``), the data
    set and the trainer."""

    spec: PipelineSpecBase
    pipe: Pipeline | None
    dataset: Dataset
    trainer: Trainer[Any]


def seed_global_generators(seed: int) -> None:
    """Seed torch's, numpy's and Python's global generators from ``train.seed`` (``0 <= seed < 2**64``):
    the model's initial weights, and the states every checkpoint saves, are then the same in two runs
    of one spec (numpy's and Python's used to keep whatever the process started with)."""
    torch.manual_seed(seed)
    np.random.seed([seed & 0xFFFFFFFF, seed >> 32])
    random.seed(seed)


def setup_training(spec: str | Path | Mapping[str, Any] | PipelineSpecBase, *,
                   device: torch.device | str | None = None, world: World | None = None,
                   dataset: Dataset | None = None, registry: Registry | None = None,
                   overrides: Sequence[str] = (), source: str | None = None) -> TrainingSetup:
    """Assemble the trainer of ``spec`` (a spec file, a mapping or a validated spec, with ``--set``
    style ``overrides`` unless validated).

    - the data set is built from ``spec.data`` (or ``dataset``, already built from it); the model
      trains on its scaled ``train`` split, with its labels when the model is conditional
      (``model.conditional``), and with the data set's dequantisation noise on every batch;
    - torch's global generator is seeded with ``train.seed`` before the model is built, so the initial
      weights (and any dropout) follow the seed: wrap the call in ``torch.random.fork_rng`` to keep
      the caller's random state;
    - checkpoints carry the spec and the data scaling (``diffcore sample`` maps back to raw units);
    - ``world`` (a ``torchrun`` group, see :func:`diffcore.distributed.process_group`) sets the device;
      without it, ``device`` (default: CUDA when available).

    ``source`` names the spec in error messages.
    """
    registry = registry or get_registry()
    if not isinstance(spec, PipelineSpecBase):
        source = source or (str(spec) if isinstance(spec, str | Path) else "<spec>")
        spec = load_spec(spec, overrides, registry=registry)
    for field in ("data", "train") if is_classifier_spec(spec) else ("objective", "data", "train"):
        if getattr(spec, field) is None:
            raise UsageError(f"{source or '<spec>'}: training needs `{field}` in the spec; see `diffcore list` "
                             "for objectives and datasets, and docs/user-guide.md for `train`")
    target = world.device if world is not None else resolve_device(device)
    seed_global_generators(spec.train.seed)  # type: ignore[attr-defined]  # the model's initial weights
    if is_classifier_spec(spec):
        return _setup_classifier(spec, registry, target, world, dataset, source or "<spec>")
    pipe = Pipeline.from_spec(spec, registry=registry)
    obj_type, obj_params = spec.component("objective")
    objective = registry.build("objective", obj_type, **obj_params)
    assert isinstance(objective, Objective)
    if dataset is None:
        data_type, data_params = spec.component("data")
        built = registry.build("dataset", data_type, **data_params)
        assert isinstance(built, Dataset)
        dataset = built
    with component_errors(dataset, "loading its training split"):
        x, labels = dataset.split("train")
    if tuple(x.shape[1:]) != tuple(pipe.shape):
        raise UsageError(f"{source or '<spec>'}: dataset {dataset.name!r} gives samples of shape {list(x.shape[1:])} "
                         f"but the model's samples have shape {list(pipe.shape)}; set the model's shape (or the "
                         f"spec's `shape`) to {list(x.shape[1:])}, or choose data of that shape")
    use_labels = labels is not None and pipe.model.conditional
    if use_labels and labels is not None:
        check_labels(labels, pipe.model.null_label, source or "<spec>")
    data = dataset  # bound for the closure (mypy narrows a local, not the argument)
    trainer = Trainer(pipe.model.to(target), objective, pipe.process, x.to(target),
                      spec.train,  # type: ignore[attr-defined]
                      labels=labels.to(target) if use_labels and labels is not None else None,
                      spec=spec.model_dump(mode="json"), world=world,
                      metadata={"scaling": list(data.scaling)},  # `diffcore sample` maps back to raw units
                      transform=lambda batch, noise: data.dequantize(
                          batch, noise.uniform(tuple(batch.shape[1:]), step=0, stream="dequantize",
                                               dtype=batch.dtype)))
    return TrainingSetup(spec, pipe, data, trainer)


def _setup_classifier(spec: PipelineSpecBase, registry: Registry, target: torch.device, world: World | None,
                      dataset: Dataset | None, source: str) -> TrainingSetup:
    """The trainer of a classifier spec: the classifier, trained with the cross-entropy at perturbed
    data (:class:`~diffcore.classifier.CrossEntropy`) on the labelled ``train`` split."""
    def build(field: str, kind: str) -> Any:
        name, params = spec.component(field)
        return registry.build(kind, name, **params)

    process, classifier = build("process", "process"), build("classifier", "classifier")
    assert isinstance(classifier, NoiseClassifier)
    check_compatible(classifier, process)
    if dataset is None:
        dataset = build("data", "dataset")
    assert isinstance(dataset, Dataset)
    with component_errors(dataset, "loading its training split"):
        x, labels = dataset.split("train")
    shape = tuple(spec.shape) or tuple(classifier.event_shape or x.shape[1:])  # type: ignore[attr-defined]
    if tuple(x.shape[1:]) != shape:
        raise UsageError(f"{source}: dataset {dataset.name!r} gives samples of shape {list(x.shape[1:])} but "
                         f"classifier {classifier.name!r} classifies samples of shape {list(shape)}; make them agree")
    if labels is None:
        raise UsageError(f"{source}: dataset {dataset.name!r} has no labels; a classifier trains on labelled data")
    check_labels(labels, classifier.num_classes, source, what="classifier")
    data = dataset
    trainer = Trainer(classifier.to(target), CrossEntropy(), process, x.to(target),
                      spec.train, labels=labels.to(target),  # type: ignore[attr-defined]
                      spec=spec.model_dump(mode="json"), world=world, metadata={"scaling": list(data.scaling)},
                      transform=lambda batch, noise: data.dequantize(
                          batch, noise.uniform(tuple(batch.shape[1:]), step=0, stream="dequantize",
                                               dtype=batch.dtype)))
    return TrainingSetup(spec, None, data, trainer)


def check_labels(labels: Tensor, num_classes: int | None, source: str, *, what: str = "model") -> None:
    """Refuse data labels outside ``[0, num_classes)``: for a model, the label ``num_classes`` is its
    null label ("no condition", for classifier-free guidance), so such data would silently train
    the unconditional model, and larger ones fail inside the embedding."""
    if num_classes is None:
        return
    outside = (labels < 0) | (labels >= num_classes)
    count = int(outside.sum())
    if count:
        found = sorted({int(v) for v in labels[outside][:1000].tolist()})[:5]
        null = f", and label {num_classes} means 'no condition'" if what == "model" else ""
        raise UsageError(f"{source}: {count} of the {labels.numel()} training labels lie outside [0, {num_classes}) "
                         f"(e.g. {found}); the {what}'s num_classes is {num_classes}{null}: set {what}.num_classes "
                         f"to at least {int(labels.max()) + 1}, or fix the data's labels")


def training_spec(spec: Path, overrides: Sequence[str] = (), *, resume: Path | None = None,
                  ) -> tuple[PipelineSpecBase, str]:
    """The validated spec ``diffcore train SPEC [--resume RUN]`` trains, and how messages name it.

    Without ``resume``: ``spec`` (a spec file, or a run directory / checkpoint whose saved spec starts
    a new run) with the ``--set`` ``overrides``. With ``resume``: the spec saved in its checkpoint;
    ``spec`` must be the same spec once validated, or the run directory / checkpoint itself, or the
    run is refused, listing the fields that differ. A saved spec's errors name the checkpoint file.
    """
    if resume is None:
        data, checkpoint, _ = spec_or_checkpoint(spec)
        source = saved_spec_source(checkpoint) if checkpoint is not None else str(spec)
        return validate_spec(apply_overrides(data, overrides), source=source), source
    if overrides:
        raise UsageError("--set cannot change the spec of a resumed run: it continues with the spec saved in "
                         f"{resume}; start a new run with --out to train with other settings")
    if not resume.is_dir():
        raise UsageError(f"--resume {resume} is not a run directory or checkpoint folder; give the --out of an "
                         "earlier `diffcore train` (or one of its step-N folders)")
    saved_data, checkpoint, _ = spec_or_checkpoint(resume)
    assert checkpoint is not None
    source = saved_spec_source(checkpoint)
    saved = validate_spec(saved_data, source=source)
    if spec.is_dir() and latest_checkpoint(spec).resolve() == checkpoint.resolve():
        return saved, source
    given_data, given_checkpoint, _ = spec_or_checkpoint(spec)
    given_source = saved_spec_source(given_checkpoint) if given_checkpoint is not None else str(spec)
    given = validate_spec(given_data, source=given_source)
    differences = spec_differences(given.model_dump(mode="json"), saved.model_dump(mode="json"))
    if differences:
        shown = "; ".join(differences[:8]) + (f"; and {len(differences) - 8} more" if len(differences) > 8 else "")
        raise UsageError(f"{spec} is not the spec of the run resumed from {checkpoint} ({shown}): a resumed run "
                         f"continues with the spec saved in its checkpoint. Give the run itself (`diffcore train "
                         f"{run_dir_of(checkpoint)} --resume {resume}`) or its spec unchanged, or start a new run with "
                         "another --out to train with other settings")
    return saved, source


def spec_differences(given: Any, saved: Any, path: str = "") -> list[str]:
    """Where two validated specs (JSON values) differ: ``"train.steps: 1500 here, 40 saved"`` per
    dotted field path (a component of another type is one difference, at the component)."""
    if isinstance(given, dict) and isinstance(saved, dict) and given.get("type") == saved.get("type"):
        return [d for key in sorted(set(given) | set(saved), key=str)
                for d in spec_differences(given.get(key, _ABSENT), saved.get(key, _ABSENT),
                                          f"{path}.{key}" if path else str(key))]
    if isinstance(given, list) and isinstance(saved, list) and len(given) == len(saved):
        return [d for i, (a, b) in enumerate(zip(given, saved, strict=True))
                for d in spec_differences(a, b, f"{path}.{i}" if path else str(i))]
    if given == saved:
        return []
    return [f"{path or 'the whole spec'}: {_short(given)} here, {_short(saved)} saved"]


_ABSENT = object()


def _short(value: Any) -> str:
    text = "absent" if value is _ABSENT else json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_out_dir(out: Path, resume: Path | None) -> None:
    """Refuse to write a run into ``out`` when it holds the checkpoints of another run: a new run
    (no ``resume``) would replace them step by step and move ``latest`` back, and a run resumed from
    elsewhere would mix two runs' checkpoints. Resuming a run into its own directory is fine."""
    if is_checkpoint(out):
        raise UsageError(f"--out {out} is a checkpoint folder, not a run directory: checkpoints would be written "
                         f"inside it. Resume it with `--resume {out}` (into {out.parent}), or give a new --out")
    if not holds_checkpoints(out):
        return
    if resume is not None and os.path.realpath(run_dir_of(latest_checkpoint(resume))) == os.path.realpath(out):
        return
    try:
        latest = f" (latest: {latest_checkpoint(out).name})"
    except UsageError:
        latest = ""
    if resume is None:
        raise UsageError(f"{out} already holds the checkpoints of a run{latest}; continue it with `diffcore train "
                         f"{out} --resume {out}`, or give a new --out (or delete {out} to start over)")
    raise UsageError(f"--out {out} already holds the checkpoints of another run{latest}, not of {resume}; give a "
                     "new or empty --out, or omit --out to continue in the resumed run's own directory")


def summary_json(summary: Mapping[str, Any]) -> str:
    """The summary as strict JSON: a NaN or Inf number (which JSON cannot hold) becomes ``null``."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.items()}
    return json.dumps(clean, allow_nan=False)


def run_training(setup: TrainingSetup, out: Path, *, resume: Path | None = None,
                 checkpoint_every: int | None = None,
                 preview: Literal["last", "every", "none"] | bool = "last") -> dict[str, Any]:
    """Train ``setup`` to ``train.steps`` as ``diffcore train`` does: resume from ``resume`` (a run
    directory or checkpoint), checkpoint into ``out`` every ``checkpoint_every`` steps (default: a tenth
    of the run) and at the end, with a loss curve at each checkpoint and a picture of EMA samples at
    the last one (``preview="last"``, or ``True``), at each one (``"every"``) or neither (``"none"``,
    or ``False``), and a progress bar on the main process. Returns the summary
    ``diffcore train`` prints (``out``, ``steps``, ``seconds``, ``first_loss``, ``final_loss``,
    ``skipped_steps``, ...; print it with :func:`summary_json`).

    ``out`` is locked for the whole run (a second training into it is refused, see
    :func:`~diffcore.training.rundir.hold_run_dir`), and refused if it holds another run's
    checkpoints (:func:`check_out_dir`). A non-finite step raises
    :class:`~diffcore.errors.TrainingError` (unless ``train.nonfinite: skip``), leaving the
    checkpoints written so far."""
    from diffcore.training.preview import previewer

    trainer, world = setup.trainer, setup.trainer.world
    with hold_run_dir(out, world):  # one writer per run directory, for the whole run
        on_main_rank(world, lambda: check_out_dir(out, resume), f"checking the run directory {out}")
        if resume is not None:
            trainer.load(resume)
        steps = trainer.config.steps
        bar = progress_bar(steps, "train", "step", enabled=world.is_main, initial=trainer.step)

        def on_step(step: int, loss: float) -> None:
            if bar is None:
                return
            bar.update(1)
            if (step % 10 == 0 or step == steps) and trainer.losses:
                window = trainer.losses[-50:]
                bar.set_postfix(loss=f"{sum(window) / len(window):.4g}")

        mode = ("last" if preview else "none") if isinstance(preview, bool) else preview
        on_save = (previewer(trainer, setup.pipe, setup.dataset, out, every=mode == "every")
                   if mode != "none" and setup.pipe is not None else None)
        start = time.perf_counter()
        try:
            trainer.run(on_step=on_step, run_dir=out, checkpoint_every=checkpoint_every or max(1, steps // 10),
                        on_save=on_save)
        finally:
            if bar is not None:
                bar.close()
    seconds = time.perf_counter() - start
    tail = trainer.losses[-min(100, len(trainer.losses)):]
    return {"out": str(out), "steps": trainer.step, "seconds": round(seconds, 3),
            "first_loss": trainer.losses[0] if trainer.losses else None,
            "final_loss": sum(tail) / len(tail) if tail else None, "skipped_steps": trainer.skipped,
            "device": str(world.device), "processes": world.size,
            "threads": torch.get_num_threads()}

