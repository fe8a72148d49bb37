"""Training from a spec: what ``diffcore train`` and ``diffcore demo`` run, callable from Python.

:func:`setup_training` assembles a :class:`~diffcore.training.loop.Trainer` from a spec with
``objective``, ``data`` and ``train`` sections; :func:`run_training` trains it with a progress bar,
checkpoints and previews, as ``diffcore train`` does::

    from diffcore.training.setup import run_training, setup_training

    setup = setup_training("examples/train_moons.yaml", device="cpu", overrides=["train.steps=200"])
    summary = run_training(setup, Path("runs/moons"))
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffcore.data import Dataset
from diffcore.devices import resolve_device
from diffcore.distributed import World
from diffcore.errors import UsageError
from diffcore.objective import Objective
from diffcore.pipeline import Pipeline
from diffcore.registry import Registry, get_registry
from diffcore.spec import PipelineSpecBase, load_spec
from diffcore.training.loop import Trainer


@dataclass
class TrainingSetup:
    """A spec assembled for training: the untrained pipeline (its model is ``trainer.model``, on the
    training device), the data set and the trainer."""

    spec: PipelineSpecBase
    pipe: Pipeline
    dataset: Dataset
    trainer: Trainer


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
    for field in ("objective", "data", "train"):
        if getattr(spec, field) is None:
            raise UsageError(f"{source or '<spec>'}: training needs `{field}` in the spec; see `diffcore list` "
                             "for objectives and datasets, and docs/user-guide.md for `train`")
    target = world.device if world is not None else resolve_device(device)
    torch.manual_seed(spec.train.seed)  # type: ignore[attr-defined]  # the model's initial weights
    pipe = Pipeline.from_spec(spec, registry=registry)
    obj_type, obj_params = spec.component("objective")
    objective = registry.build("objective", obj_type, **obj_params)
    assert isinstance(objective, Objective)
    if dataset is None:
        data_type, data_params = spec.component("data")
        built = registry.build("dataset", data_type, **data_params)
        assert isinstance(built, Dataset)
        dataset = built
    x, labels = dataset.split("train")
    use_labels = labels is not None and pipe.model.conditional
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


def run_training(setup: TrainingSetup, out: Path, *, resume: Path | None = None,
                 checkpoint_every: int | None = None, preview: bool = True) -> dict[str, Any]:
    """Train ``setup`` to ``train.steps`` as ``diffcore train`` does: resume from ``resume`` (a run
    directory or checkpoint), checkpoint into ``out`` every ``checkpoint_every`` steps (default: a tenth
    of the run) and at the end, with a loss curve and a picture of EMA samples at each checkpoint
    unless ``preview`` is false, and a progress bar on the main process. Returns the summary
    ``diffcore train`` prints (``out``, ``steps``, ``seconds``, ``first_loss``, ``final_loss``, ...)."""
    from tqdm import tqdm

    from diffcore.training.preview import previewer

    trainer, world = setup.trainer, setup.trainer.world
    if resume is not None:
        trainer.load(resume)
    steps = trainer.config.steps
    bar = tqdm(total=steps, initial=trainer.step, desc="train", unit="step", dynamic_ncols=True,
               disable=None if world.is_main else True)

    def on_step(step: int, loss: float) -> None:
        bar.update(1)
        if step % 10 == 0 or step == steps:
            window = trainer.losses[-50:]
            bar.set_postfix(loss=f"{sum(window) / len(window):.4g}")

    on_save = previewer(trainer, setup.pipe, setup.dataset, out) if preview else None
    start = time.perf_counter()
    try:
        trainer.run(on_step=on_step, run_dir=out, checkpoint_every=checkpoint_every or max(1, steps // 10),
                    on_save=on_save)
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    tail = trainer.losses[-min(100, len(trainer.losses)):]
    return {"out": str(out), "steps": trainer.step, "seconds": round(seconds, 3),
            "first_loss": trainer.losses[0] if trainer.losses else None,
            "final_loss": sum(tail) / max(1, len(tail)), "device": str(world.device), "processes": world.size}

