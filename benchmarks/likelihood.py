"""Exact likelihood against k-diffusion's ``log_likelihood``: error and NFE side by side on the same
analytic mixtures at matched tolerances, in one run (issue 12; target: no larger error at no more NFE).

    OMP_NUM_THREADS=1 python benchmarks/likelihood.py            # the full table, a few minutes on one thread
    OMP_NUM_THREADS=1 python benchmarks/likelihood.py --quick    # vp and ve, two tolerances, fewer points

What each library computes, on the ``gmm`` model of a mixture (its exact score) under a process with
its default parameters (``vp``, ``ve``, ``subvp``), from points drawn from the mixture, the whole batch
in one solve, float64, ``rtol = atol = tol`` for both:

- **diffcore** :func:`diffcore.likelihood.log_likelihood` (``variable="auto"``): the probability-flow
  ODE in its VE form, ``y = x / alpha_t`` in the noise level ``s = sigma_t / alpha_t`` from ``s(t_min)``
  to ``s(T)`` (dopri5, its last step landing on ``s(T)``; ``t(s)`` clamped to ``[t_min, T]``), with the
  Jacobian ``D log alpha`` at both ends, the divergence (w.r.t. ``y``) by the exact trace
  or by Hutchinson's estimator with one Rademacher probe per point (``K = 1``, k-diffusion's
  estimator), less the control variate ``D s / (1 + s^2)`` (the divergence for unit-Gaussian data, its
  integral added in closed form), the log-density held to ``D atol``, plus the process's prior
  ``N(0, (alpha_T^2 + sigma_T^2) I)`` at the latent: ``log p_{t_min}(x)``.
- **k-diffusion** ``log_likelihood(model, x, sigma_min, sigma_max, atol, rtol)`` (``sampling.py``):
  the same ODE in its VE form, ``dy/ds = (y - D(y, s)) / s`` in the noise level ``s`` from
  ``sigma_min`` to ``sigma_max`` (torchdiffeq dopri5, which may step past ``sigma_max`` and interpolate
  back), integrating ``v^T (d dy/ds / dy) v`` with one Rademacher probe ``v = randint_like(x, 2) * 2 - 1``
  per value, drawn once for the solve from torch's global generator (seeded here): Hutchinson with
  ``K = 1``, no exact option. It adds the prior ``Normal(0, sigma_max)`` at the latent and returns
  ``(log-likelihood (n,), {"fevals": NFE})``: ``log q_{sigma_min}(y)``, the density of ``y``.

Matching them: ``y = x / alpha_t`` and ``s = sigma_t / alpha_t`` (``peers.Denoiser``:
``D(y, s) = y + s^2 alpha_t score(alpha_t y, t)``, ``t`` from ``s`` in closed form, also past ``T``
where dopri5 overshoots), ``sigma_min = s(t_min)``, ``sigma_max = s(T)``. k-diffusion gets the same
points as its start, ``y = x / alpha_{t_min}``, and its result is moved to ``x`` units by the Jacobian,
``log p_{t_min}(x) = log q(y) - D log alpha_{t_min}``. Both are then compared with the same closed
form, the mixture's ``log p_{t_min}(x)`` (the density the ODE starts from; the data's ``log p_0``
differs from it by the ``t_min`` gap printed under the table, which neither library's result contains).
The priors differ by definition: in ``x`` units k-diffusion's is ``N(0, alpha_T^2 sigma_max^2) =
N(0, sigma_T^2)``, diffcore's ``N(0, alpha_T^2 + sigma_T^2)``; neither is the mixture's ``p_T``.

Columns, per dimension (nats / D), over the points: ``err`` the mean signed error of ``log p`` against
the closed form, ``|err|`` the mean absolute error, ``std`` the spread (std of the error over points),
``solve |err|`` the mean absolute error against the exact solution of the ODE the row integrates (the
**flow error** for the exact trace: the result with the prior replaced by the exact ``log p_T`` at the
latent, against the closed form; for Hutchinson's rows, which integrate ``v^T J v`` for their probe
``v``: against the same library's solve with the same probe at ``rtol = atol = 1e-10``), ``prior`` the
mean **prior mismatch** ``log prior(latent) - log p_T(latent)`` (part of each library's ``log p``, the
same for all rows of a case up to the latent's error; pointwise it is first order in ``p_T``'s departure
from the prior and averages out to second order, so it is most of the exact trace's ``|err|`` and
``std``), NFE (score evaluations of the batch's
solve) and seconds (one thread). Hutchinson's ``|err|`` and ``std`` are its probe's noise.

Verdict of each diffcore row against k-diffusion's at the same tolerance ("no larger error at no more
NFE"): ``yes`` when its NFE is no more and both its ``|err|`` and its solve ``|err|`` are no larger;
``|err|`` of a Hutchinson row (different probes from k-diffusion's) may exceed the peer's by two
standard errors of the difference (``yes (noise)``); otherwise ``no:`` with the ratios that fail.
Matched tolerances are nominal: the two integrate different log-density integrands (diffcore's less its
control variate, held to ``D atol``), so the last column compares efficiency directly: the row's solve
``|err|`` over k-diffusion's at the same NFE (k-diffusion's solve ``|err|`` interpolated log-log in NFE
between its tolerances; ``-`` outside the NFE they span; below 1: more accurate per evaluation). Without
k-diffusion installed (``peers.py`` says how) only diffcore's rows are printed, with a notice.

A verdict at one tolerance is close to a coin flip where the two solves take about the same steps:
adaptive solvers' NFE and error move in jumps from one tolerance to the next (the 2-D mixture). So
``--work-precision`` also compares the two libraries' work-precision diagrams (Hairer, Norsett & Wanner,
"Solving Ordinary Differential Equations I", Sec. II.10): each library's solve ``|err|`` and NFE at
:data:`WORK_PRECISION_TOLERANCES` tolerances from 1e-3 to 1e-6, and, at every NFE both span, the
smallest error each reached at no more than that NFE (its envelope); the summary is diffcore's envelope
over k-diffusion's (median, largest, and the share of those NFE at which diffcore's is no larger).

    OMP_NUM_THREADS=1 python benchmarks/likelihood.py --work-precision    # the table, then the diagrams
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import time
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from common import REFERENCE_2D, SEED, Mixture, Setup, make_mixtures, parse_args
from peers import Denoiser, load_k_diffusion
from torch import Tensor

from diffcore.likelihood import LikelihoodOptions, log_likelihood
from diffcore.testing.conformance import sample_mixture
from diffcore_models import GaussianMixture

POINT_SEED = 20_000
"""Seed of the points drawn from each mixture."""
WORK_PRECISION_TOLERANCES = 13
"""Tolerances of ``--work-precision``'s scan, log-spaced from 1e-3 to 1e-6."""
TIGHT = 1e-10
"""``rtol = atol`` of the reference solve of a Hutchinson row: the same probe, the ODE solved to round-off."""


@dataclass(frozen=True)
class Config:
    """What one run measures."""

    processes: list[str]
    tolerances: list[float]
    points: dict[str, int]
    """Points per mixture, by mixture name."""


def config(quick: bool) -> Config:
    if quick:
        return Config(["vp", "ve"], [1e-3, 1e-5], {"reference-2d": 128, "gmm-64d": 32})
    return Config(["vp", "ve", "subvp"], [1e-3, 1e-4, 1e-5, 1e-6], {"reference-2d": 512, "gmm-64d": 128})


@dataclass(frozen=True)
class Row:
    """One library's result on one case: errors per dimension ``(n,)`` and its cost."""

    library: str
    trace: str
    err: Tensor
    flow: Tensor
    prior: Tensor
    nfe: int
    seconds: float
    overshoot: float = 1.0
    """The largest noise level evaluated over ``sigma_max`` (k-diffusion; 1: none past it)."""
    solve: Tensor | None = None
    """The error against the exact solution of the same ODE (:func:`with_solve_error`)."""

    @property
    def abs_err(self) -> float:
        return float(self.err.abs().mean())


class Case:
    """One mixture under one process: the pipeline, the points and the closed forms."""

    def __init__(self, mixture: Mixture, process_type: str, num: int) -> None:
        self.setup = Setup.build(mixture, process_type)
        model = self.setup.pipe.model
        assert isinstance(model, GaussianMixture)
        self.model = model
        self.process = self.setup.process
        self.dim = mixture.dim
        self.x = sample_mixture(mixture.params, num, torch.Generator().manual_seed(POINT_SEED))
        self.t_min, self.T = self.process.t_min, self.process.T
        self.alpha_min = float(self.process.alpha(torch.tensor([self.t_min], dtype=torch.float64)))
        self.log_p_start = self.log_p(self.x, self.t_min)  # log p_{t_min}(x), the closed form compared with

    def log_p(self, x: Tensor, t: float) -> Tensor:
        """The mixture's exact ``log p_t(x)`` ``(n,)`` in ``x`` units."""
        return self.model.log_prob(x, torch.full((x.shape[0],), t, dtype=torch.float64))

    def t_min_gap(self) -> float:
        """Mean ``(log p_{t_min}(x) - log p_0(x)) / D``: the part of ``log p_0`` the ODE does not see."""
        gap = self.log_p_start - self.log_p(self.x, 0.0) if self.t_min > 0 else torch.zeros(1)
        return float(gap.mean()) / self.dim


def diffcore_row(case: Case, trace: str, tol: float) -> Row:
    """diffcore's ``log_likelihood`` with ``trace`` (Hutchinson: one Rademacher probe) at ``rtol = atol = tol``."""
    options = LikelihoodOptions(trace=trace, rtol=tol, atol=tol)  # type: ignore[arg-type]
    result = log_likelihood(case.setup.score, case.process, case.x, options=options, seed=SEED)
    exact_end = case.log_p(result.latent, case.T)
    d = case.dim
    return Row("diffcore", trace, (result.log_prob - case.log_p_start) / d,
               (result.delta_log_prob + exact_end - case.log_p_start) / d,
               (result.prior_log_prob - exact_end) / d, result.nfe, result.seconds)


class RangeDenoiser(Denoiser):
    """:class:`peers.Denoiser` that also records the largest noise level it is asked for."""

    def __init__(self, setup: Setup) -> None:
        super().__init__(setup)
        self.largest = 0.0

    def __call__(self, y: Tensor, s: Tensor) -> Tensor:
        self.largest = max(self.largest, float(s.max()))
        return super().__call__(y, s)


class Recorded:
    """torchdiffeq's ``odeint`` as k-diffusion calls it, passing everything through and keeping the
    solution (the latent and the integral, which ``log_likelihood`` sums without returning)."""

    def __init__(self, odeint: Callable[..., Any]) -> None:
        self.odeint = odeint
        self.solution: Any = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.solution = self.odeint(*args, **kwargs)
        return self.solution


def k_diffusion_row(kd: types.ModuleType, case: Case, tol: float) -> Row:
    """k-diffusion's ``log_likelihood`` from ``y = x / alpha_{t_min}`` over ``[s(t_min), s(T)]``, in ``x``
    units."""
    setup, d = case.setup, case.dim
    denoiser = RangeDenoiser(setup)
    recorded = Recorded(kd.odeint)
    kd.odeint = recorded
    try:
        torch.manual_seed(SEED)  # its probe comes from the global generator
        began = time.perf_counter()
        log_q, info = kd.log_likelihood(denoiser, case.x / case.alpha_min, setup.s_min, setup.s_max,
                                        atol=tol, rtol=tol)
        seconds = time.perf_counter() - began
    finally:
        kd.odeint = recorded.odeint
    log_q = log_q.to(torch.float64)
    jacobian_min = d * math.log(case.alpha_min)  # log q_s(x / alpha) = log p_t(x) + D log alpha
    latent_y, delta = recorded.solution[0][-1], recorded.solution[1][-1].to(torch.float64)
    latent_x = setup.alpha_T * latent_y
    exact_end = case.log_p(latent_x, case.T)  # in x units
    prior_x = torch.distributions.Normal(0.0, setup.s_max).log_prob(latent_y).flatten(1).sum(1) - d * math.log(
        setup.alpha_T)
    log_p = log_q - jacobian_min
    flow = delta + (exact_end + d * math.log(setup.alpha_T)) - (case.log_p_start + jacobian_min)  # in y: exact
    row = Row("k-diffusion", "hutchinson", (log_p - case.log_p_start) / d, flow / d, (prior_x - exact_end) / d,
              int(info["fevals"]), seconds)
    row = replace(row, overshoot=denoiser.largest / setup.s_max)
    assert torch.allclose(log_p, row.flow * d + case.log_p_start + row.prior * d, rtol=0.0, atol=1e-8), \
        "the recorded solution does not add up to k-diffusion's result"
    return row


def with_solve_error(row: Row, reference: Row | None) -> Row:
    """``row`` with its solve error: against the closed form for the exact trace (the flow error), against
    ``reference`` (the same library, trace and probe at :data:`TIGHT`) for Hutchinson's."""
    return replace(row, solve=row.flow if reference is None else row.err - reference.err)


def mean_abs(values: Tensor | None) -> float:
    assert values is not None
    return float(values.abs().mean())


def verdict(row: Row, peer: Row | None) -> str:
    """``yes`` when ``row`` has no larger ``|err|`` and solve ``|err|`` at no more NFE than ``peer``
    (module docstring); ``|err|`` of a Hutchinson row may exceed the peer's by two standard errors."""
    if peer is None or row.library == "k-diffusion":
        return ""
    problems = []
    if row.nfe > peer.nfe:
        problems.append(f"NFE x{row.nfe / peer.nfe:.2f}")
    within_noise = False
    mine, other = mean_abs(row.err), mean_abs(peer.err)
    if mine > other:
        noise = 0.0
        if row.trace == "hutchinson":
            noise = 2.0 * math.hypot(float(row.err.abs().std()), float(peer.err.abs().std())) / math.sqrt(
                row.err.numel())
        if mine <= other + noise:
            within_noise = True
        else:
            problems.append(f"|err| x{mine / other:.2f}")
    if mean_abs(row.solve) > mean_abs(peer.solve):
        problems.append(f"solve x{mean_abs(row.solve) / mean_abs(peer.solve):.2f}")
    if problems:
        return "no: " + ", ".join(problems)
    return "yes (noise)" if within_noise else "yes"


def at_equal_nfe(row: Row, peers: Sequence[Row]) -> str:
    """``row``'s solve ``|err|`` over k-diffusion's at the same NFE, its error interpolated log-log in NFE
    between its tolerances; ``-`` outside the NFE they span."""
    points = sorted((p.nfe, mean_abs(p.solve)) for p in peers)
    for n, e in points:
        if n == row.nfe:
            return f"x{mean_abs(row.solve) / e:.2f}"
    for (n0, e0), (n1, e1) in itertools.pairwise(points):
        if n0 < row.nfe < n1:
            w = math.log(row.nfe / n0) / math.log(n1 / n0)
            return f"x{mean_abs(row.solve) / math.exp((1 - w) * math.log(e0) + w * math.log(e1)):.2f}"
    return "-"


def fmt(value: float) -> str:
    return f"{value:+.1e}"


def case_rows(case: Case, tolerances: Sequence[float], kd: types.ModuleType | None) -> list[tuple[float, list[Row]]]:
    """Every library's rows of ``case`` at each tolerance, with their solve errors."""
    reference = diffcore_row(case, "hutchinson", TIGHT)
    kd_reference = k_diffusion_row(kd, case, TIGHT) if kd is not None else None
    out = []
    for tol in tolerances:
        rows = [with_solve_error(diffcore_row(case, "exact", tol), None),
                with_solve_error(diffcore_row(case, "hutchinson", tol), reference)]
        if kd is not None:
            rows.append(with_solve_error(k_diffusion_row(kd, case, tol), kd_reference))
        out.append((tol, rows))
    return out


def cases(cfg: Config) -> Iterator[tuple[str, str, Case]]:
    """``(process, mixture name, case)`` of every process and mixture of ``cfg``, in table order."""
    mixtures = {m.name: m for m in [REFERENCE_2D, *make_mixtures()]}
    for process_type in cfg.processes:
        for name, num in cfg.points.items():
            yield process_type, name, Case(mixtures[name], process_type, num)


def section(quick: bool, kd: types.ModuleType | None) -> None:
    cfg = config(quick)
    warm = Case(REFERENCE_2D, cfg.processes[0], 8)  # the first solves pay for imports and allocations
    diffcore_row(warm, "exact", 1e-2), diffcore_row(warm, "hutchinson", 1e-2)
    if kd is not None:
        k_diffusion_row(kd, warm, 1e-2)
    print("\n| process | mixture | n | tol | library | trace | err | \\|err\\| | std | solve \\|err\\| | prior | NFE "
          "| s | no larger error at no more NFE | solve at k-d's NFE |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    notes: list[str] = []
    verdicts: list[tuple[str, str]] = []
    overshoots: list[float] = []
    for process_type, name, case in cases(cfg):
        notes.append(f"{process_type} {name}: t_min = {case.t_min:g}, s(t_min) = {case.setup.s_min:.3g}, "
                     f"s(T) = {case.setup.s_max:.4g}; the t_min gap log p_t_min - log p_0 = "
                     f"{case.t_min_gap():+.1e} nats/dim on average")
        results = case_rows(case, cfg.tolerances, kd)
        peers = [rows[-1] for _, rows in results] if kd is not None else []
        for tol, rows in results:
            peer = rows[-1] if kd is not None else None
            for row in rows:
                v = verdict(row, peer)
                frontier = ""
                if v:
                    verdicts.append((process_type, v))
                    frontier = at_equal_nfe(row, peers)
                if row.library == "k-diffusion":
                    overshoots.append(row.overshoot)
                print(f"| {process_type} | {name} | {case.x.shape[0]} | {tol:g} | {row.library} | {row.trace} | "
                      f"{fmt(float(row.err.mean()))} | {mean_abs(row.err):.1e} | {float(row.err.std()):.1e} | "
                      f"{mean_abs(row.solve):.1e} | {fmt(float(row.prior.mean()))} | {row.nfe} | "
                      f"{row.seconds:.2f} | {v} | {frontier} |")
    print()
    for note in notes:
        print(f"- {note}")
    if overshoots:
        past = [o for o in overshoots if o > 1.0 + 1e-9]
        print(f"- k-diffusion's dopri5 evaluated the denoiser past sigma_max in {len(past)} of its {len(overshoots)} "
              f"solves above (up to {max(overshoots):.2f} sigma_max: it steps past the end and interpolates back; "
              "the analytic model is exact there, a trained one is outside its range)")
    if verdicts:
        met = sum(v.startswith("yes") for _, v in verdicts)
        by_process = ", ".join(
            f"{p} {sum(v.startswith('yes') for q, v in verdicts if q == p)}/{sum(q == p for q, _ in verdicts)}"
            for p in cfg.processes)
        print(f"\ndiffcore rows meeting the target against k-diffusion: {met} of {len(verdicts)} ({by_process})")


Diagram = list[tuple[int, float]]
"""A work-precision diagram: (NFE, solve ``|err|``) at each tolerance of a scan."""


def envelope(diagram: Diagram, nfe: int) -> float:
    """The smallest solve ``|err|`` of ``diagram`` at no more than ``nfe`` evaluations."""
    return min(err for n, err in diagram if n <= nfe)


def envelope_ratios(mine: Diagram, peer: Diagram) -> list[float]:
    """``mine``'s envelope over ``peer``'s at every NFE of either diagram that both span."""
    low = max(min(n for n, _ in mine), min(n for n, _ in peer))
    high = min(max(n for n, _ in mine), max(n for n, _ in peer))
    grid = sorted({n for n, _ in mine + peer if low <= n <= high})
    return [envelope(mine, n) / envelope(peer, n) for n in grid]


def work_precision(quick: bool, kd: types.ModuleType) -> None:
    """Each library's work-precision diagram per case, and diffcore's envelope over k-diffusion's
    (module docstring)."""
    cfg = config(quick)
    tolerances = torch.logspace(-3, -6, WORK_PRECISION_TOLERANCES, dtype=torch.float64).tolist()
    print(f"\nWork-precision diagrams: solve |err| per dimension at {len(tolerances)} tolerances from 1e-3 to 1e-6 "
          "(NFE:error, loosest first)\n")
    summary = []
    for process_type, name, case in cases(cfg):
        results = case_rows(case, tolerances, kd)
        diagrams: dict[str, Diagram] = {}
        for index, label in enumerate(["diffcore exact", "diffcore hutchinson", "k-diffusion hutchinson"]):
            diagrams[label] = [(rows[index].nfe, mean_abs(rows[index].solve)) for _, rows in results]
            points = " ".join(f"{n}:{err:.1e}" for n, err in diagrams[label])
            print(f"- {process_type} {name}, {label}: {points}")
        for trace in ["exact", "hutchinson"]:
            ratios = envelope_ratios(diagrams[f"diffcore {trace}"], diagrams["k-diffusion hutchinson"])
            summary.append((process_type, name, trace, ratios))
    print("\n| process | mixture | diffcore trace | NFE compared | envelope over k-diffusion's: median | largest "
          "| no larger at |")
    print("|---|---|---|---|---|---|---|")
    for process_type, name, trace, ratios in summary:
        share = sum(r <= 1.0 for r in ratios)
        print(f"| {process_type} | {name} | {trace} | {len(ratios)} | x{statistics.median(ratios):.2f} | "
              f"x{max(ratios):.2f} | {share} of {len(ratios)} |")


def main(argv: Sequence[str] | None = None) -> None:
    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--work-precision", action="store_true",
                            help=f"also compare work-precision diagrams ({WORK_PRECISION_TOLERANCES} tolerances per "
                                 "case; needs k-diffusion)")

    args = parse_args(__doc__, "vp and ve, tolerances 1e-3 and 1e-5, fewer points", argv, options)
    kd = load_k_diffusion()
    started = time.perf_counter()
    print(f"diffcore log_likelihood vs k-diffusion's on exact Gaussian-mixture scores (float64, probe seed {SEED}, "
          f"points seed {POINT_SEED}, {torch.get_num_threads()} thread(s))")
    section(quick=args.quick, kd=kd)
    if args.work_precision:
        if kd is None:
            print("\n--work-precision compares with k-diffusion, which is not installed (peers.py says how)")
        else:
            work_precision(quick=args.quick, kd=kd)
    print(f"\ntotal {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
