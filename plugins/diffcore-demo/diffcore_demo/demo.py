"""``diffcore demo``: train a small score model on a 2-D data set, sample it with two samplers, and
write pictures and a report.

The default spec (:data:`DEMO_SPEC`, read from the package file ``demo_moons.yaml``, which
``examples/demo_moons.yaml`` links to) trains an MLP that
predicts the noise ``eps`` of a VP SDE with denoising score matching on two moons, in about a
minute on two CPU cores. The EMA model is then sampled with the spec's sampler (Euler-Maruyama on
the reverse SDE) and with the probability-flow ODE (:data:`ODE_SAMPLER`); both sample sets are
mapped back to the raw data range and compared with the held-out split by the energy distance,
next to the data-vs-data floor: what sets of real points of the same size score against the same
held-out points (see :class:`Floor`).

Writes, under ``--out``: ``run/`` (checkpoints, so ``diffcore sample OUT/run`` works),
``data_vs_samples.png``, ``loss.png``, ``report.txt`` and ``report.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffcore.data import Dataset
from diffcore.devices import resolve_device
from diffcore.errors import UsageError
from diffcore.messages import unknown_name_message
from diffcore.metrics import energy_distance
from diffcore.model import ScoreModel
from diffcore.pipeline import Pipeline
from diffcore.registry import get_registry
from diffcore.spec import PipelineSpecBase, apply_overrides, read_spec, validate_spec
from diffcore.threads import cpu_threads
from diffcore.training import Trainer
from diffcore.training.setup import TrainingSetup, setup_training
from diffcore.utils import atomic_write, progress_bar

SPEC_FILE = "demo_moons.yaml"
"""The package file holding the demo's default spec."""


def read_default_spec() -> dict[str, Any]:
    """The demo's default spec: the package file :data:`SPEC_FILE`, read with diffcore's safe spec
    reader."""
    with resources.as_file(resources.files("diffcore_demo") / SPEC_FILE) as path:
        return read_spec(path)


DEMO_SPEC: dict[str, Any] = read_default_spec()
"""The demo's default spec (``demo_moons.yaml`` of this package; ``examples/demo_moons.yaml``)."""

ODE_SAMPLER: dict[str, Any] = {"type": "probability_flow", "method": "dopri5", "rtol": 1e-3, "atol": 1e-3}
"""The second sampler: the probability-flow ODE, adaptive Dormand-Prince."""

FLOOR_REPEATS = 5
"""Random subsets of the training split compared with the held-out split for the floor."""

DATA_PRESETS: dict[str, dict[str, Any]] = {
    "gmm_samples": {"weights": [0.2, 0.5, 0.3], "means": [[-4.0, 0.0], [0.0, 4.0], [4.0, -1.0]],
                    "variances": [[1.0, 0.5], [0.6, 0.6], [0.3, 1.2]]},
}
"""Parameters a data set needs beyond the defaults (``--data gmm_samples``: the mixture of
``examples/gmm2d.yaml``); ``--set data.<name>=...`` overrides them."""

KEPT_DATA_FIELDS = ("num", "seed", "holdout", "split_seed", "scale", "dequantize")
"""Data fields ``--data`` carries over to the new data set (when it accepts them); the others
(``noise``, ...) belong to the replaced data set and are dropped."""


# ---------------------------------------------------------------------------------------------
# The spec
# ---------------------------------------------------------------------------------------------


def demo_spec(data: str | None = None, steps: int | None = None, seed: int | None = None,
              overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """:data:`DEMO_SPEC` with the data set replaced by ``data``, ``train.steps`` and ``train.seed``
    set, then the ``--set`` ``overrides`` applied (they win)."""
    spec = copy.deepcopy(DEMO_SPEC)
    if data is not None:
        spec["data"] = replace_data(spec["data"], data)
    if steps is not None:
        spec["train"]["steps"] = steps
    if seed is not None:
        spec["train"]["seed"] = seed
    return apply_overrides(spec, list(overrides))


def replace_data(current: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The data section for data set ``name``: the general fields of ``current`` it accepts, plus
    its :data:`DATA_PRESETS`."""
    registry = get_registry()
    names = registry.names("dataset")
    if name not in names:
        raise UsageError(f"--data: {unknown_name_message('dataset', name, names)}")
    accepted = registry.get("dataset", name).Params.model_fields
    kept = {k: v for k, v in current.items() if k in KEPT_DATA_FIELDS and k in accepted}
    return {"type": name, **kept, **copy.deepcopy(DATA_PRESETS.get(name, {}))}


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Floor:
    """What a perfect sampler scores: the energy distance between ``n`` real points and the ``m``
    held-out points, as a root mean square over ``repeats`` sets of real points (``method``: fresh
    draws of the data set with other seeds, or, for a data set without a seed, random subsets of the
    training split). The estimator is unbiased, so for real data it scatters around 0 with this spread."""

    energy_distance_rms: float
    mean: float
    std: float
    values: list[float]
    n: int
    m: int
    method: str


def real_point_sets(dataset: Dataset, train: Tensor, n: int, repeats: int, seed: int) -> tuple[list[Tensor], str]:
    """``repeats`` sets of real points, raw units, none from the held-out split, and how they were
    drawn: ``n`` fresh points each when the data set has ``num`` and ``seed`` parameters (seeds after
    its own), otherwise ``min(n, N)`` random rows of ``train`` ``(N, 2)``."""
    params = dataset.params.model_dump()
    if "num" in params and "seed" in params:
        registry = get_registry()
        fresh = [registry.build("dataset", dataset.name, **{**params, "num": n, "seed": params["seed"] + 1 + k})
                 for k in range(repeats)]
        return [d.arrays()[0] for d in fresh if isinstance(d, Dataset)], "fresh draws of the data set"
    g = torch.Generator().manual_seed(seed)
    size = min(n, train.shape[0])
    subsets = [train[torch.randperm(train.shape[0], generator=g)[:size]] for _ in range(repeats)]
    return subsets, "random subsets of the training split"


def data_floor(dataset: Dataset, train: Tensor, test: Tensor, n: int, *, repeats: int = FLOOR_REPEATS,
               seed: int = 0) -> Floor:
    """:class:`Floor` of ``dataset`` for ``n`` samples against ``test`` ``(M, 2)`` (raw units); ``train``
    ``(N, 2)`` (raw units) is the fallback source of real points."""
    sets, method = real_point_sets(dataset, train, n, repeats, seed)
    values = [energy_distance(x, test) for x in sets]
    k = len(values)
    mean = sum(values) / k
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (k - 1)) if k > 1 else 0.0
    rms = math.sqrt(sum(v * v for v in values) / k)
    return Floor(energy_distance_rms=rms, mean=mean, std=std, values=values, n=sets[0].shape[0],
                 m=test.shape[0], method=method)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


@dataclass
class SamplerReport:
    """One sampler's row of the report."""

    name: str
    params: dict[str, Any]
    num: int
    nfe: int
    seconds: float
    energy_distance: float
    floor: float
    ratio: float | None
    z: float | None


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse impossible option values with the fix (the numbers are bounded by the parser)."""
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} is a file; give a folder (it is created if missing)")


def check_two_dimensional(name: str, x: Tensor) -> None:
    """Refuse a data set whose samples are not 2-D points (``x`` must be ``(N, 2)``)."""
    if x.ndim != 2 or x.shape[1] != 2:
        raise UsageError(f"data set {name!r} gives samples of shape {tuple(x.shape[1:])} but the demo needs 2-D "
                         "points (N, 2); pick a 2-D set with --data (moons, swiss_roll, checkerboard, rings, "
                         "gmm_samples), or use `diffcore train` with a spec for other data")


def training_progress(total: int) -> Callable[[int, float], None]:
    """An ``on_step(step, loss)`` callback driving a tqdm bar on stderr, shown only when stderr is
    a terminal; the bar closes itself at step ``total``."""
    bar = progress_bar(total, "training", "step")

    def on_step(step: int, loss: float) -> None:
        if bar is None:
            return
        bar.update(1)
        if step % 25 == 0 or step == total:
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        if step >= total:
            bar.close()

    return on_step


def run(args: argparse.Namespace) -> int:
    """Run the demo (on the ``--threads`` that ``diffcore``'s entry point applies to every command);
    prints the report and returns 0."""
    check_arguments(args)
    with cpu_threads(args.threads):  # the entry point's choice when it made one (nested calls keep it)
        return run_demo(args)


@dataclass
class Setup:
    """The validated spec, the data splits (model range, on CPU), the assembled, untrained pipeline and
    the training set-up (its trainer, on the demo's device)."""

    spec: PipelineSpecBase
    dataset: Dataset
    pipe: Pipeline
    x_train: Tensor
    x_test: Tensor
    training: TrainingSetup


def set_up(args: argparse.Namespace, device: torch.device) -> Setup:
    """Build the spec from the arguments, load and check the data, assemble the pipeline and its
    trainer on ``device`` as ``diffcore train`` does (:func:`diffcore.training.setup.setup_training`)."""
    registry = get_registry()
    spec = validate_spec(demo_spec(args.data, args.steps, args.seed, args.overrides), source="diffcore demo")
    data_type, data_params = spec.component("data")
    dataset = registry.build("dataset", data_type, **data_params)
    assert isinstance(dataset, Dataset)
    check_two_dimensional(data_type, dataset.arrays()[0])
    x_train = dataset.split("train")[0]
    x_test = dataset.split("test")[0]
    if x_test.shape[0] < 2:
        raise UsageError(f"the held-out split of {data_type!r} has {x_test.shape[0]} points; the report compares "
                         "samples with it: raise data.holdout (e.g. --set data.holdout=0.3)")
    with torch.random.fork_rng(devices=[]):  # the initial weights follow train.seed; the caller's state is kept
        training = setup_training(spec, device=device, dataset=dataset, registry=registry, source="diffcore demo")
    assert training.pipe is not None  # a demo spec trains a score model
    return Setup(spec, dataset, training.pipe, x_train, x_test, training)


def train(setup: Setup, run_dir: Path) -> Trainer[ScoreModel]:
    """Train the model of ``setup`` as ``diffcore train`` does, with a checkpoint at the end in
    ``run_dir``; returns the trainer (losses, EMA)."""
    trainer = setup.training.trainer
    steps = trainer.config.steps
    trainer.run(on_step=training_progress(steps), run_dir=run_dir, checkpoint_every=steps)
    return trainer


def sample_and_compare(setup: Setup, model: ScoreModel, num: int, seed: int,
                       device: torch.device) -> tuple[list[SamplerReport], list[tuple[str, Tensor]], Floor]:
    """Sample ``model`` with the spec's sampler and :data:`ODE_SAMPLER`, ``num`` points each; returns
    a report row per sampler, the scatter panels (held-out data, then each sampler's samples
    ``(num, 2)``, raw units) and the data-vs-data :class:`Floor`."""
    pipe, dataset = setup.pipe, setup.dataset
    sde = Pipeline(pipe.process, model, pipe.sampler, pipe.guidance, pipe.shape)
    ode_params = {k: v for k, v in ODE_SAMPLER.items() if k != "type"}
    samplers = [(pipe.sampler.name, setup.spec.component("sampler")[1], sde),
                (ODE_SAMPLER["type"], ode_params, sde.with_sampler(ODE_SAMPLER["type"], **ode_params))]
    test = dataset.to_raw(setup.x_test)
    floor = data_floor(dataset, dataset.to_raw(setup.x_train), test, num, seed=seed)
    rows: list[SamplerReport] = []
    panels: list[tuple[str, Tensor]] = [("held-out data", test)]
    for name, params, sampler_pipe in samplers:
        start = time.perf_counter()
        result = sampler_pipe.sample(num, seed=seed, device=device)
        seconds = time.perf_counter() - start
        x = dataset.to_raw(result.x.detach().cpu())
        ed = energy_distance(x, test)
        ratio = ed / floor.energy_distance_rms if floor.energy_distance_rms > 0 else None
        z = (ed - floor.mean) / floor.std if floor.std > 0 else None
        rows.append(SamplerReport(name=name, params=params, num=num, nfe=result.nfe, seconds=seconds,
                                  energy_distance=ed, floor=floor.energy_distance_rms, ratio=ratio, z=z))
        panels.append((f"{name} (NFE {result.nfe})", x))
    return rows, panels, floor


def run_demo(args: argparse.Namespace) -> int:
    """Train, sample, measure, plot and report (see the module docstring)."""
    from diffcore import plots

    start = time.perf_counter()
    device = resolve_device(args.device)
    setup = set_up(args, device)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    train_start = time.perf_counter()
    trainer = train(setup, out / "run")
    train_seconds = time.perf_counter() - train_start
    rows, panels, floor = sample_and_compare(setup, trainer.ema_model(), args.num, args.seed, device)

    data_type, obj_type = setup.spec.component("data")[0], setup.spec.component("objective")[0]
    files = {"samples_png": out / "data_vs_samples.png", "loss_png": out / "loss.png",
             "report_txt": out / "report.txt", "report_json": out / "report.json", "run": out / "run"}
    plots.save_scatter(panels, files["samples_png"], limits=plots.scatter_limits(panels[0][1]))
    plots.save_loss_curve(trainer.losses, files["loss_png"], title=f"training loss ({data_type}, {obj_type})")
    tail = trainer.losses[-min(100, len(trainer.losses)):]
    report: dict[str, Any] = {
        "data": data_type, "device": str(device), "seed": args.seed, "threads": torch.get_num_threads(),
        "train": {"steps": trainer.step, "seconds": round(train_seconds, 3), "first_loss": trainer.losses[0],
                  "final_loss": sum(tail) / len(tail), "final_loss_window": len(tail),
                  "train_points": int(setup.x_train.shape[0])},
        "heldout_points": int(setup.x_test.shape[0]),
        "floor": asdict(floor),
        "samplers": [asdict(r) for r in rows],
        "files": {k: str(v) for k, v in files.items()},
        "spec": setup.spec.model_dump(mode="json"),
        "total_seconds": round(time.perf_counter() - start, 3),
    }
    text = format_report(report)
    atomic_write(files["report_json"], json.dumps(report, indent=2) + "\n")
    atomic_write(files["report_txt"], text)
    print(text, end="")
    return 0


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


def format_report(report: Mapping[str, Any]) -> str:
    """The human-readable report of :func:`run`'s ``report`` mapping."""
    tr, floor = report["train"], report["floor"]
    spec = report["spec"]
    lines = [
        f"diffcore demo: {report['data']} ({tr['train_points']} training points, {report['heldout_points']} held out)",
        f"model: {spec['model']['type']} predicting {spec['model'].get('output', '?')}, process "
        f"{spec['process']['type']}, objective {spec['objective']['type']}, device {report['device']}",
        f"training: {tr['steps']} steps in {tr['seconds']:.1f} s; loss {tr['first_loss']:.4f} (first step) -> "
        f"{tr['final_loss']:.4f} (mean of the last {tr['final_loss_window']})",
        "",
        f"energy distance of {report['samplers'][0]['num']} samples to the {floor['m']} held-out points "
        "(raw units, lower is better)",
        f"floor = what real data scores: {len(floor['values'])} sets of {floor['n']} real points ({floor['method']}) "
        f"score {floor['mean']:.2e} +- {floor['std']:.1e}, rms {floor['energy_distance_rms']:.2e}",
        f"  {'sampler':<18} {'NFE':>5} {'seconds':>8} {'energy dist':>12} {'floor':>10} {'ratio':>8} {'z':>8}",
    ]
    for row in report["samplers"]:
        lines.append(f"  {row['name']:<18} {row['nfe']:>5} {row['seconds']:>8.1f} {row['energy_distance']:>12.2e} "
                     f"{row['floor']:>10.2e} {_number(row['ratio']):>8} {_number(row['z']):>8}")
    lines += [
        "ratio = energy distance / floor rms; z = (energy distance - real data's mean) / its sd. With |ratio| and",
        "z up to about 2 the energy distance cannot tell the samples from real data at this n (it scatters",
        "around 0, negative values included). It mostly sees large-scale errors (misplaced mass, missing",
        "modes): look at the picture for the detail.",
        "",
        f"total: {report['total_seconds']:.1f} s",
        "wrote:",
        *(f"  {path}" for path in report["files"].values()),
        f"sample the trained model again: diffcore sample {report['files']['run']} --num 1000 --out samples.npy",
        f"  with the probability flow as above: add --sampler probability_flow --set sampler.rtol="
        f"{ODE_SAMPLER['rtol']:g} --set sampler.atol={ODE_SAMPLER['atol']:g} (the sampler's own default, 1e-5, takes "
        "about four times the NFE)",
    ]
    return "\n".join(lines) + "\n"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"
