"""Sampler quality per score evaluation: diffcore's samplers against k-diffusion's and diffusers', all
driven by the same exact score of Gaussian mixtures.

The set-up (the VP process, the exact ``gmm`` score, the shared prior draws) and the metrics (``ED``,
``ED/fl``, ``wErr``, ``spread%``, ``sbias%``) are those of ``common.py``; how the peers see the score
is in ``peers.py``. The energy distance is to 5000 exact draws of ``p_0`` (2000 with ``--quick``).

diffcore runs ``Pipeline.with_sampler(name, steps=..., ...).sample(n, seed, latents=x_T)``. Samplers
stop at ``t_min``; those with ``final_denoise`` use it (one more evaluation, counted in the NFE),
which is what the peers do when they step to noise level zero.

Time grids are each library's own defaults: diffcore's samplers keep theirs (``logsnr`` for the
exponential integrators, ``uniform`` in ``t`` for the SDE samplers, ``karras`` for ``heun``; one row
puts ``dpm_solver_pp`` on ``karras``), k-diffusion's are ``karras`` and diffusers' are ``linspace`` in
the training timesteps (about uniform in ``t``). At NFE <= 10 the grid matters as much as the solver.

The rows ``exact p_0`` and ``exact p(t_min)`` are exact draws, the second at ``t_min`` (where samplers
without a final denoising step stop): the floor of every metric. diffcore's step counts are the
largest whose NFE does not exceed the budget (probed on two samples); so are the peers' ``n``.

    python benchmarks/sampler_quality.py            # four mixtures, NFE 5 to 50: minutes on one CPU thread
    python benchmarks/sampler_quality.py --quick    # two mixtures, NFE 10 and 20, fewer samples: a smoke run

Without the peers installed only diffcore's rows are printed (with a notice).
"""

from __future__ import annotations

import time
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from common import SEED, Candidate, Metrics, Mixture, Reference, Setup, make_mixtures, parse_args, rms
from peers import diffusers_candidates, k_diffusion_candidates, load_diffusers, load_k_diffusion
from torch import Tensor

from diffcore.budgets import budget_plan, fit_budget

SUMMARY_NFE = (10, 20)
"""The budgets of the summary: our best against the best peer."""

QUICK_HELP = "two mixtures, NFE 10 and 20, fewer samples"

DIFFCORE_CONFIGS: list[tuple[str, str, dict[str, Any]]] = [
    # (label, registered name, params); ``steps`` (or ``levels``) is the size parameter.
    ("euler_maruyama", "euler_maruyama", {}),
    ("reverse_diffusion", "reverse_diffusion", {}),
    ("ancestral", "ancestral", {}),
    ("pc rd+langevin", "pc", {}),
    ("reverse_sde srk", "reverse_sde", {"method": "srk"}),
    ("annealed_langevin 1/level", "annealed_langevin", {"steps_per_level": 1}),
    ("probability_flow rk4", "probability_flow", {"method": "rk4"}),
    ("ddim +den", "ddim", {"final_denoise": True}),
    ("dpm_solver 2M +den", "dpm_solver", {"order": 2, "final_denoise": True}),
    ("dpm_solver 3M +den", "dpm_solver", {"order": 3, "final_denoise": True}),
    ("dpm_solver_pp 2M", "dpm_solver_pp", {"order": 2}),
    ("dpm_solver_pp 2M +den", "dpm_solver_pp", {"order": 2, "final_denoise": True}),
    ("dpm_solver_pp 2M karras +den", "dpm_solver_pp", {"order": 2, "grid": "karras", "final_denoise": True}),
    ("dpm_solver_pp 3M +den", "dpm_solver_pp", {"order": 3, "final_denoise": True}),
    ("dpm_solver_pp 2S +den", "dpm_solver_pp", {"order": 2, "method": "singlestep", "final_denoise": True}),
    ("unipc bh1 p2 +den", "unipc", {"order": 2, "variant": "bh1", "final_denoise": True}),
    ("unipc bh2 p3 +den", "unipc", {"order": 3, "variant": "bh2", "final_denoise": True}),
    ("heun (karras)", "heun", {}),
]
"""diffcore's rows: every registered diffusion sampler with its defaults (grids included), the
exponential integrators with ``final_denoise`` (the peers' last evaluation is a denoising step too),
and two variants showing its effect and the karras grid. Plain ``langevin`` (at ``t_min`` from the
prior draw) is left out: it is not a diffusion sampler and its mode weights depend on the start."""


def diffcore_candidates(setup: Setup) -> list[Candidate]:
    """diffcore's samplers on the pipeline of ``setup``; the size parameter (steps, levels...) and
    its smallest value are :func:`diffcore.budgets.budget_plan`'s, as in ``diffcore compare``."""
    candidates = []
    for label, name, params in DIFFCORE_CONFIGS:
        plan = budget_plan(name)
        size_key, min_size = plan.size or "steps", plan.min_size

        def run(size: int, x_T: Tensor, name: str = name, params: dict[str, Any] = params,
                size_key: str = size_key) -> tuple[Tensor, int]:
            pipe = setup.pipe.with_sampler(name, **{**params, size_key: size})
            result = pipe.sample(x_T.shape[0], seed=SEED, latents=x_T, dtype=x_T.dtype)
            return result.x.to(torch.float64), result.nfe

        candidates.append(Candidate("diffcore", label, run, min_size))
    return candidates


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One sampler at one NFE budget on one mixture."""

    mixture: str
    library: str
    label: str
    budget: int
    nfe: int
    metrics: Metrics
    seconds: float


@dataclass
class Table:
    """All rows, the floors and the failures."""

    rows: list[Row] = field(default_factory=list)
    floors: dict[str, float] = field(default_factory=dict)
    failures: dict[tuple[str, str], str] = field(default_factory=dict)
    nfe_cache: dict[tuple[str, str, int], int] = field(default_factory=dict)


def fit_size(candidate: Candidate, budget: int, probe: Tensor, table: Table) -> tuple[int, int] | None:
    """The largest size whose NFE does not exceed ``budget`` and that NFE (``None``: even the
    smallest size exceeds it). NFE grows with the size; each probe samples two points."""

    def nfe(size: int) -> int:
        key = (candidate.library, candidate.label, size)
        if key not in table.nfe_cache:
            table.nfe_cache[key] = candidate.run(size, probe)[1]
        return table.nfe_cache[key]

    return fit_budget(nfe, budget, candidate.min_size)


def format_row(library: str, label: str, nfe: str, m: Metrics, floor: float, seconds: str, mark: str = "") -> str:
    return (f"  {library:<12} {label:<30} {nfe:>4} {m.ed:>10.2e} {m.ed / floor:>8.1f} {m.weight_err:>7.4f} "
            f"{100 * m.spread_err:>8.2f} {100 * m.spread_bias:>7.2f} {seconds:>7} {mark}")


HEADER = (f"  {'library':<12} {'sampler':<30} {'NFE':>4} {'ED':>10} {'ED/fl':>8} {'wErr':>7} "
          f"{'spread%':>8} {'sbias%':>7} {'sec':>7}")


def run_table(mixtures: Sequence[Mixture], budgets: Sequence[int], *, num: int, ref_num: int, replicates: int,
              kd: types.ModuleType | None, diffusers: types.ModuleType | None) -> Table:
    """Sample every candidate at every budget on every mixture and print the rows as they come."""
    table = Table()
    for mixture in mixtures:
        setup = Setup.build(mixture)
        ref = Reference(mixture, ref_num)
        exact = [ref.metrics(ref.exact(num)) for _ in range(replicates)]
        floor = rms(m.ed for m in exact)
        table.floors[mixture.name] = floor
        t_min = torch.tensor([setup.process.t_min], dtype=torch.float64)
        alpha_min, sigma_min = float(setup.process.alpha(t_min)), float(setup.process.sigma(t_min))
        at_t_min = ref.metrics(alpha_min * ref.exact(num) + sigma_min * torch.randn(num, mixture.dim,
                                                                                  generator=ref.generator,
                                                                                  dtype=torch.float64))
        candidates = diffcore_candidates(setup)
        if kd is not None:
            candidates += k_diffusion_candidates(kd, setup)
        if diffusers is not None:
            candidates += diffusers_candidates(diffusers, setup)
        x_T = setup.prior(num)
        probe = x_T[:2]
        print(f"\n== {mixture.name}: D={mixture.dim}, K={len(mixture.params['weights'])}, "
              f"weights={[round(w, 3) for w in mixture.params['weights']]}; {num} samples against {ref_num} exact "
              f"draws of p_0; ED floor (RMS over {replicates} exact sets) {floor:.2e}; "
              f"levels s = sigma/alpha in [{setup.s_min:.4g}, {setup.s_max:.4g}]")
        for budget in budgets:
            print(f"\n  -- {mixture.name}, NFE <= {budget}")
            print(HEADER)
            print(format_row("exact", "p_0 (draws)", "-", exact[0], floor, "-"))
            print(format_row("exact", "p(t_min) (draws)", "-", at_t_min, floor, "-"))
            rows = []
            for c in candidates:
                if (c.library, c.label) in table.failures:
                    continue
                try:
                    fitted = fit_size(c, budget, probe, table)
                    if fitted is None:
                        print(f"  {c.library:<12} {c.label:<30} (its smallest size needs more than {budget} NFE)")
                        continue
                    size, _ = fitted
                    start = time.perf_counter()
                    x, nfe = c.run(size, x_T)
                    seconds = time.perf_counter() - start
                    metrics = ref.metrics(x)
                except Exception as exc:  # noqa: BLE001 - a crashing sampler is reported and left out
                    table.failures[(c.library, c.label)] = f"{type(exc).__name__}: {exc}"
                    print(f"  {c.library:<12} {c.label:<30} CRASHED ({type(exc).__name__}: {exc})"[:200])
                    continue
                rows.append(Row(mixture.name, c.library, c.label, budget, nfe, metrics, seconds))
            best = {lib: min((r for r in rows if r.library == lib), key=lambda r: r.metrics.ed, default=None)
                    for lib in ("diffcore", "k-diffusion", "diffusers")}
            for r in rows:
                mark = "<- best " + r.library if best[r.library] is r else ""
                print(format_row(r.library, r.label, str(r.nfe), r.metrics, floor, f"{r.seconds:.2f}", mark))
            table.rows += rows
    return table


def print_summary(table: Table, mixtures: Sequence[Mixture], budgets: Sequence[int]) -> None:
    """Our best (by energy distance) against the best peer, per mixture, at the summary budgets."""
    print("\n== Summary: best diffcore sampler against the best peer, by ED ('matches': within 2 floors of it; "
          "'beats': more than 2 floors below)")
    print(f"  {'mixture':<13} {'NFE':>3}  {'ours (best)':<32} {'ED':>9} {'wErr':>7}  "
          f"{'best peer':<36} {'ED':>9} {'wErr':>7}  verdict")
    for mixture in mixtures:
        floor = table.floors[mixture.name]
        for budget in budgets:
            rows = [r for r in table.rows if r.mixture == mixture.name and r.budget == budget]
            ours = min((r for r in rows if r.library == "diffcore"), key=lambda r: r.metrics.ed, default=None)
            peer = min((r for r in rows if r.library != "diffcore"), key=lambda r: r.metrics.ed, default=None)
            if ours is None:
                continue
            ours_txt = f"{ours.label} ({ours.nfe})"
            if peer is None:
                print(f"  {mixture.name:<13} {budget:>3}  {ours_txt:<32} {ours.metrics.ed:>9.2e} "
                      f"{ours.metrics.weight_err:>7.4f}  (no peers)")
                continue
            peer_txt = f"{peer.library}:{peer.label} ({peer.nfe})"
            if ours.metrics.ed < peer.metrics.ed - 2 * floor:
                verdict = "beats"
            elif ours.metrics.ed <= peer.metrics.ed + 2 * floor:
                verdict = "matches"
            else:
                verdict = f"LOSES (x{ours.metrics.ed / max(peer.metrics.ed, 1e-300):.1f})"
            print(f"  {mixture.name:<13} {budget:>3}  {ours_txt:<32} {ours.metrics.ed:>9.2e} "
                  f"{ours.metrics.weight_err:>7.4f}  {peer_txt:<36} {peer.metrics.ed:>9.2e} "
                  f"{peer.metrics.weight_err:>7.4f}  {verdict}")


def section(*, quick: bool, kd: types.ModuleType | None, diffusers: types.ModuleType | None) -> Table:
    """The table and its summary at the sizes of ``--quick`` or of the full run; returns the table."""
    mixtures = make_mixtures()
    budgets: tuple[int, ...]
    if quick:
        mixtures = [m for m in mixtures if m.name in ("reference-2d", "scales-8d")]
        budgets, num, ref_num, replicates = (10, 20), 1000, 2000, 3
    else:
        budgets, num, ref_num, replicates = (5, 10, 20, 50), 4000, 5000, 5
    table = run_table(mixtures, budgets, num=num, ref_num=ref_num, replicates=replicates, kd=kd, diffusers=diffusers)
    print_summary(table, mixtures, [b for b in budgets if b in SUMMARY_NFE])
    if table.failures:
        print("\n== Crashed (left out of the table)")
        for (library, label), error in table.failures.items():
            print(f"  {library} {label}: {error}")
    return table


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(__doc__, QUICK_HELP, argv)
    kd, diffusers = load_k_diffusion(), load_diffusers()
    started = time.perf_counter()
    print(f"diffcore samplers vs peers on exact Gaussian-mixture scores (VP, seed {SEED}, "
          f"{torch.get_num_threads()} thread(s))")
    section(quick=args.quick, kd=kd, diffusers=diffusers)
    print(f"\ntotal {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
