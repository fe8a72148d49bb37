"""Setting a sampler to a budget of score evaluations (NFE), shared by ``diffcore compare``
(:mod:`diffcore.compare`) and ``benchmarks/sampler_quality.py``.

Samplers spend their evaluations differently: one per step (``euler_maruyama``, ``ddim``, the
multistep exponential integrators), two per step (``heun``, less one at the end), a predictor plus
corrector steps (``pc``), ``levels x steps_per_level`` (``annealed_langevin``), four per step (fixed-step
``rk4`` of ``probability_flow``), one more for ``final_denoise``. Rather than a formula per sampler
(which a third-party sampler would not have), the budget is met by measurement: the NFE a sampler
reports grows with its size parameter (steps, levels or iterations), so :func:`fit_budget` finds,
by bisection over a cheap probe (two samples), the largest size whose NFE does not exceed the
budget. A sampler that cannot meet a budget exactly (``heun`` at an even one, ``rk4`` off a multiple
of four) runs at the nearest NFE below it, and the NFE actually measured is what is reported.

:func:`budget_plan` says which parameter is the size and which of a sampler's defaults cannot serve a
small budget and are replaced (only where they must be, with a note): ``annealed_langevin``'s 100
Langevin steps per level (one per level), ``probability_flow``'s adaptive ``dopri5``, whose NFE is set by
its tolerances rather than a size (fixed-step ``rk4``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from diffcore.registry import Registry, get_registry

SIZE_PARAMETERS = ("steps", "levels", "iterations")
"""The parameter names taken as a sampler's size, in this order, when it has no :data:`PLANS` entry."""


@dataclass(frozen=True)
class BudgetPlan:
    """How to set one sampler to an NFE budget: its ``size`` parameter (``None``: it has none and runs
    at its defaults), the smallest valid size, and ``params`` replacing defaults that no small budget
    can hold, explained by ``note``."""

    size: str | None
    min_size: int = 1
    params: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""


PLANS: dict[str, BudgetPlan] = {
    "annealed_langevin": BudgetPlan(
        "levels", 2, {"steps_per_level": 1},
        "one Langevin step per level (its default of 100 per level exceeds every budget up to 100)"),
    "probability_flow": BudgetPlan(
        "steps", 1, {"method": "rk4"},
        "fixed-step rk4, 4 evaluations per step (the default adaptive dopri5 sets its NFE by its tolerances)"),
    "langevin": BudgetPlan(
        "iterations", 1, {}, "Langevin dynamics at t_min from the prior draws: not a diffusion sampler"),
}
"""Samplers whose size parameter or defaults need saying; every other one uses the first of
:data:`SIZE_PARAMETERS` it has, with all its defaults."""


def budget_plan(name: str, registry: Registry | None = None) -> BudgetPlan:
    """The :class:`BudgetPlan` of the registered sampler ``name`` (an unknown name raises
    :class:`~diffcore.errors.RegistryError` listing the registered ones)."""
    cls = (registry or get_registry()).get("sampler", name)
    if name in PLANS:
        return PLANS[name]
    fields = getattr(cls.Params, "model_fields", {})
    for key in SIZE_PARAMETERS:
        if key in fields:
            return BudgetPlan(key)
    return BudgetPlan(None, note="no size parameter: run at its defaults")


def fit_budget(nfe_of: Callable[[int], int], budget: int, min_size: int = 1) -> tuple[int, int] | None:
    """The largest size whose NFE ``nfe_of(size)`` does not exceed ``budget``, and that NFE; ``None``
    when even ``min_size`` needs more. Assumes the NFE does not decrease as the size grows and is at
    least the size (every sampler spends one evaluation per step or more), so sizes above ``budget``
    are never tried; bisection calls ``nfe_of`` about ``log2(budget)`` times (cache it if costly)."""
    lo, hi = min_size, max(budget, min_size)
    if nfe_of(lo) > budget:
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if nfe_of(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo, nfe_of(lo)
