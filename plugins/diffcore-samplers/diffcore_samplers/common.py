"""What the samplers share, in a module no sampler owns (no sampler module imports another).

- Linear-Gaussian set-up: :func:`alpha_sigma` and the forward :func:`transition` of a
  :class:`~diffcore.process.LinearGaussianProcess`. A sampler gets the typed process once, before
  its loop, from ``process.linear_gaussian`` or :func:`~diffcore.process.require_linear_gaussian`;
  everything here takes it already typed (or ``None`` for a generic path decided once).
- Exponential integrators in the half log-SNR ``lambda`` (``dpm_solver``, ``dpm_solver_pp``,
  ``unipc``, ``ddim``, ``heun``): :class:`LogSNRPoint`, the ``phi`` functions, Taylor weights,
  derivative estimates, and :class:`DPMSolverBase`, the solver of both DPM-Solver parametrisations.
- Thresholding of the data prediction (``ddim``, ``dpm_solver_pp``, ``unipc``, ``heun``):
  :class:`ThresholdParams` and :func:`threshold_x0` (static clipping and Imagen's dynamic
  thresholding, Saharia et al. 2022, Sec. 2.3).
- Reverse-SDE steps (``ancestral``, ``reverse_diffusion``, ``euler_maruyama``, and the predictors of
  ``pc``): each declared once as a :class:`Predictor`, its step with the capabilities it needs.

The exponential integrators. For a linear-Gaussian process (``x_t = alpha_t x_0 + sigma_t z``) the
probability-flow ODE is semi-linear. Written in ``lambda = log(alpha / sigma)`` its linear part is
solved exactly (variation of constants, Lu et al. 2022, Prop. 3.1, eq. (3.4)); from ``s`` to ``t``
with ``h = lambda_t - lambda_s > 0``:

- noise prediction ``eps_hat = -sigma * score`` (DPM-Solver)::

      x_t = (alpha_t / alpha_s) x_s - alpha_t int_{lambda_s}^{lambda_t} e^{-lambda} eps_hat dlambda
          = (alpha_t / alpha_s) x_s - sigma_t sum_n h^{n+1} phi_{n+1}(h) eps_hat^{(n)}(lambda_s)

- data prediction ``x0_hat = (x + sigma^2 score) / alpha`` (DPM-Solver++, Lu et al. 2022b, Sec. 4)::

      x_t = (sigma_t / sigma_s) x_s + sigma_t int_{lambda_s}^{lambda_t} e^{lambda} x0_hat dlambda
          = (sigma_t / sigma_s) x_s + alpha_t sum_n h^{n+1} phi_{n+1}(-h) x0_hat^{(n)}(lambda_s)

where ``phi_k(z) = int_0^1 e^{(1 - u) z} u^{k-1} / (k-1)! du`` (``phi_1(z) = expm1(z) / z``,
``phi_{k+1}(z) = (phi_k(z) - 1/k!) / z``) and ``m^{(n)}`` is the ``n``-th derivative in ``lambda``
(the Taylor expansion of Lu et al. 2022, Sec. 3.2, integrated exactly). A solver of order ``k``
keeps the terms ``n < k`` and estimates the derivatives from extra evaluations: inside the step
(singlestep) or at earlier grid points (multistep). Everything here uses only ``alpha``, ``sigma``
and ``lambda`` of a :class:`~diffcore.process.LinearGaussianProcess`, computed in float64 on the
CPU; the state keeps the dtype and device of ``x_T``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor

from diffcore.component import Params, describe
from diffcore.grids import GridKind, GridParams, time_grid
from diffcore.limits import Steps
from diffcore.noise import NoiseSource
from diffcore.process import (
    LINEAR_GAUSSIAN,
    ForwardProcess,
    LinearGaussianProcess,
    ScoreFn,
    require_linear_gaussian,
)
from diffcore.sampler import Callback, Sampler, tweedie_denoise
from diffcore.utils import bcast

# ---------------------------------------------------------------------------------------------
# Linear-Gaussian set-up
# ---------------------------------------------------------------------------------------------


def alpha_sigma(process: LinearGaussianProcess, t: float) -> tuple[float, float]:
    """``alpha(t)`` and ``sigma(t)`` as Python floats, evaluated in float64 on the CPU."""
    tt = torch.tensor([t], dtype=torch.float64)
    return float(process.alpha(tt)), float(process.sigma(tt))


def transition(process: LinearGaussianProcess, s: float, t: float) -> tuple[float, float]:
    """``alpha_{t|s} = alpha_t / alpha_s`` and ``sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2``
    of the forward transition ``x_t | x_s`` for ``s < t`` (float64; the variance clamped at zero)."""
    alpha_s, sigma_s = alpha_sigma(process, s)
    alpha_t, sigma_t = alpha_sigma(process, t)
    a = alpha_t / alpha_s
    return a, max(sigma_t**2 - a**2 * sigma_s**2, 0.0)


# ---------------------------------------------------------------------------------------------
# Thresholding the data prediction (Saharia et al. 2022, Sec. 2.3)
# ---------------------------------------------------------------------------------------------

MIN_CLIP_RANGE = 1e-6
"""Smallest ``clip_range``: well above float32's subnormal numbers, where ``clip_range / s`` breaks."""
MAX_CLIP_RANGE = 1e6
"""Largest ``clip_range``: far beyond any data scale a model is trained on."""

QUANTILE_MAX_VALUES = 1 << 24
"""Most values handed to one ``torch.quantile`` call (older torch refuses larger inputs)."""


class ThresholdParams(Params):
    """The thresholding fields of the samplers that form the data prediction ``x0_hat`` (mixed into
    their Params; ``thresholding: none``, the default, leaves the sampler unchanged)."""

    thresholding: Literal["none", "clip", "dynamic"] = Field(
        "none", description="Threshold every data prediction x0_hat the sampler forms (Saharia et al. 2022, "
        "Imagen, Sec. 2.3): none; clip (static thresholding to [-clip_range, clip_range]); dynamic (per sample, "
        "s = max(percentile of |x0_hat|, clip_range), x0_hat = clip(x0_hat, -s, s) * clip_range / s). Helps "
        "when strong guidance pushes x0_hat out of the data range.")
    clip_range: float = Field(1.0, ge=MIN_CLIP_RANGE, le=MAX_CLIP_RANGE, description="The data range "
                              "[-clip_range, clip_range] of thresholding, 1e-6 to 1e6 (Saharia et al. 2022 use 1 for "
                              "images in [-1, 1]).")
    percentile: float = Field(0.995, gt=0.0, le=1.0, description="Quantile p of |x0_hat| over each sample's "
                              "values for dynamic thresholding, in (0, 1] (Saharia et al. 2022, Sec. 2.3).")


def thresholding_of(params: Params) -> ThresholdParams | None:
    """``params`` when they ask for thresholding, else ``None`` (the untouched path)."""
    return params if isinstance(params, ThresholdParams) and params.thresholding != "none" else None


def threshold_x0(x0: Tensor, params: ThresholdParams) -> Tensor:
    """The data prediction ``x0`` ``(B, *event)`` thresholded as ``params`` ask, same shape and dtype.

    With the data range ``r = clip_range``: ``clip`` is ``clamp(x0, -r, r)``; ``dynamic`` is Imagen's
    dynamic thresholding (Saharia et al. 2022, Sec. 2.3) for data in ``[-r, r]``: per sample,
    ``s = max(quantile(|x0|, percentile), r)`` over all its values (linear interpolation, as
    ``numpy.quantile``) and ``x0 = clamp(x0, -s, s) * (r / s)``, so a sample whose values all lie
    within ``[-r, r]`` is unchanged. ``none`` returns ``x0`` itself."""
    r = params.clip_range
    if params.thresholding == "none":
        return x0
    if params.thresholding == "clip":
        return x0.clamp(-r, r)
    flat = x0.reshape(x0.shape[0], -1).abs()
    if flat.dtype not in (torch.float32, torch.float64):  # torch.quantile takes only these
        flat = flat.float()
    rows = max(1, QUANTILE_MAX_VALUES // max(flat.shape[1], 1))
    s = torch.cat([torch.quantile(chunk, params.percentile, dim=1) for chunk in flat.split(rows)])
    s = s.clamp(min=r).to(x0.dtype).reshape(-1, *[1] * (x0.ndim - 1))
    return torch.maximum(torch.minimum(x0, s), -s) * (r / s)


# ---------------------------------------------------------------------------------------------
# Exponential integrators: points on the lambda axis, phi functions, orders, model outputs
# ---------------------------------------------------------------------------------------------

Prediction = Literal["noise", "data"]

LOWER_ORDER_FINAL_BELOW = 15
"""With ``lower_order_final``, runs of fewer steps than this end with steps of decreasing order
(DPM-Solver++, Lu et al. 2022b, Sec. 5: lower orders at the final steps for fewer than 15 steps)."""


@dataclass(frozen=True)
class LogSNRPoint:
    """A time ``t`` with ``alpha(t)``, ``sigma(t)`` and ``lambda(t) = log(alpha / sigma)`` (float64)."""

    t: float
    alpha: float
    sigma: float
    lam: float


def points_at_times(process: LinearGaussianProcess, times: Tensor) -> list[LogSNRPoint]:
    """``alpha``, ``sigma``, ``lambda`` at each of ``times`` ``(N,)``, evaluated in float64 on the CPU."""
    t = times.detach().to(device="cpu", dtype=torch.float64)
    alpha, sigma, lam = process.alpha(t), process.sigma(t), process.half_log_snr(t)
    return [LogSNRPoint(*values) for values in zip(t.tolist(), alpha.tolist(), sigma.tolist(), lam.tolist(),
                                                   strict=True)]


def grid_points(process: LinearGaussianProcess, steps: int, grid: str, rho: float) -> list[LogSNRPoint]:
    """The ``steps + 1`` points of the time grid from ``T`` to ``t_min`` (:func:`~diffcore.grids.time_grid`)."""
    return points_at_times(process, time_grid(process, steps, grid, rho=rho))


def point_at_lambda(process: LinearGaussianProcess, lam: float) -> LogSNRPoint:
    """The point whose half log-SNR is ``lam`` (through ``t_from_half_log_snr``); its ``lam`` is
    recomputed from the time found, so the coefficients stay consistent with ``alpha`` and ``sigma``."""
    t = process.t_from_half_log_snr(torch.tensor([lam], dtype=torch.float64))
    return points_at_times(process, t)[0]


def phi(k: int, z: float) -> float:
    """``phi_k(z) = sum_{j >= 0} z^j / (j + k)!`` for ``k >= 1``: by its series for ``|z| < 1``
    (no cancellation), else by ``phi_1 = expm1(z) / z`` and ``phi_{j+1} = (phi_j - 1/j!) / z``."""
    if k < 1:
        raise ValueError(f"phi_k needs k >= 1, got {k}")
    if abs(z) < 1.0:
        term, total = 1.0 / math.factorial(k), 0.0
        for j in range(30):  # |z|^30 / 30! < 1e-32
            total += term
            term *= z / (j + k + 1)
        return total
    value = math.expm1(z) / z
    for j in range(1, k):
        value = (value - 1.0 / math.factorial(j)) / z
    return value


def step_orders(order: int, steps: int, *, multistep: bool, lower_order_final: bool) -> list[int]:
    """The order of each of ``steps`` steps: ``order``, lowered at the start of a multistep run
    (step ``i`` has only ``i + 1`` evaluations to use: the warm-up) and, with ``lower_order_final``
    and fewer than :data:`LOWER_ORDER_FINAL_BELOW` steps, at the end (step ``i`` at most
    ``steps - i``)."""
    orders = []
    for i in range(steps):
        k = min(order, i + 1) if multistep else order
        if lower_order_final and steps < LOWER_ORDER_FINAL_BELOW:
            k = min(k, steps - i)
        orders.append(k)
    return orders


def score_at(score_fn: ScoreFn, x: Tensor, point: LogSNRPoint) -> Tensor:
    """The score at ``(x, point.t)``; ``x`` ``(B, *event)``, the time broadcast as ``(B,)``."""
    t = torch.full((x.shape[0],), point.t, device=x.device, dtype=x.dtype)
    return score_fn(x, t)


def model_output(prediction: Prediction, score_fn: ScoreFn, x: Tensor, point: LogSNRPoint,
                 threshold: ThresholdParams | None = None) -> Tensor:
    """One score evaluation turned into the noise prediction ``eps_hat = -sigma s`` or the data
    prediction ``x0_hat = (x + sigma^2 s) / alpha`` (Tweedie), shape of ``x``; the data prediction
    thresholded by :func:`threshold_x0` when ``threshold`` is given (the noise prediction never is)."""
    score = score_at(score_fn, x, point)
    if prediction == "noise":
        return -point.sigma * score
    x0 = (x + point.sigma**2 * score) / point.alpha
    return x0 if threshold is None else threshold_x0(x0, threshold)


def linear_coef(prediction: Prediction, s: LogSNRPoint, t: LogSNRPoint) -> float:
    """The exactly integrated linear part from ``s`` to ``t``: ``alpha_t / alpha_s`` (noise
    prediction) or ``sigma_t / sigma_s`` (data prediction)."""
    return t.alpha / s.alpha if prediction == "noise" else t.sigma / s.sigma


def taylor_weights(prediction: Prediction, s: LogSNRPoint, t: LogSNRPoint, terms: int) -> list[float]:
    """Weights ``w_n`` (``n < terms``) with ``x_t = linear_coef x_s + sum_n w_n m^{(n)}(lambda_s)``:
    ``-sigma_t h^{n+1} phi_{n+1}(h)`` (noise) or ``alpha_t h^{n+1} phi_{n+1}(-h)`` (data)."""
    h = t.lam - s.lam
    if prediction == "noise":
        return [-t.sigma * h ** (n + 1) * phi(n + 1, h) for n in range(terms)]
    return [t.alpha * h ** (n + 1) * phi(n + 1, -h) for n in range(terms)]


def exponential_step(prediction: Prediction, x: Tensor, s: LogSNRPoint, t: LogSNRPoint,
                     derivatives: list[Tensor]) -> Tensor:
    """``x_t`` from ``x_s`` with the model output and its ``lambda``-derivative estimates at ``s``
    (``derivatives[n]`` ~ ``m^{(n)}(lambda_s)``, each shaped like ``x``)."""
    out = linear_coef(prediction, s, t) * x
    for w, d in zip(taylor_weights(prediction, s, t, len(derivatives)), derivatives, strict=True):
        out = out + w * d
    return out


def backward_derivatives(history: list[tuple[float, Tensor]]) -> list[Tensor]:
    """``[m, m', m'']`` at the last of ``history`` (``(lambda_j, m_j)``, oldest first, 1 to 3 points):
    derivatives of the polynomial through the points, from Newton divided differences."""
    lam0, m0 = history[-1]
    if len(history) == 1:
        return [m0]
    lam1, m1 = history[-2]
    d01 = (m0 - m1) / (lam0 - lam1)
    if len(history) == 2:
        return [m0, d01]
    lam2, m2 = history[-3]
    d12 = (m1 - m2) / (lam1 - lam2)
    c = (d01 - d12) / (lam0 - lam2)  # P(l) = m0 + d01 (l - lam0) + c (l - lam0)(l - lam1)
    return [m0, d01 + c * (lam0 - lam1), 2.0 * c]


def finish(score_fn: ScoreFn, process: LinearGaussianProcess, x: Tensor, final_denoise: bool,
           threshold: ThresholdParams | None = None) -> Tensor:
    """The samples at ``t_min``, optionally denoised with Tweedie's formula (one more evaluation),
    the denoised samples thresholded by :func:`threshold_x0` when ``threshold`` is given."""
    if not final_denoise:
        return x
    x0 = tweedie_denoise(score_fn, process, x, process.t_min)
    return x0 if threshold is None else threshold_x0(x0, threshold)


# ---------------------------------------------------------------------------------------------
# DPM-Solver and DPM-Solver++ (the same solver in the two parametrisations; the registered
# classes are dpm_solver.DPMSolver and dpm_solver_pp.DPMSolverPP)
# ---------------------------------------------------------------------------------------------


class DPMSolverParams(GridParams):
    """Parameters of ``dpm_solver`` (and, with thresholding, :class:`DPMSolverPPParams`)."""

    steps: Steps = Field(20, description="Solver steps (intervals of the time grid); singlestep order k "
                       "costs k score evaluations per step, multistep one.")
    grid: GridKind = Field("logsnr", description="Time grid: logsnr (uniform in lambda, the papers' choice), "
                           "uniform, quadratic or karras.")
    order: int = Field(2, ge=1, le=3, description="Order of the solver: 1, 2 or 3.")
    method: Literal["singlestep", "multistep"] = Field(
        "multistep", description="singlestep: extra evaluations inside each step; multistep: reuse earlier steps'.")
    lower_order_final: bool = Field(True, description="With fewer than 15 steps, lower the order of the final "
                                    "steps (step i of N at most N - i).")
    final_denoise: bool = Field(False, description="Finish with a Tweedie denoising step at t_min (one more "
                                "score evaluation).")


class DPMSolverPPParams(ThresholdParams, DPMSolverParams):
    """Parameters of ``dpm_solver_pp``: those of ``dpm_solver`` and the thresholding of its data
    predictions (``dpm_solver`` predicts noise and has no ``x0_hat`` to threshold)."""


class DPMSolverBase(Sampler):
    """The DPM-Solver family, for either parametrisation (:attr:`prediction`).

    Singlestep order ``k`` (Lu et al. 2022, Algorithms 1 and 2; Lu et al. 2022b, Sec. 4.1 "2S"/"3S")
    evaluates the model at ``lambda_s + r_j h`` inside the step: ``r_1 = 1/2`` for order 2;
    ``r_1 = 1/3, r_2 = 2/3`` for order 3, whose final update uses only ``phi_2`` with the
    derivative ``(m(r_2) - m_s) / (r_2 h)``, third order because ``r_2 phi_2(0) / 2 = phi_3(0)``.
    Multistep order ``k`` (Lu et al. 2022, Appendix B.5; Lu et al. 2022b, Sec. 5 "2M"/"3M") takes
    the derivatives of the interpolating polynomial through the last ``k`` grid points' outputs
    (Newton divided differences; any grid) and uses the exact ``phi_2``, ``phi_3`` weights.
    """

    Params = DPMSolverParams
    params: DPMSolverParams
    requires = frozenset({LINEAR_GAUSSIAN})
    prediction: ClassVar[Prediction]

    def run(self, score_fn: ScoreFn, process: ForwardProcess, x_T: Tensor, noise: NoiseSource,
            callback: Callback | None) -> tuple[Tensor, int]:
        p = self.params
        lg = require_linear_gaussian(process, describe(self))
        points = grid_points(lg, p.steps, p.grid, p.rho)
        multistep = p.method == "multistep"
        orders = step_orders(p.order, p.steps, multistep=multistep, lower_order_final=p.lower_order_final)
        threshold = thresholding_of(p)  # only dpm_solver_pp's params have the fields
        x = x_T
        history: list[tuple[float, Tensor]] = []  # multistep: (lambda_j, m_j) of the last grid points
        for i, k in enumerate(orders):
            s, t = points[i], points[i + 1]
            m_s = model_output(self.prediction, score_fn, x, s, threshold)
            if multistep:
                history = [*history[-2:], (s.lam, m_s)]
                x = exponential_step(self.prediction, x, s, t, backward_derivatives(history[-k:]))
            else:
                x = self.singlestep(lg, score_fn, x, s, t, m_s, k, threshold)
            self.report(callback, i, t.t, x)
        return finish(score_fn, lg, x, p.final_denoise, threshold), p.steps

    def singlestep(self, process: LinearGaussianProcess, score_fn: ScoreFn, x: Tensor, s: LogSNRPoint,
                   t: LogSNRPoint, m_s: Tensor, order: int, threshold: ThresholdParams | None = None) -> Tensor:
        """One singlestep update of ``order`` from ``s`` to ``t`` (``order - 1`` further evaluations,
        data predictions thresholded as ``threshold`` asks)."""
        pred = self.prediction
        if order == 1:  # DPM-Solver-1 / DPM-Solver++(1S): DDIM with eta = 0
            return exponential_step(pred, x, s, t, [m_s])
        h = t.lam - s.lam
        if order == 2:
            s1 = point_at_lambda(process, s.lam + 0.5 * h)
            u1 = exponential_step(pred, x, s, s1, [m_s])
            d1 = (model_output(pred, score_fn, u1, s1, threshold) - m_s) / (s1.lam - s.lam)
            return exponential_step(pred, x, s, t, [m_s, d1])
        s1 = point_at_lambda(process, s.lam + h / 3.0)
        s2 = point_at_lambda(process, s.lam + 2.0 * h / 3.0)
        u1 = exponential_step(pred, x, s, s1, [m_s])
        d1 = (model_output(pred, score_fn, u1, s1, threshold) - m_s) / (s1.lam - s.lam)
        u2 = exponential_step(pred, x, s, s2, [m_s, d1])
        d2 = (model_output(pred, score_fn, u2, s2, threshold) - m_s) / (s2.lam - s.lam)
        return exponential_step(pred, x, s, t, [m_s, d2])


# ---------------------------------------------------------------------------------------------
# The DDPM posterior and the ancestral step (seed 003, eqs. 20.13-20.17)
# ---------------------------------------------------------------------------------------------


def posterior(process: LinearGaussianProcess, x_t: Tensor, x0: Tensor, t: float, s: float) -> tuple[Tensor, float]:
    """Mean ``(B, *event)`` and standard deviation (a float) of ``q(x_s | x_t, x_0)`` for ``s < t``:
    seed 003 eqs. 20.16 (mean) and 20.17 (variance) for a general linear-Gaussian process.

    With the transition ``x_t | x_s ~ N(alpha_{t|s} x_s, sigma_{t|s}^2 I)`` (:func:`transition`),
    Bayes' rule (eq. 20.13) on Gaussians gives::

        mean = (alpha_{t|s} sigma_s^2 / sigma_t^2) x_t + (alpha_s sigma_{t|s}^2 / sigma_t^2) x_0,
        var  = sigma_{t|s}^2 sigma_s^2 / sigma_t^2,

    for VP (``alpha^2 = abar``, ``sigma^2 = 1 - abar``) exactly (20.16)-(20.17) with
    ``beta = sigma_{t|s}^2 = 1 - abar_t / abar_s``."""
    alpha_s, sigma_s = alpha_sigma(process, s)
    _, sigma_t = alpha_sigma(process, t)
    a, var_ts = transition(process, s, t)
    mean = (a * sigma_s**2 / sigma_t**2) * x_t + (alpha_s * var_ts / sigma_t**2) * x0
    return mean, (var_ts * sigma_s**2 / sigma_t**2) ** 0.5


def ancestral_step(score_fn: ScoreFn, process: LinearGaussianProcess, x: Tensor, t: float, s: float,
                   z: Tensor | None) -> Tensor:
    """One ancestral step from ``x`` ``(B, *event)`` at time ``t`` to time ``s < t``: the posterior
    ``q(x_s | x_t, x0)`` (eqs. 20.16-20.17) with ``x0`` from the score by Tweedie's formula, plus
    ``std * z`` (``z`` shaped like ``x``; ``None``: the posterior mean). One score evaluation."""
    alpha_t, sigma_t = alpha_sigma(process, t)
    tt = torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)
    x0 = (x + sigma_t**2 * score_fn(x, tt)) / alpha_t
    mean, std = posterior(process, x, x0, t, s)
    return mean if z is None else mean + std * z


# ---------------------------------------------------------------------------------------------
# The reverse-diffusion step (Song et al. 2021, eq. 46 and Appendix E)
# ---------------------------------------------------------------------------------------------


def discretized_forward(process: ForwardProcess, lg: LinearGaussianProcess | None, x: Tensor, t: float,
                        s: float) -> tuple[Tensor, Tensor]:
    """The forward step from ``s`` to ``t > s`` as ``(f, G)``: the drift increment ``f`` (shape of
    ``x``, evaluated at ``x``) and the noise scale ``G`` ``(B, 1, ..., 1)``, in ``x``'s dtype.

    ``lg`` is ``process.linear_gaussian``, looked up once by the caller: with it, the exact transition
    ``x_t = alpha_{t|s} x_s + sigma_{t|s} z`` gives ``f = (alpha_{t|s} - 1) x`` and ``G = sigma_{t|s}``;
    without it (``None``), the Euler-Maruyama step ``f = f(x, t) (t - s)``, ``G = g(t) sqrt(t - s)``."""
    if lg is not None:
        a, var = transition(lg, s, t)
        return (a - 1.0) * x, torch.full((x.shape[0], *[1] * (x.ndim - 1)), var**0.5, device=x.device,
                                         dtype=x.dtype)
    tt = torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)
    h = t - s
    return process.drift(x, tt) * h, bcast(process.diffusion(tt), x) * h**0.5


def reverse_diffusion_step(score_fn: ScoreFn, process: ForwardProcess, lg: LinearGaussianProcess | None,
                           x: Tensor, t: float, s: float, z: Tensor | None) -> Tensor:
    """One reverse-diffusion step from ``x`` ``(B, *event)`` at ``t`` to ``s < t``:
    ``x - f + G^2 s(x, t) + G z`` with ``(f, G)`` of :func:`discretized_forward` (``z`` shaped like
    ``x``; ``None``: no noise). One score evaluation."""
    f, g = discretized_forward(process, lg, x, t, s)
    tt = torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)
    x = x - f + g**2 * score_fn(x, tt)
    return x if z is None else x + g * z


# ---------------------------------------------------------------------------------------------
# The Euler-Maruyama step of the reverse SDE (seed 001)
# ---------------------------------------------------------------------------------------------


def euler_maruyama_step(score_fn: ScoreFn, process: ForwardProcess, x: Tensor, t: float, s: float,
                        z: Tensor | None) -> Tensor:
    """One Euler-Maruyama step of the reverse SDE (seed 001) from ``t`` to ``s < t``:
    ``x - [f(x, t) - g(t)^2 s(x, t)] h + g(t) sqrt(h) z`` with ``h = t - s``. One score evaluation.
    (The ``euler_maruyama`` sampler runs the same update with its coefficients precomputed.)"""
    reverse = process.reverse(score_fn)
    tt = torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)
    h = t - s
    x = x - reverse.drift(x, tt) * h
    return x if z is None else x + bcast(reverse.diffusion(tt), x) * (h**0.5) * z


# ---------------------------------------------------------------------------------------------
# Predictors: each reverse-SDE step declared once with what it needs
# ---------------------------------------------------------------------------------------------

PredictorStep = Callable[[ScoreFn, Tensor, float, float, "Tensor | None"], Tensor]
"""``(score_fn, x, t, s, z) -> x_s``: one predictor step from ``t`` to ``s < t``, set up for one
process; ``z`` ``(B, *event)`` is the step's standard normal noise, ``None`` for a step without noise."""


@dataclass(frozen=True)
class Predictor:
    """A reverse-SDE step shared by its standalone sampler (the registered sampler ``name``, whose
    ``requires`` is this object's) and by ``pc`` (its ``predictor: name``).

    ``requires``: the process capabilities the step needs, stated here once. ``prepare(process, who)``
    does the typed set-up once, before a loop (``who`` names the caller in an error), and returns the
    :data:`PredictorStep` to call at every step."""

    name: str
    requires: frozenset[str]
    prepare: Callable[[ForwardProcess, str], PredictorStep]

    def run(self, who: str, score_fn: ScoreFn, process: ForwardProcess, x: Tensor, times: list[float],
            noise: NoiseSource, callback: Callback | None, *, noise_last: bool) -> Tensor:
        """The standalone sampler: the step between consecutive ``times`` (decreasing), step ``i``
        with ``noise.normal(event, step=i)`` (none in the last step unless ``noise_last``), each
        state checked and reported; ``x`` ``(B, *event)`` at ``times[0]``."""
        step = self.prepare(process, who)
        event, steps = tuple(x.shape[1:]), len(times) - 1
        for i in range(steps):
            z = noise.normal(event, step=i, dtype=x.dtype) if noise_last or i < steps - 1 else None
            x = step(score_fn, x, times[i], times[i + 1], z)
            Sampler.report(callback, i, times[i + 1], x)
        return x


def _prepare_ancestral(process: ForwardProcess, who: str) -> PredictorStep:
    lg = require_linear_gaussian(process, who)

    def step(score_fn: ScoreFn, x: Tensor, t: float, s: float, z: Tensor | None) -> Tensor:
        return ancestral_step(score_fn, lg, x, t, s, z)

    return step


def _prepare_reverse_diffusion(process: ForwardProcess, who: str) -> PredictorStep:
    lg = process.linear_gaussian

    def step(score_fn: ScoreFn, x: Tensor, t: float, s: float, z: Tensor | None) -> Tensor:
        return reverse_diffusion_step(score_fn, process, lg, x, t, s, z)

    return step


def _prepare_euler_maruyama(process: ForwardProcess, who: str) -> PredictorStep:
    def step(score_fn: ScoreFn, x: Tensor, t: float, s: float, z: Tensor | None) -> Tensor:
        return euler_maruyama_step(score_fn, process, x, t, s, z)

    return step


ANCESTRAL = Predictor("ancestral", frozenset({LINEAR_GAUSSIAN}), _prepare_ancestral)
"""The ancestral (DDPM posterior) step: linear-Gaussian processes only."""

REVERSE_DIFFUSION = Predictor("reverse_diffusion", frozenset(), _prepare_reverse_diffusion)
"""The reverse-diffusion step: any process (the exact transition when it is linear-Gaussian)."""

EULER_MARUYAMA = Predictor("euler_maruyama", frozenset(), _prepare_euler_maruyama)
"""The Euler-Maruyama step of the reverse SDE: any process."""

PREDICTORS: dict[str, Predictor] = {p.name: p for p in (REVERSE_DIFFUSION, EULER_MARUYAMA, ANCESTRAL)}
"""The predictors of ``pc`` by name (``predictor: none`` has no entry)."""

