"""The probability-flow ODE and the one place diffcore integrates ODEs (torchdiffeq).

Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential Equations", Sec. 4.3
(seed 001, "Probability flow ODE"): the ODE

    dx/dt = v(x, t) = f(x, t) - g(t)^2 s(x, t) / 2

has the marginals ``p_t`` of the forward SDE ``dx = f dt + g dw`` when ``s = grad log p_t``. Sampling
integrates it from ``T`` down to ``t_min`` (the ``probability_flow`` sampler); the exact likelihood
integrates it from ``t_min`` up to ``T`` together with the divergence of ``v``
(:mod:`diffcore.likelihood`). Both go through :func:`integrate`, which takes the solver options of
:class:`SolverParams`, makes adaptive methods land exactly on the end time, and counts the function
evaluations (NFE) and the solver's steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch
from pydantic import Field, model_validator
from torch import Tensor

from diffcore.component import Params
from diffcore.errors import StepLimitError, UsageError
from diffcore.limits import Steps, Tolerance
from diffcore.process import ForwardProcess, ScoreFn

ADAPTIVE = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
"""torchdiffeq's adaptive Runge-Kutta methods: they choose their steps from ``rtol`` and ``atol``."""
FIXED = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams")
"""torchdiffeq's fixed-grid methods: ``steps`` uniform steps."""
DEFAULT_STEPS = 100
"""Uniform steps of a fixed-grid method when ``steps`` is not given."""
MAX_ADAPTIVE_STEPS = 10_000
"""Default bound on an adaptive solve's steps: solves at rtol 1e-5 take tens to hundreds, reference
solves at 1e-10 a few thousand."""

State = TypeVar("State", Tensor, tuple[Tensor, ...])
"""An ODE state: one tensor, or a tuple of tensors of one dtype (an augmented state, e.g. ``(x, log-det)``)."""


class SolverParams(Params):
    """Options of an ODE solve with torchdiffeq: the method and its tolerances or steps.

    Shared, one definition, by the ``probability_flow`` sampler's parameters and the likelihood's
    options (:class:`diffcore.likelihood.LikelihoodOptions`)."""

    method: Literal[ADAPTIVE + FIXED] = Field(  # type: ignore[valid-type]
        "dopri5", description="torchdiffeq method; adaptive ones use rtol/atol, fixed ones `steps`.")
    rtol: Tolerance = Field(1e-5, description="Relative tolerance (adaptive methods).")
    atol: Tolerance = Field(1e-5, description="Absolute tolerance (adaptive methods).")
    steps: Steps | None = Field(None, description=f"Uniform steps (fixed methods; default {DEFAULT_STEPS}).")
    max_steps: Steps = Field(MAX_ADAPTIVE_STEPS, description="Most steps, accepted and rejected, of an adaptive "
                             "method before the solve stops with an error (data far outside the model's range "
                             "or a stiff model would otherwise run without bound).")

    @model_validator(mode="after")
    def _steps_only_for_fixed(self) -> SolverParams:
        if self.steps is not None and self.method in ADAPTIVE:
            raise ValueError(f"steps applies to fixed-step methods ({', '.join(FIXED)}); method "
                             f"{self.method!r} is adaptive and chooses its own steps from rtol/atol. "
                             "Drop steps or pick a fixed-step method")
        return self

    @property
    def adaptive(self) -> bool:
        """Whether :attr:`method` is adaptive (chooses its steps from ``rtol`` and ``atol``)."""
        return self.method in ADAPTIVE


@dataclass(frozen=True)
class ODESolution:
    """The end of an ODE solve: ``state`` at ``t_end`` (shaped as the start state), ``nfe`` the
    evaluations of the velocity (the adaptive methods' two initial-step probes and their rejected
    steps included), ``steps`` the accepted steps (the grid's for fixed methods) and ``rejected`` the
    steps an adaptive method rejected (0 for fixed methods)."""

    state: Any
    nfe: int
    steps: int
    rejected: int


class _Counted:
    """The velocity as torchdiffeq sees it: counts evaluations."""

    def __init__(self, velocity: Callable[[Tensor, Any], Any]) -> None:
        self.velocity = velocity
        self.nfe = 0
        self.accepted = 0
        self.rejected = 0

    def __call__(self, t: Tensor, state: Any) -> Any:
        self.nfe += 1
        return self.velocity(t, state)


class _CountedSteps(_Counted):
    """:class:`_Counted` that also counts an adaptive method's accepted and rejected steps through
    torchdiffeq's callbacks (looked up on the function it is given; fixed-grid solvers warn about them)."""

    def __init__(self, velocity: Callable[[Tensor, Any], Any], max_steps: int) -> None:
        super().__init__(velocity)
        self.max_steps = max_steps

    def callback_accept_step(self, t0: Tensor, y0: Any, dt: Tensor) -> None:
        self.accepted += 1
        self._check(t0, dt)

    def callback_reject_step(self, t0: Tensor, y0: Any, dt: Tensor) -> None:
        self.rejected += 1
        self._check(t0, dt)

    def _check(self, t0: Tensor, dt: Tensor) -> None:
        if self.accepted + self.rejected >= self.max_steps:
            raise StepLimitError(f"the adaptive ODE solve took {self.max_steps} steps ({self.rejected} rejected, "
                                 f"{self.nfe} evaluations) and was stopped at t = {float(t0):.6g} with step "
                                 f"{float(dt):.3g}: the velocity is stiff or huge there (data far outside the model's "
                                 "range?); check the inputs, or raise max_steps or loosen rtol/atol",
                                 t=float(t0))


def integrate(velocity: Callable[[Tensor, State], State], state: State, t_start: float, t_end: float,
              options: SolverParams | None = None, *, atol_scales: Sequence[float] | None = None) -> ODESolution:
    """Integrate ``d state / dt = velocity(t, state)`` from ``t_start`` to ``t_end`` (either direction).

    Args:
        velocity: ``(t, state) -> d state / dt`` with ``t`` a 0-dim tensor (in the state's dtype) and
            the result shaped as ``state``.
        state: the start state: a tensor, or a tuple of tensors of one dtype and device (an augmented
            state; adaptive methods then control the error of each part, torchdiffeq's mixed norm).
        t_start, t_end: the interval; the solve ends exactly at ``t_end``.
        options: method and tolerances or steps (default :class:`SolverParams`'s defaults).
        atol_scales: for a tuple state, one factor per part: adaptive methods hold part ``i`` to
            ``atol * atol_scales[i]`` (``rtol`` unchanged); default 1 for every part. The likelihood
            passes ``(1, D)``: its log-density, a sum over ``D`` values, is held to ``atol`` per value,
            as the state is.

    Adaptive methods are given ``t_end`` as a step boundary (torchdiffeq's ``step_t``): their last step
    lands on it, so the velocity is never evaluated beyond the interval (otherwise torchdiffeq steps
    past the end and interpolates back, evaluating, e.g., the score at ``t < t_min`` where the process
    may be undefined). Adaptive methods pick one step size for the whole state, so rows of a batch
    are coupled within the tolerance; fixed methods treat rows independently, bit for bit.
    """
    from torchdiffeq import odeint  # here: importing it imports scipy (0.6 s), which most commands never need

    p = options or SolverParams()
    if t_start == t_end:
        raise UsageError(f"an ODE solve needs t_start != t_end; both are {t_start}")
    first = state if isinstance(state, Tensor) else state[0]
    counted = _CountedSteps(velocity, p.max_steps) if p.adaptive else _Counted(velocity)
    if p.adaptive:
        times = torch.tensor([t_start, t_end], device=first.device, dtype=torch.float64)
        atol: float | tuple[float, ...] = p.atol
        if atol_scales is not None:
            if isinstance(state, Tensor) or len(atol_scales) != len(state):
                parts = 1 if isinstance(state, Tensor) else len(state)
                raise UsageError(f"atol_scales has {len(atol_scales)} factors for a state of {parts} part(s)")
            atol = tuple(p.atol * float(scale) for scale in atol_scales)
        path = odeint(counted, state, times, method=p.method, rtol=p.rtol, atol=atol,
                      options={"step_t": times[1:]})
        steps = counted.accepted
    else:
        steps = p.steps or DEFAULT_STEPS
        times = torch.linspace(t_start, t_end, steps + 1, device=first.device, dtype=torch.float64)
        path = odeint(counted, state, times, method=p.method)
    end = path[-1] if isinstance(path, Tensor) else tuple(part[-1] for part in path)
    return ODESolution(state=end, nfe=counted.nfe, steps=steps, rejected=counted.rejected)


def probability_flow_velocity(process: ForwardProcess, score_fn: ScoreFn) -> Callable[[Tensor, Tensor], Tensor]:
    """The velocity ``(t, x) -> v(x, t) = f(x, t) - g(t)^2 s(x, t) / 2`` of the probability-flow ODE
    (Song et al. 2021, eq. 13; :meth:`~diffcore.process.ForwardProcess.reverse` with
    ``probability_flow=True``): ``t`` a 0-dim tensor, broadcast to the batch in ``x``'s dtype, ``x``
    and the result ``(B, *event)``. Time runs forward: integrate it towards ``t_min`` to sample and
    towards ``T`` to encode."""
    reverse = process.reverse(score_fn, probability_flow=True)

    def velocity(t: Tensor, x: Tensor) -> Tensor:
        return reverse.drift(x, t.to(x.dtype).expand(x.shape[0]))

    return velocity
