"""Encoding: data to latents by the probability-flow ODE, the inverse of deterministic sampling.

The probability-flow ODE ``dx/dt = f(x, t) - g(t)^2 s(x, t) / 2`` (Song et al. 2021, "Score-Based
Generative Modeling through Stochastic Differential Equations", Sec. 4.3, "uniquely identifiable
encoding", and App. D) is a bijection between the data at ``t_min`` and latents at ``T``: integrated
forward in time it *encodes* ``x`` into the latent that the ``probability_flow`` sampler, started from it,
decodes back to ``x`` (up to the solvers' tolerances; exactly, were the ODE solved exactly, for any
score, since both directions integrate the same ODE). With the exact score the latents of data drawn
from ``p_0`` are draws of ``p_T``, close to the prior.

:func:`encode` runs :func:`diffcore.ode.integrate` (the solve the likelihood and the sampler use) from
``t_start`` (default ``t_min``) up to ``t_end`` (default ``T``); a latent at ``t_end < T`` is decoded by
starting the sampler at ``t_end`` (:func:`diffcore.partial.starting_at`,
``Pipeline.sample(..., x_start=latent, t_start=t_end)``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from diffcore.errors import UsageError
from diffcore.messages import type_name
from diffcore.ode import SolverParams, integrate, probability_flow_velocity
from diffcore.process import ForwardProcess, ScoreFn
from diffcore.sampler import check_finite


@dataclass(frozen=True)
class EncodeResult:
    """What :func:`encode` returns for ``n`` rows: ``latent`` ``(n, *event)`` at ``t_end`` in the data's
    dtype, the interval ``t_start``, ``t_end``, the score evaluations ``nfe`` of the solve (the largest
    over chunks for :meth:`Pipeline.encode <diffcore.pipeline.Pipeline.encode>`), its accepted ``steps``
    and its wall time ``seconds``."""

    latent: Tensor
    t_start: float
    t_end: float
    nfe: int
    steps: int
    seconds: float


def encode_interval(process: ForwardProcess, t_start: float | None, t_end: float | None) -> tuple[float, float]:
    """``(t_start, t_end)`` with the defaults ``t_min`` and ``T``, checked: ``t_min <= t_start < t_end <= T``
    (:class:`~diffcore.errors.UsageError` naming the interval otherwise)."""
    for name, value in (("t_start", t_start), ("t_end", t_end)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not math.isfinite(value)):
            raise UsageError(f"{name} must be a finite number; got {value!r}")
    t0 = process.t_min if t_start is None else float(t_start)
    t1 = process.T if t_end is None else float(t_end)
    if not process.t_min <= t0 < t1 <= process.T:
        raise UsageError(f"encoding integrates from t_start = {t0:g} up to t_end = {t1:g}, which must satisfy "
                         f"t_min <= t_start < t_end <= T with the process's [t_min, T] = [{process.t_min:g}, "
                         f"{process.T:g}]")
    return t0, t1


def check_data(x: object, what: str = "the data") -> None:
    """Refuse anything but a finite floating-point tensor ``(n, *event)`` with rows and values
    (:class:`~diffcore.errors.UsageError`)."""
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 2 or x.shape[0] == 0 \
            or math.prod(x.shape[1:]) == 0:
        got = f"shape {tuple(x.shape)}, {x.dtype}" if isinstance(x, Tensor) else type_name(x)
        raise UsageError(f"{what} must be a floating-point tensor (n, *event) with at least one row and one value "
                         f"per row; got {got}")
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x.reshape(x.shape[0], -1))).any(1).sum())
        raise UsageError(f"{bad} of the {x.shape[0]} rows of {what} hold NaN or Inf")


def encode(score_fn: ScoreFn, process: ForwardProcess, x: Tensor, *, t_start: float | None = None,
           t_end: float | None = None, options: SolverParams | None = None) -> EncodeResult:
    """Carry ``x`` ``(n, *event)`` at ``t_start`` (default ``t_min``) to ``t_end`` (default ``T``) along the
    probability-flow ODE (module docstring; Song et al. 2021, Sec. 4.3).

    Args:
        score_fn: the score ``(x, t) -> (n, *event)``, e.g. ``score_function(model, process)`` with the
            condition bound (:meth:`Pipeline.encode <diffcore.pipeline.Pipeline.encode>` does this), any
            model, evaluated without autograd.
        process: any forward process.
        x: the data (or states at ``t_start``), floating point, on the model's device; the ODE runs in its dtype.
        t_start, t_end: ``t_min <= t_start < t_end <= T``.
        options: the solver (:class:`~diffcore.ode.SolverParams`; default dopri5 at ``rtol = atol = 1e-5``).
            Decode with the ``probability_flow`` sampler at the same options: the round trip is then
            accurate to about the tolerances (``tests/test_encode.py`` measures it).

    Returns:
        :class:`EncodeResult`: ``latent`` ``(n, *event)`` at ``t_end``, NFE, steps and time. An adaptive
        solver takes one step size for all rows, so a row's latent depends on the others within the
        tolerance; fixed-step methods treat rows independently.

    Raises:
        UsageError: ``x`` not a finite floating tensor ``(n, *event)``, or the interval outside ``[t_min, T]``.
        NonFiniteError: the velocity became NaN or Inf.
    """
    check_data(x)
    t0, t1 = encode_interval(process, t_start, t_end)
    velocity = probability_flow_velocity(process, score_fn)

    def checked(t: Tensor, state: Tensor) -> Tensor:
        v = velocity(t, state)
        check_finite(v, "the probability-flow velocity", step=0, t=t)
        return v

    began = time.perf_counter()
    with torch.no_grad():
        solution = integrate(checked, x.detach(), t0, t1, options)
    return EncodeResult(latent=solution.state, t_start=t0, t_end=t1, nfe=solution.nfe, steps=solution.steps,
                        seconds=time.perf_counter() - began)
