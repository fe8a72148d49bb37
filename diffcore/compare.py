"""Compare samplers on one pipeline at several NFE budgets: what ``diffcore compare`` runs.

::

    result = compare("examples/gmm2d.yaml", budgets=(10, 20))
    print(result.to_table())            # one block per budget, best first
    result.best_per_budget()            # {10: Run(sampler='...', ...), 20: ...}
    save_compare_plot(result, "compare.png")

Every sampler runs with its own defaults (order, grid, final denoising) and its size parameter set
to the largest value whose measured NFE does not exceed the budget (:mod:`diffcore.budgets`); all
runs share the seed, hence the prior draws. Quality is measured against a reference
(:func:`reference_for`):

- an analytic ``gmm`` model: exact draws of ``p_0`` (:data:`REFERENCE_NUM` of them); the noise floor
  is the RMS energy distance of :data:`FLOOR_SETS` fresh sets of exact draws, each of the run size,
  against the same reference;
- a spec or run with a data section: the held-out split (``data.holdout``), in the model's range; the
  floor is what real training data of the run size (a seeded random subset of the training split)
  score against it.

Metrics: the energy distance (:func:`diffcore.metrics.energy_distance`, unbiased: its expectation is 0
for exact samples, so it can be slightly negative) for every shape, and the Frechet distance in value
space (:func:`diffcore.metrics.frechet_distance`, biased upwards at finite sizes) for images (samples
of two or more axes); the best per budget is ranked by the Frechet distance for images, the energy
distance otherwise.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffcore.budgets import BudgetPlan, budget_plan, fit_budget
from diffcore.component import check_compatible
from diffcore.errors import CompatibilityError, DiffcoreError, UsageError
from diffcore.metrics import energy_distance, frechet_distance, mean_self_distance
from diffcore.pipeline import Pipeline
from diffcore.registry import Registry, get_registry
from diffcore.sampler import Sampler
from diffcore.utils import progress_bar

DEFAULT_BUDGETS = (5, 10, 20, 50)
"""NFE budgets of :func:`compare` and ``diffcore compare``."""
DEFAULT_NUM = 2000
"""Samples per run."""
REFERENCE_NUM = 5000
"""Exact draws of ``p_0`` in the reference of an analytic model."""
FLOOR_SETS = 3
"""Independent sets of exact draws whose RMS energy distance is the floor of an analytic model."""
CHART_RANGE = 100.0
"""The plot's y-axis ends this many times above the best value at the smallest budget."""
TIE_FLOORS = 2
"""Energy distances within this many floors of the best are reported as tied with it."""
PROBE_NUM = 2
"""Samples of each probe that measures a size's NFE."""


@dataclass(frozen=True)
class Run:
    """One sampler at one budget: the size and defaults replaced (``params``), the NFE measured,
    the wall time of sampling ``num`` samples, the metrics (``None`` when it did not run: ``note``
    says why)."""

    sampler: str
    budget: int
    params: dict[str, Any]
    nfe: int | None
    seconds: float | None
    ed: float | None
    fd: float | None = None
    note: str = ""

    def score(self, metric: str) -> float:
        value = self.fd if metric == "fd" else self.ed
        return math.inf if value is None else value


@dataclass
class Reference:
    """Reference samples ``y`` ``(m, *shape)`` and independent true samples ``floor_sets`` (each
    ``(num, *shape)``) whose metrics against ``y`` are the noise floor; in the model's range."""

    y: Tensor
    floor_sets: list[Tensor]
    description: str
    floor_description: str
    _self_term: float | None = field(default=None, repr=False)

    def energy_distance(self, x: Tensor) -> float:
        """:func:`diffcore.metrics.energy_distance` of ``x`` ``(n, *shape)`` against ``y``, with the
        reference's own term ``E|Y - Y'|`` (the costly one) computed once."""
        if self._self_term is None:
            self._self_term = mean_self_distance(self.y)
        return energy_distance(x, self.y, y_self=self._self_term)

    def frechet_distance(self, x: Tensor) -> float:
        """:func:`diffcore.metrics.frechet_distance` of ``x`` against ``y``."""
        return frechet_distance(x, self.y)


@dataclass
class CompareResult:
    """Every :class:`Run`, the floor, and what was compared (see :func:`compare`)."""

    source: str
    num: int
    seed: int
    budgets: list[int]
    samplers: list[str]
    metric: str
    """``"fd"`` (images) or ``"ed"``: the metric that ranks the samplers."""
    reference: str
    floor_description: str
    floor_ed: float
    floor_fd: float | None
    rows: list[Run] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    """Registered samplers left out of a default run, with why (incompatible with the process)."""
    notes: dict[str, str] = field(default_factory=dict)
    """Samplers whose defaults were changed to meet the budgets, with what changed."""

    def best_per_budget(self) -> dict[int, Run]:
        """The run of lowest :attr:`metric` at each budget (budgets where nothing ran are absent)."""
        best: dict[int, Run] = {}
        for row in self.rows:
            if row.nfe is None:
                continue
            if row.budget not in best or row.score(self.metric) < best[row.budget].score(self.metric):
                best[row.budget] = row
        return best

    def tied_with_best(self, budget: int) -> list[str]:
        """The other samplers whose energy distance at ``budget`` is within :data:`TIE_FLOORS` floors of
        the best's: indistinguishable from it at this sample size (``[]`` when ranking by the Frechet
        distance, whose floor is a bias rather than a noise level)."""
        best = self.best_per_budget().get(budget)
        if best is None or self.metric != "ed" or best.ed is None:
            return []
        limit = best.ed + TIE_FLOORS * self.floor_ed
        return [r.sampler for r in sorted(self.rows, key=lambda r: r.score("ed"))
                if r.budget == budget and r is not best and r.ed is not None and r.ed <= limit]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary: the settings, the floor, every row, the best sampler per budget."""
        return {
            "source": self.source, "num": self.num, "seed": self.seed, "budgets": self.budgets,
            "samplers": self.samplers, "metric": self.metric, "reference": self.reference,
            "floor": {"ed": self.floor_ed, "fd": self.floor_fd, "description": self.floor_description},
            "rows": [asdict(r) for r in self.rows],
            "best": {str(b): r.sampler for b, r in self.best_per_budget().items()},
            "tied": {str(b): self.tied_with_best(b) for b in self.best_per_budget()},
            "skipped": self.skipped, "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompareResult:
        """The result of :meth:`to_dict` (or of ``diffcore compare --json``) read back."""
        floor = data["floor"]
        return cls(source=data["source"], num=data["num"], seed=data["seed"], budgets=list(data["budgets"]),
                   samplers=list(data["samplers"]), metric=data["metric"], reference=data["reference"],
                   floor_description=floor["description"], floor_ed=floor["ed"], floor_fd=floor["fd"],
                   rows=[Run(**row) for row in data["rows"]], skipped=dict(data.get("skipped", {})),
                   notes=dict(data.get("notes", {})))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_table(self) -> str:
        """A text table: one block per budget, best first, the floor on top, notes below."""
        images = self.floor_fd is not None
        name = "Frechet distance (FD)" if self.metric == "fd" else "energy distance (ED)"
        lines = [f"{self.source}: {len(self.samplers)} samplers at NFE <= {', '.join(map(str, self.budgets))}; "
                 f"{self.num} samples per run, seed {self.seed}; ranked by {name}",
                 f"reference: {self.reference}",
                 f"noise floor ({self.floor_description}): ED {self.floor_ed:.2e}"
                 + (f", FD {self.floor_fd:.4g}" if images and self.floor_fd is not None else "")]
        width = max([len(s) for s in self.samplers] + [7])
        header = f"  {'sampler':<{width}}  {'size':<14} {'NFE':>4} {'ED':>10} {'ED/floor':>9}"
        header += f" {'FD':>9}" if images else ""
        header += f" {'seconds':>8}"
        best = self.best_per_budget()
        for budget in self.budgets:
            rows = sorted((r for r in self.rows if r.budget == budget), key=lambda r: r.score(self.metric))
            lines += ["", f"NFE <= {budget}", header]
            for r in rows:
                if r.nfe is None:
                    lines.append(f"  {r.sampler:<{width}}  {r.note}")
                    continue
                size = ", ".join(f"{k}={v}" for k, v in r.params.items() if k in _SIZE_KEYS)
                assert r.ed is not None and r.seconds is not None
                ratio = r.ed / self.floor_ed if self.floor_ed > 0 else math.nan
                text = f"  {r.sampler:<{width}}  {size:<14} {r.nfe:>4} {r.ed:>10.2e} {ratio:>9.1f}"
                text += f" {r.fd:>9.4g}" if images and r.fd is not None else ""
                text += f" {r.seconds:>8.2f}" + ("  <- best" if best.get(budget) is r else "")
                lines.append(text)
        lines += ["", "best per budget:"]
        for b, r in best.items():
            tied = self.tied_with_best(b)
            lines.append(f"  NFE <= {b}: {r.sampler} (NFE {r.nfe})"
                         + (f"; within {TIE_FLOORS} floors of it: {', '.join(tied)}" if tied else ""))
        for sampler, note in self.notes.items():
            lines.append(f"note: {sampler}: {note}")
        for sampler, why in self.skipped.items():
            lines.append(f"skipped: {sampler}: {why}")
        return "\n".join(lines) + "\n"


_SIZE_KEYS = ("steps", "levels", "iterations")


# ---------------------------------------------------------------------------------------------
# Reference
# ---------------------------------------------------------------------------------------------


def exact_reference(pipe: Pipeline, num: int, *, seed: int = 0, reference_num: int = REFERENCE_NUM,
                    floor_sets: int = FLOOR_SETS) -> Reference:
    """Exact draws of the analytic Gaussian mixture of ``pipe``'s ``gmm`` model: ``reference_num``
    for the reference, then ``floor_sets`` independent sets of ``num`` (one generator seeded from
    ``seed``, so the sets never overlap the reference)."""
    model = pipe.model
    log_w, means, variances = (getattr(model, k, None) for k in ("log_weights", "means", "variances"))
    if not all(isinstance(t, Tensor) for t in (log_w, means, variances)):
        raise UsageError(f"model {model.name!r} has no exact sampler: compare needs the gmm model or a data section")
    assert isinstance(log_w, Tensor) and isinstance(means, Tensor) and isinstance(variances, Tensor)
    log_w, means, std = log_w.cpu().double(), means.cpu().double(), variances.cpu().double().sqrt()
    generator = torch.Generator().manual_seed(10_000 + seed)

    def draw(n: int) -> Tensor:
        k = torch.multinomial(log_w.exp(), n, replacement=True, generator=generator)
        z = torch.randn(n, means.shape[1], generator=generator, dtype=torch.float64)
        return (means[k] + std[k] * z).reshape(n, *pipe.shape)

    y = draw(reference_num)
    return Reference(y, [draw(num) for _ in range(floor_sets)],
                     f"{reference_num} exact draws of the {model.name} model's p_0",
                     f"RMS over {floor_sets} sets of {num} fresh exact draws against the reference")


def data_reference(pipe: Pipeline, num: int, *, seed: int = 0) -> Reference:
    """The held-out split of ``pipe``'s spec's data section (model range) as the reference; the floor
    set is ``num`` rows of the training split (a seeded random subset; all of it when smaller)."""
    spec = pipe.spec
    if spec is None or getattr(spec, "data", None) is None:
        raise UsageError("compare needs a reference: a spec or run with a data section (its held-out split), or "
                         "an analytic gmm model (exact draws); from Python, pass reference=")
    data_type, params = spec.component("data")
    dataset = get_registry().build("dataset", data_type, **params)
    x_train, _ = dataset.split("train")  # type: ignore[attr-defined]
    x_test, _ = dataset.split("test")  # type: ignore[attr-defined]
    if x_test.shape[0] < 2:
        raise UsageError(f"the data set {data_type!r} has no held-out split to compare against: set data.holdout "
                         "(e.g. --set data.holdout=0.3) to the fraction the run was trained with held out")
    generator = torch.Generator().manual_seed(20_000 + seed)
    rows = torch.randperm(x_train.shape[0], generator=generator)[:num]
    used = rows.shape[0]
    return Reference(x_test.reshape(-1, *pipe.shape).double(), [x_train[rows].reshape(-1, *pipe.shape).double()],
                     f"the {x_test.shape[0]} held-out rows of the {data_type} data (split_seed "
                     f"{params.get('split_seed', 0)}, model range)",
                     f"{used} training rows against the held-out ones"
                     + (f" (the whole training split: fewer than {num})" if used < num else ""))


def reference_for(pipe: Pipeline, num: int, *, seed: int = 0) -> Reference:
    """:func:`exact_reference` for an analytic mixture model, else :func:`data_reference`."""
    if all(isinstance(getattr(pipe.model, k, None), Tensor) for k in ("log_weights", "means", "variances")):
        return exact_reference(pipe, num, seed=seed)
    return data_reference(pipe, num, seed=seed)


# ---------------------------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------------------------


def select_samplers(pipe: Pipeline, names: Sequence[str] | None = None,
                    registry: Registry | None = None) -> tuple[list[str], dict[str, str]]:
    """The samplers to compare and the registered ones left out with why. ``None``: every registered
    sampler compatible with ``pipe``'s process; named ones are checked: an unknown name raises
    :class:`~diffcore.errors.RegistryError` (listing the registered ones), an incompatible one
    :class:`~diffcore.errors.CompatibilityError` with the reason."""
    registry = registry or get_registry()
    candidates = list(names) if names is not None else registry.names("sampler")
    chosen, skipped = [], {}
    for name in candidates:
        plan = budget_plan(name, registry)  # raises for an unknown name
        sampler = registry.build("sampler", name, **dict(plan.params))
        try:
            check_compatible(sampler, pipe.process)
        except CompatibilityError as exc:
            if names is not None:
                ok = [n for n in registry.names("sampler") if _compatible(registry, n, pipe)]
                raise CompatibilityError(f"cannot compare sampler {name!r} on this pipeline: {exc}. Samplers that "
                                         f"fit its process {pipe.process.name!r}: {', '.join(ok)}") from exc
            skipped[name] = str(exc)
            continue
        if name not in chosen:
            chosen.append(name)
    if not chosen:
        raise UsageError("no sampler to compare: give at least one (`diffcore list sampler` lists them)")
    return chosen, skipped


def _compatible(registry: Registry, name: str, pipe: Pipeline) -> bool:
    try:
        check_compatible(registry.build("sampler", name, **dict(budget_plan(name, registry).params)), pipe.process)
    except DiffcoreError:
        return False
    return True


def _fit(pipe: Pipeline, name: str, plan: BudgetPlan, budget: int, seed: int, device: torch.device | str | None,
         cache: dict[tuple[str, int], int]) -> tuple[dict[str, Any], int] | None:
    """The params meeting ``budget`` (size and the plan's replacements) and their probed NFE; ``None``
    when the smallest size needs more."""
    if plan.size is None:
        params = dict(plan.params)
        if (name, 0) not in cache:
            cache[(name, 0)] = _probe(pipe, name, params, seed, device)
        return (params, cache[(name, 0)]) if cache[(name, 0)] <= budget else None

    def nfe_of(size: int) -> int:
        if (name, size) not in cache:
            cache[(name, size)] = _probe(pipe, name, {**plan.params, str(plan.size): size}, seed, device)
        return cache[(name, size)]

    fitted = fit_budget(nfe_of, budget, plan.min_size)
    if fitted is None:
        return None
    return {str(plan.size): fitted[0], **plan.params}, fitted[1]


def _probe(pipe: Pipeline, name: str, params: dict[str, Any], seed: int, device: torch.device | str | None) -> int:
    return pipe.with_sampler(name, **params).sample(PROBE_NUM, seed=seed, device=device).nfe


# ---------------------------------------------------------------------------------------------
# Compare
# ---------------------------------------------------------------------------------------------


def load_pipeline(source: str | Path | Mapping[str, Any] | Pipeline,
                  overrides: Sequence[str] = ()) -> tuple[Pipeline, str]:
    """The pipeline of a spec file, a run directory or checkpoint (EMA weights), or a spec mapping,
    with its description; a :class:`Pipeline` is returned as is."""
    if isinstance(source, Pipeline):
        return source, "pipeline"
    if isinstance(source, Mapping):
        return Pipeline.from_spec(source, overrides), "spec"
    from diffcore.sampling import load_for_sampling

    # the sampler is replaced by each compared one; euler_maruyama fits any process, and lets a run whose
    # saved spec names no sampler load
    pipe, _, _ = load_for_sampling(Path(source), sampler="euler_maruyama", overrides=overrides)
    return pipe, str(source)


def compare(source: str | Path | Mapping[str, Any] | Pipeline, *, samplers: Sequence[str] | None = None,
            budgets: Sequence[int] = DEFAULT_BUDGETS, num: int = DEFAULT_NUM, seed: int = 0,
            reference: Reference | None = None, overrides: Sequence[str] = (),
            device: torch.device | str | None = None, progress: bool = False) -> CompareResult:
    """Run ``samplers`` (default: every registered one compatible with the process) at each NFE
    budget on the pipeline of ``source`` (a spec file, a run directory, a spec mapping or a
    :class:`Pipeline`) and measure them against ``reference`` (default :func:`reference_for`).

    ``num`` samples per run from ``seed`` (the same prior draws for all); ``progress``: a bar over the
    runs on stderr (:func:`diffcore.utils.progress_bar`: only on a terminal), showing the last run's
    result. A sampler failing at some budget (NaN, say) gets a row with the error as its note.
    """
    budgets = sorted({int(b) for b in budgets})
    if not budgets or budgets[0] < 1:
        raise UsageError(f"budgets must be positive integers, got {list(budgets)}")
    if num < 2:
        raise UsageError(f"compare needs at least 2 samples per run, got {num}")
    pipe, description = load_pipeline(source, overrides)
    names, skipped = select_samplers(pipe, samplers)
    ref = reference if reference is not None else reference_for(pipe, num, seed=seed)
    images = len(pipe.shape) >= 2
    floor_ed = math.sqrt(sum(ref.energy_distance(x) ** 2 for x in ref.floor_sets) / len(ref.floor_sets))
    floor_fd = sum(ref.frechet_distance(x) for x in ref.floor_sets) / len(ref.floor_sets) if images else None
    result = CompareResult(source=description, num=num, seed=seed, budgets=budgets, samplers=names,
                           metric="fd" if images else "ed", reference=ref.description,
                           floor_description=ref.floor_description, floor_ed=floor_ed, floor_fd=floor_fd,
                           skipped=skipped)
    cache: dict[tuple[str, int], int] = {}
    bar = progress_bar(len(names) * len(budgets), "compare", "run", enabled=progress)
    for name in names:
        plan = budget_plan(name)
        if plan.note:
            result.notes[name] = plan.note
        for budget in budgets:
            row = _run_one(pipe, name, plan, budget, num=num, seed=seed, device=device, ref=ref, images=images,
                           cache=cache)
            result.rows.append(row)
            if bar is not None:
                what = (f"NFE {row.nfe}, ED {row.ed:.2e}" if row.nfe is not None and row.ed is not None
                        else "no run")
                bar.set_postfix_str(f"{name} at NFE <= {budget}: {what}")
                bar.update(1)
    if bar is not None:
        bar.close()
    return result


def _run_one(pipe: Pipeline, name: str, plan: BudgetPlan, budget: int, *, num: int, seed: int,
             device: torch.device | str | None, ref: Reference, images: bool,
             cache: dict[tuple[str, int], int]) -> Run:
    try:
        fitted = _fit(pipe, name, plan, budget, seed, device, cache)
        if fitted is None:
            return Run(name, budget, {}, None, None, None, note=f"its smallest size needs more than {budget} NFE")
        params, _ = fitted
        sampler_pipe = pipe.with_sampler(name, **params)
        assert isinstance(sampler_pipe.sampler, Sampler)
        start = time.perf_counter()
        out = sampler_pipe.sample(num, seed=seed, device=device)
        seconds = time.perf_counter() - start
    except DiffcoreError as exc:  # NaN, a plugin's failure: reported in the table, the others still run
        return Run(name, budget, {}, None, None, None, note=f"failed: {' '.join(str(exc).split())}"[:300])
    x = out.x.detach().cpu().double()
    return Run(name, budget, params, out.nfe, seconds, ref.energy_distance(x),
               ref.frechet_distance(x) if images else None)


# ---------------------------------------------------------------------------------------------
# Plot
# ---------------------------------------------------------------------------------------------


def save_compare_plot(result: CompareResult, path: str | Path) -> Path:
    """A PNG of quality (the ranking metric) against the measured NFE, one line per sampler, log
    x-axis; a log y-axis for the Frechet distance, a symmetric-log one for the energy distance (which
    can be negative) with its linear range the floor; the noise floor drawn as a band (ED: +-floor,
    where exact samples fall) or a line (FD: what real data score)."""
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    from diffcore.plots import _write

    metric = result.metric
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.add_subplot()
    colors = matplotlib.colormaps["tab20"]
    best_runs = result.best_per_budget()
    best = {r.sampler for r in best_runs.values()}
    floor = result.floor_fd if metric == "fd" and result.floor_fd is not None else result.floor_ed
    # the y-axis ends CHART_RANGE times above the best at the smallest budget (or the floor): a sampler far
    # worse than that runs off the top, named so in the legend, rather than squashing the others
    first = best_runs.get(min(best_runs)) if best_runs else None
    top = CHART_RANGE * max(first.score(metric) if first is not None else floor, floor)
    clipped = False
    for i, name in enumerate(result.samplers):
        rows = sorted((r for r in result.rows if r.sampler == name and r.nfe is not None), key=lambda r: r.budget)
        if not rows:
            continue
        xs = [r.nfe or 0 for r in rows]
        ys = [r.score(metric) for r in rows]
        off = max(ys) > top
        clipped |= off
        label = name + (" (above the chart)" if min(ys) > top else " (partly above)" if off else "")
        ax.plot(xs, ys, marker="o", markersize=4, color=colors(i % 20), linewidth=2.2 if name in best else 1.2,
                label=label)
    if metric == "fd":
        ax.axhline(floor, color="black", linestyle="--", linewidth=1.2, label="noise floor (real data)")
        ax.set_yscale("log")
        ax.set_ylabel("Frechet distance to the reference (lower is better)")
    else:
        ax.axhspan(-floor, floor, color="0.6", alpha=0.35, label="noise floor (exact samples, +-RMS)")
        ax.set_yscale("symlog", linthresh=max(floor, 1e-12))
        ax.set_ylabel("energy distance to the reference (lower is better)")
    if clipped:
        ax.set_ylim(top=top)
    ax.set_xscale("log")
    ax.set_xticks(result.budgets, [str(b) for b in result.budgets])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("NFE (measured; budgets at the ticks)")
    ax.set_title(f"diffcore compare: {result.source}, {result.num} samples per run")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    return _write(fig, Path(path))
