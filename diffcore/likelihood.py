"""Exact log-likelihood of data under a score model, through the probability-flow ODE.

The probability-flow ODE ``dx/dt = v(x, t) = f(x, t) - g(t)^2 s(x, t) / 2`` (Song et al. 2021, "Score-Based
Generative Modeling through Stochastic Differential Equations", Sec. 4.3 and App. D.2) is a continuous
normalizing flow: along a solution ``x_t``, the instantaneous change of variables (Chen et al. 2018,
"Neural Ordinary Differential Equations", Thm. 1) gives ``d log p_t(x_t) / dt = -div v(x_t, t)``, so

    log p_{t0}(x) = log p_{t1}(x_{t1}) + int_{t0}^{t1} div v(x_t, t) dt,

with ``x_{t0} = x`` and ``t0 = t_min``, ``t1 = T`` by default, where ``p_T`` is the process's prior
(:meth:`~diffcore.process.ForwardProcess.prior_log_prob`). :func:`log_likelihood` integrates ``x`` and
the integral together in one ODE solve (:func:`diffcore.ode.integrate`).

For a linear-Gaussian process (``x_t = alpha_t x_0 + sigma_t z``) the solve runs by default
(``variable="auto"``) in the VE form of the same flow (Karras et al. 2022, eq. 4; k-diffusion's
``log_likelihood``): with ``y = x / alpha_t`` and the noise level ``s = sigma_t / alpha_t = exp(-lambda_t)``,
``f = d log alpha / dt`` and ``g^2 = 2 alpha_t^2 s ds/dt`` turn the ODE into

    dy/ds = u(y, s) = -s alpha_t score(alpha_t y, t) = (y - D(y, s)) / s,

``D`` the denoiser in ``y`` units, ``t = t(s)`` the inverse of ``lambda``. ``y`` has the density
``q_s(y) = p_t(alpha_t y) alpha_t^D``, so with ``s0 = s(t_min)``, ``s1 = s(T)``:

    log p_{t_min}(x) = log p_T(alpha_T y_{s1}) + int_{s0}^{s1} div_y u ds + D log alpha_T - D log alpha_{t_min},

``y_{s0} = x / alpha_{t_min}``, the prior evaluated at the latent ``x_T = alpha_T y_{s1}``. In ``t``, ve's
noise level grows exponentially and the solver pays for it; in ``s`` the flow is nearly linear at large
noise (fewer evaluations at the same error: ``benchmarks/likelihood.py``; ``log s`` and ``asinh s``
measured no better than ``s``). Other processes, and ``variable="t"``, integrate ``x`` in ``t``.

**Control variate.** Most of ``div_y u`` is the divergence of a Gaussian's flow: for data ``N(0, I)``
(the data the process's prior ``N(0, (alpha_T^2 + sigma_T^2) I)`` is exact for) ``D(y, s) = y / (1 + s^2)``
and ``div_y u = D s / (1 + s^2)``, which the solver would otherwise integrate numerically (a ``D / s``
tail at large noise). In ``s`` the solve integrates ``div_y u - D s / (1 + s^2)`` and adds its exact
integral ``D/2 log((1 + s1^2) / (1 + s0^2))``: exact for unit-Gaussian data whatever the tolerance; on
the 64-D mixture of ``benchmarks/likelihood.py``, 0.05x to 0.85x k-diffusion's solver error at the same
NFE (0.16x to 1.7x without it). A Hutchinson probe ``eps`` subtracts its own ``|eps|^2 s / (1 + s^2)`` (``= D`` for
Rademacher probes), which also cuts the spread of Gaussian probes (about 15x on the 64-D mixture).

**Tolerances.** ``rtol`` and ``atol`` hold each value of the state, and the log-density integral, a sum
over the ``D`` values, to ``D atol`` (plus ``rtol`` of its size): the same accuracy per dimension.

The divergence ``div v = tr(dv/dx)`` is computed

- exactly, from the ``D`` vector-Jacobian products ``e_i^T dv/dx`` with the unit vectors (batched in
  one backward pass by ``torch.autograd.grad(..., is_grads_batched=True)``; a loop over dimensions
  when the model's backward cannot be vectorised): ``D`` backward passes' work per evaluation,
  practical up to a few hundred dimensions;
- or by Hutchinson's estimator ``tr(A) = E[eps^T A eps]`` (Hutchinson 1989; Grathwohl et al. 2019,
  "FFJORD", Sec. 3.1) with ``K`` probes ``eps`` per sample, Rademacher or Gaussian, each fixed for
  the whole solve: ``K`` independent estimates ``log p_k(x)`` integrated in one solve, whose mean is
  reported with its standard error ``std_k / sqrt(K)`` when ``K > 1``. Each estimate is unbiased up
  to the solver's error, since the state ``x_t`` does not depend on the probes.

The result is ``log p`` of the model at ``t_min`` in nats, per sample, in the units of ``x`` as given
(no dequantisation and no rescaling of the data here).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from diffcore.errors import PluginError, UsageError
from diffcore.limits import MAX_SEED
from diffcore.messages import type_name
from diffcore.noise import NoiseSource
from diffcore.ode import SolverParams, integrate, probability_flow_velocity
from diffcore.process import ForwardProcess, LinearGaussianProcess, ScoreFn
from diffcore.sampler import check_finite
from diffcore.threads import Threads, cpu_threads

MAX_PROBES = 4096
"""Most Hutchinson probes per sample."""
MAX_BATCHED_VALUES = 1 << 24
"""Most values of the unit vectors sent through one batched backward pass of the exact trace (128 MiB
in float64); more dimensions are split into several passes."""


class LikelihoodOptions(SolverParams):
    """How :func:`log_likelihood` computes the divergence and solves the ODE.

    The tolerances default to ``rtol = atol = 1e-5`` (score_sde's likelihood, Song et al. 2021, App. D.2):
    on the analytic mixtures of ``tests/test_likelihood.py`` the solver's error is then below 1e-4
    nats per dimension under ve, vp and subvp, two orders of magnitude inside the 0.01 target. They hold
    each value of the state, and the log-density (a sum over ``D`` values) to ``D atol`` plus ``rtol`` of
    its size: the same accuracy per dimension (module docstring).
    """

    trace: Literal["exact", "hutchinson"] = Field(
        "exact", description="Divergence of the ODE's velocity: the exact Jacobian trace (D backward passes per "
        "evaluation; up to a few hundred dimensions) or Hutchinson's unbiased estimate with `probes` probes.")
    probes: int = Field(1, ge=1, le=MAX_PROBES, description="Hutchinson probes K per sample, integrated in one "
                        "ODE solve; with K > 1 each sample gets a standard error.")
    probe: Literal["rademacher", "gaussian"] = Field(
        "rademacher", description="Distribution of Hutchinson's probes (Rademacher has the smaller variance).")

    variable: Literal["auto", "t"] = Field(
        "auto", description="Integration variable: auto integrates a linear-Gaussian process's flow in the noise "
        "level s = sigma_t / alpha_t with y = x / alpha_t (k-diffusion's VE form: fewer evaluations at the same "
        "error), other processes in t; t integrates x in the process time t.")

    @model_validator(mode="after")
    def _probes_only_for_hutchinson(self) -> LikelihoodOptions:
        if self.trace == "exact" and self.probes != 1:
            raise ValueError(f"probes ({self.probes}) applies to the Hutchinson trace; the exact trace uses no "
                             "probes. Set trace: hutchinson or drop probes")
        return self


MAX_DEQUANTIZATION_DRAWS = 1024
"""Most uniform dequantisation draws per sample."""


class LikelihoodConfig(LikelihoodOptions):
    """The ``likelihood`` section of a spec: :class:`LikelihoodOptions` and how discrete data are read
    (:mod:`diffcore.density`: uniform dequantisation and bits per dimension)."""

    dequantize: int = Field(1, ge=1, le=MAX_DEQUANTIZATION_DRAWS, description="Uniform dequantisation draws "
                            "per sample of discrete data (their log-likelihoods are averaged: a lower bound on "
                            "log P(x); the log-mean-exp, a tighter one, is reported too).")
    bin_width: float | None = Field(None, gt=0, allow_inf_nan=False, description="Spacing of discrete data in raw "
                                    "units (1 for integer pixel levels); default: the spec's data set's, none for "
                                    "continuous data.")


@dataclass(frozen=True)
class LikelihoodResult:
    """What :func:`log_likelihood` returns for ``n`` samples of ``D`` values each.

    - ``log_prob`` ``(n,)`` float64: ``log p(x)`` in nats at ``t_start`` (the mean over probes for
      Hutchinson), ``= prior_log_prob + delta_log_prob``;
    - ``stderr`` ``(n,)`` float64: the standard error of ``log_prob`` over the ``K > 1`` Hutchinson
      probes (``std / sqrt(K)``), else ``None``;
    - ``prior_log_prob`` ``(n,)`` float64: the log-density of ``latent`` at ``t_end`` (the prior's by
      default);
    - ``delta_log_prob`` ``(n,)`` float64: the integral of the divergence from ``t_start`` to ``t_end``
      (in the noise level: plus the change of variables' ``D log(alpha_end / alpha_start)``), i.e.
      ``log p_{t_start}(x) - log p_{t_end}(latent)`` up to the solver's error;
    - ``per_probe`` ``(n, K)`` float64: each probe's estimate of ``log p(x)`` (Hutchinson), else ``None``;
    - ``latent`` ``(n, *event)``: ``x`` carried to ``t_end`` by the flow, in ``x``'s dtype;
    - ``nfe``: evaluations of the velocity (score evaluations) in the solve; ``steps`` its accepted
      steps; ``seconds`` its wall time;
    - ``trace``, ``probes``: as computed; ``vectorized``: whether the vector-Jacobian products ran
      batched (``is_grads_batched``) or in a loop (a model whose backward cannot be vectorised).
    """

    log_prob: Tensor
    stderr: Tensor | None
    prior_log_prob: Tensor
    delta_log_prob: Tensor
    per_probe: Tensor | None
    latent: Tensor
    nfe: int
    steps: int
    seconds: float
    trace: str
    probes: int
    vectorized: bool

    @property
    def dim(self) -> int:
        """``D``, the values per sample."""
        return math.prod(self.latent.shape[1:])

    @property
    def nats_per_dim(self) -> Tensor:
        """``-log p(x) / D`` ``(n,)``: the negative log-likelihood per dimension, in nats."""
        return -self.log_prob / self.dim


class _Divergence:
    """``tr(dv/dx)`` per row of ``x`` ``(n, *event)``, exact or by Hutchinson's probes ``(K, n, *event)``,
    from vector-Jacobian products: batched (``is_grads_batched``) until that fails once, then in a loop."""

    def __init__(self, probes: Tensor | None) -> None:
        self.probes = probes
        self.vectorized = True

    def __call__(self, v: Tensor, x: Tensor) -> Tensor:
        """The divergence ``(n, K)`` (``K = 1`` for the exact trace) of ``v`` ``(n, *event)`` built from
        ``x`` (requiring grad)."""
        n, k = x.shape[0], 1 if self.probes is None else self.probes.shape[0]
        if not v.requires_grad:  # v does not depend on x (nor on anything else): zero divergence
            return torch.zeros(n, k, dtype=v.dtype, device=v.device)
        return self._exact(v, x)[:, None] if self.probes is None else self._hutchinson(v, x, self.probes)

    def _vjp(self, v: Tensor, x: Tensor, cotangents: Tensor) -> Tensor:
        """``c_j^T dv/dx`` for each of the cotangents ``c`` ``(m, n, *event)``: ``(m, n, *event)``."""
        if self.vectorized:
            try:
                (g,) = torch.autograd.grad(v, x, cotangents, retain_graph=True, is_grads_batched=True,
                                           allow_unused=True)
            except (RuntimeError, NotImplementedError):  # the model's backward does not run under vmap
                self.vectorized = False
            else:
                return torch.zeros_like(cotangents) if g is None else g
        rows = []
        for c in cotangents:
            (g,) = torch.autograd.grad(v, x, c, retain_graph=True, allow_unused=True)
            rows.append(torch.zeros_like(c) if g is None else g)
        return torch.stack(rows)

    def _exact(self, v: Tensor, x: Tensor) -> Tensor:
        n, d = x.shape[0], math.prod(x.shape[1:])
        chunk = max(1, min(d, MAX_BATCHED_VALUES // max(1, n * d)))
        trace = torch.zeros(n, dtype=v.dtype, device=v.device)
        for lo in range(0, d, chunk):
            dims = torch.arange(lo, min(d, lo + chunk), device=v.device)
            units = torch.zeros(len(dims), 1, d, dtype=v.dtype, device=v.device)
            units[torch.arange(len(dims)), 0, dims] = 1.0
            g = self._vjp(v, x, units.expand(len(dims), n, d).reshape(len(dims), *x.shape))
            trace += g.reshape(len(dims), n, d)[torch.arange(len(dims)), :, dims].sum(0)  # rows' e_i^T J e_i
        return trace

    def _hutchinson(self, v: Tensor, x: Tensor, probes: Tensor) -> Tensor:
        k, n = probes.shape[:2]
        g = self._vjp(v, x, probes)
        return (g * probes).reshape(k, n, -1).sum(-1).T  # (n, K): eps_k^T J eps_k


def hutchinson_probes(options: LikelihoodOptions, shape: tuple[int, ...], *, seed: int, start: int = 0,
                      draw: int = 0, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
    """The ``K`` probes ``(K, n, *event)`` of samples ``start .. start + n - 1`` (``shape = (n, *event)``):
    Rademacher signs or standard normals from :class:`~diffcore.noise.NoiseSource` (stream
    ``"hutchinson"``), so a sample's probes depend only on ``seed``, its index and ``draw`` (a new set for
    each dequantisation draw of the same rows), not on the batch, the chunking or the device."""
    noise = NoiseSource.range(seed, start, start + shape[0], device=device)
    event = (options.probes, *shape[1:])
    if options.probe == "gaussian":
        draws = noise.normal(event, step=draw, stream="hutchinson", dtype=torch.float64)
    else:
        draws = torch.where(noise.uniform(event, step=draw, stream="hutchinson", dtype=torch.float64) < 0.5, -1.0, 1.0)
    return draws.to(dtype).transpose(0, 1).contiguous()  # (n, K, *event) -> (K, n, *event)


def log_likelihood(score_fn: ScoreFn, process: ForwardProcess, x: Tensor, *, options: LikelihoodOptions | None = None,
                   seed: int = 0, start: int = 0, draw: int = 0, t_start: float | None = None,
                   t_end: float | None = None,
                   end_log_prob: Callable[[Tensor], Tensor] | None = None, threads: Threads = None) -> LikelihoodResult:
    """``log p(x)`` per sample, by the probability-flow ODE and the instantaneous change of variables
    (module docstring; Song et al. 2021, Sec. 4.3 and App. D.2; Chen et al. 2018; Grathwohl et al. 2019).

    Args:
        score_fn: the score ``(x, t) -> (n, *event)`` of the model, e.g. ``pipeline.score_fn()`` or
            ``score_function(model, process)`` with a condition bound (any model kind, any network).
            It is evaluated with autograd enabled (for the divergence) on ``n``-row batches.
        process: the forward process (any; ``ve``, ``vp``, ``subvp`` or a plugin's).
        x: the data ``(n, *event)``, floating point, on the device of the model; the ODE runs in its dtype.
        options: divergence and solver (:class:`LikelihoodOptions`; default: exact trace, dopri5, 1e-5).
        seed, start: Hutchinson's probes are drawn for samples ``start .. start + n - 1`` under ``seed``
            (:func:`hutchinson_probes`): a shard of the rows with its ``start`` draws the probes it draws
            within the whole; ``draw`` selects an independent set of probes for the same rows (one per
            dequantisation draw). Unused by the exact trace, which is deterministic.
        t_start, t_end: the interval, default ``[process.t_min, process.T]``, within it.
        end_log_prob: ``latent (n, *event) -> (n,)``, the log-density at ``t_end``: default the process's
            prior, required when ``t_end`` is not ``process.T``.
        threads: torch's CPU threads for the solve, a count or ``"auto"`` (default: the cores other
            processes leave idle; :mod:`diffcore.threads`).

    Returns:
        :class:`LikelihoodResult`: ``log_prob`` ``(n,)`` float64 nats of ``p_{t_start}``, its parts, the
        standard error (Hutchinson, ``K > 1``), the latent, NFE and time.

    An adaptive solver takes one step size for all ``n`` rows, so a row's result depends on the others
    within the tolerance; fixed-step methods treat rows independently.

    Raises:
        UsageError: ``x`` not a finite floating tensor with a batch dimension, times outside
            ``[t_min, T]``, a bad seed, a missing ``end_log_prob``.
        NonFiniteError: the velocity or the divergence became NaN or Inf.
    """
    opts = options if options is not None else LikelihoodOptions()
    t0 = process.t_min if t_start is None else float(t_start)
    t1 = process.T if t_end is None else float(t_end)
    _check_inputs(x, process, t0, t1, seed, start)
    if end_log_prob is None:
        if t1 != process.T:
            raise UsageError(f"t_end = {t1:g} is not the process's T = {process.T:g}, where its prior is; pass "
                             "end_log_prob, the log-density at t_end")
        end_log_prob = process.prior_log_prob
    n = x.shape[0]
    probes = None
    if opts.trace == "hutchinson":
        probes = hutchinson_probes(opts, tuple(x.shape), seed=seed, start=start, draw=draw, device=x.device,
                                   dtype=x.dtype)
    divergence = _Divergence(probes)
    k = 1 if probes is None else opts.probes
    dim = math.prod(x.shape[1:])
    lg = process.linear_gaussian
    began = time.perf_counter()
    with torch.no_grad(), cpu_threads(threads):
        zero = torch.zeros(n, k, dtype=x.dtype, device=x.device)
        if lg is None or opts.variable == "t":
            solution = integrate(_augmented_in_t(process, score_fn, divergence), (x.detach(), zero), t0, t1, opts,
                                 atol_scales=(1.0, dim))
            latent, integral = solution.state
        else:
            flow = _NoiseLevelFlow(lg, score_fn, divergence, t0, t1, probes, dim)
            solution = integrate(flow, (x.detach() / flow.alpha_start, zero), flow.start, flow.end, opts,
                                 atol_scales=(1.0, dim))
            y_end, integral = solution.state
            latent = y_end * flow.alpha_end
            # the reference's divergence, integrated exactly; x = alpha y: log p_x(x) = log p_y(y) - D log alpha
            # at both ends (module docstring)
            integral = integral + flow.reference_integral() + dim * (
                math.log(flow.alpha_end) - math.log(flow.alpha_start))
        prior = end_log_prob(latent)
    if not isinstance(prior, Tensor) or prior.shape != (n,):
        got = f"shape {tuple(prior.shape)}" if isinstance(prior, Tensor) else type_name(prior)
        raise PluginError(f"the log-density at t_end returned {got} for {n} samples; it must be a tensor of shape "
                          f"({n},)")
    prior = prior.detach().to(torch.float64)
    per_probe = prior[:, None] + integral.to(torch.float64)  # (n, K)
    seconds = time.perf_counter() - began
    hutchinson = probes is not None
    return LikelihoodResult(
        log_prob=per_probe.mean(1), stderr=per_probe.std(1) / math.sqrt(k) if hutchinson and k > 1 else None,
        prior_log_prob=prior, delta_log_prob=integral.to(torch.float64).mean(1),
        per_probe=per_probe if hutchinson else None, latent=latent, nfe=solution.nfe, steps=solution.steps,
        seconds=seconds, trace=opts.trace, probes=k if hutchinson else 0, vectorized=divergence.vectorized)


def _augmented_in_t(process: ForwardProcess, score_fn: ScoreFn,
                    divergence: _Divergence) -> Callable[[Tensor, tuple[Tensor, ...]], tuple[Tensor, ...]]:
    """``(t, (x, integral)) -> (v(x, t), div v)``: the probability-flow ODE in the process time ``t``."""
    velocity = probability_flow_velocity(process, score_fn)

    def augmented(t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        with torch.enable_grad():
            xt = state[0].detach().requires_grad_(True)
            v = velocity(t, xt)
            div = divergence(v, xt)
        check_finite(v, "the probability-flow velocity", step=0, t=t)
        check_finite(div, "the divergence of the probability-flow velocity", step=0, t=t)
        return v.detach(), div.detach()

    return augmented


class _NoiseLevelFlow:
    """The probability-flow ODE of a linear-Gaussian process in its VE form (Karras et al. 2022, eq. 4;
    k-diffusion's ``log_likelihood``): state ``y = x / alpha_t``, time the noise level
    ``s = sigma_t / alpha_t = exp(-lambda_t)``, where

        dy/ds = -s alpha_t score(alpha_t y, t) = (y - D(y, s)) / s,

    ``D`` the denoiser in ``y`` units (Tweedie). It is :func:`log_likelihood`'s augmented velocity
    ``(tau, (y, integral)) -> (dy/dtau, div_y dy/dtau - r(s))``, with the control variate ``r`` of the
    module docstring: the divergence ``D s / (1 + s^2)`` of the reference flow (data ``N(0, I)``), or
    ``|eps|^2 s / (1 + s^2)`` for a Hutchinson probe ``eps``; :meth:`reference_integral` adds its exact
    integral back. ``t(s)`` is the process's inverse of ``lambda``, clamped to ``[t0, t1]``: the score
    is never evaluated outside the interval (the solver's last step lands on the end,
    :func:`~diffcore.ode.integrate`)."""

    def __init__(self, lg: LinearGaussianProcess, score_fn: ScoreFn, divergence: _Divergence, t0: float,
                 t1: float, probes: Tensor | None, dim: int) -> None:
        self.lg, self.score_fn, self.divergence, self.t0, self.t1 = lg, score_fn, divergence, t0, t1
        self.dim = dim
        ends = torch.tensor([t0, t1], dtype=torch.float64)
        alpha, s = lg.alpha(ends), torch.exp(-lg.half_log_snr(ends))
        self.alpha_start, self.alpha_end = float(alpha[0]), float(alpha[1])
        self.start, self.end = float(s[0]), float(s[1])
        # the reference divergence's weight per (row, estimate): |eps|^2 per probe (K, n) -> (n, K), D for the trace
        self.weights: Tensor | float = float(dim) if probes is None else probes.flatten(2).square().sum(-1).T

    def reference_integral(self) -> float:
        """``int_{s0}^{s1} D s / (1 + s^2) ds = D/2 log((1 + s1^2) / (1 + s0^2))``, the control variate's
        exact integral (its expectation over the probes for Hutchinson)."""
        return 0.5 * self.dim * (math.log1p(self.end**2) - math.log1p(self.start**2))

    def __call__(self, tau: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        y = state[0]
        n = y.shape[0]
        # s in float64 on the CPU, within the interval (torchdiffeq's first-step probe may look past the end)
        s = tau.detach().to("cpu", torch.float64).reshape(1).clamp(self.start, self.end)
        t = self.lg.t_from_half_log_snr(-torch.log(s)).clamp(self.t0, self.t1)
        a = float(self.lg.alpha(t))
        coef = -float(s) * a  # dy/ds = -s alpha score(alpha y, t)
        tb = t.to(device=y.device, dtype=y.dtype).expand(n)
        with torch.enable_grad():
            yg = y.detach().requires_grad_(True)
            u = coef * self.score_fn(a * yg, tb)
            div = self.divergence(u, yg)
        check_finite(u, "the probability-flow velocity", step=0, t=tb[0])
        check_finite(div, "the divergence of the probability-flow velocity", step=0, t=tb[0])
        reference = float(s) / (1.0 + float(s) ** 2)
        return u.detach(), div.detach() - reference * self.weights


def _check_inputs(x: object, process: ForwardProcess, t0: float, t1: float, seed: int, start: int) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 2 or x.shape[0] == 0:
        what = f"shape {tuple(x.shape)}, {x.dtype}" if isinstance(x, Tensor) else type_name(x)
        raise UsageError(f"the data must be a floating-point tensor (n, *event) with at least one row; got {what}")
    if math.prod(x.shape[1:]) == 0:
        raise UsageError(f"the data have no values per sample (shape {tuple(x.shape)})")
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x.reshape(x.shape[0], -1))).any(1).sum())
        raise UsageError(f"{bad} of the {x.shape[0]} data rows hold NaN or Inf")
    if not (process.t_min <= t0 < t1 <= process.T):
        raise UsageError(f"the likelihood integrates over [t_start, t_end] = [{t0:g}, {t1:g}], which must be an "
                         f"interval within the process's [t_min, T] = [{process.t_min:g}, {process.T:g}]")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UsageError(f"seed must be an integer from 0 to {MAX_SEED}; got {seed!r}")
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise UsageError(f"start (the index of the first row) must be a non-negative integer; got {start!r}")
