"""Heun's second-order method on the probability-flow ODE in the EDM parametrisation (Karras et al.
2022, "Elucidating the Design Space of Diffusion-Based Generative Models", Algorithm 2), written for
any linear-Gaussian process ``x_t = alpha_t x_0 + sigma_t z``.

The EDM variables. With the noise level ``s(t) = sigma_t / alpha_t = exp(-lambda_t)`` and the scaled
state ``y = x / alpha_t``, the marginal is ``y = x_0 + s z``: the variance-exploding form of EDM
(eq. 1 with ``s(t) = sigma(t)``, ``s'(t)`` implicit). Its probability-flow ODE is EDM's eq. 1,

    dy / ds = -s grad_y log p(y; s) = (y - D(y; s)) / s,

and since ``p(y; s)`` is ``p_t(x)`` up to the constant Jacobian ``alpha_t``, ``grad_y log p(y; s) =
alpha_t score(x, t)``, so ``dy / ds = -s alpha_t score(x, t) = -sigma_t score(x, t)``. The same
follows from the process's own probability-flow ODE ``dx/dt = f x - g^2 score / 2`` with
``f = d log alpha / dt`` and ``g^2 = 2 sigma alpha ds/dt`` (the linear-Gaussian identities of
:class:`~diffcore.process.LinearGaussianProcess`): ``dy/dt = (dx/dt - f x) / alpha =
-sigma (ds/dt) score``. Heun's method steps in ``s`` on this ODE, the score evaluated at
``x = alpha_t y``.

Stochastic churn (Algorithm 2, lines 4-6): at a level ``s_i`` within ``[s_tmin, s_tmax]`` the state
is first raised to ``s_hat = s_i (1 + gamma_i)``, ``gamma_i = min(churn / N, sqrt(2) - 1)``, by adding
``sqrt(s_hat^2 - s_i^2) s_noise eps``: exactly the marginal at the higher level when ``s_noise = 1``.
``s_hat`` is clamped at ``s(T)``, the largest level the process defines (so the first step of the
default karras grid, which starts at ``s(T)``, never churns), and its time is found with
``process.t_from_half_log_snr(-log s_hat)``.

Thresholding (Saharia et al. 2022, Sec. 2.3). The direction is EDM's ``(y - D) / s`` with the
denoiser ``D = x0_hat = y + (sigma_t^2 / alpha_t) score(x, t)``; with ``thresholding`` the direction
is ``(y - threshold_x0(D)) / s`` (:func:`~diffcore_samplers.common.threshold_x0`), at both
evaluations of every step.
"""

from __future__ import annotations

import math

from pydantic import Field, model_validator
from torch import Tensor

from diffcore.component import describe
from diffcore.grids import GridKind, GridParams
from diffcore.limits import Steps
from diffcore.noise import NoiseSource
from diffcore.process import LINEAR_GAUSSIAN, ForwardProcess, ScoreFn, require_linear_gaussian
from diffcore.sampler import Callback, Sampler
from diffcore_samplers.common import (
    LogSNRPoint,
    ThresholdParams,
    grid_points,
    model_output,
    point_at_lambda,
    score_at,
    thresholding_of,
)

MAX_GAMMA = math.sqrt(2.0) - 1.0
"""EDM's cap on the churn per step (Algorithm 2, line 4): the level is raised by at most sqrt(2)."""


class HeunParams(ThresholdParams, GridParams):
    """Parameters of ``heun``; the churn parameters are EDM's ``S_churn``, ``S_tmin``, ``S_tmax``,
    ``S_noise`` with levels measured as ``s = sigma / alpha``."""

    steps: Steps = Field(50, description="Steps from T to t_min; two score evaluations each.")
    grid: GridKind = Field("karras", description="Time grid: karras (EDM, with rho), logsnr, uniform or "
                           "quadratic.")
    churn: float = Field(0.0, ge=0.0, description="EDM's S_churn: total churn over the run (0: deterministic). "
                         "Each step raises the level by the factor 1 + min(churn / steps, sqrt(2) - 1).")
    s_tmin: float = Field(0.0, ge=0.0, description="EDM's S_tmin: churn only at levels s = sigma/alpha >= s_tmin.")
    s_tmax: float | None = Field(None, gt=0.0, description="EDM's S_tmax: churn only at levels s <= s_tmax "
                                 "(none: no upper limit).")
    s_noise: float = Field(1.0, gt=0.0, description="EDM's S_noise: scale of the churn noise (1: exact).")

    @model_validator(mode="after")
    def _churn_window(self) -> HeunParams:
        if self.s_tmax is not None and self.s_tmax < self.s_tmin:
            raise ValueError(f"s_tmax ({self.s_tmax}) must not be below s_tmin ({self.s_tmin})")
        return self


class Heun(Sampler):
    """EDM's second-order Heun sampler (Karras et al. 2022) on the Karras noise grid, optionally with stochastic churn;
    two evaluations per step.

    EDM's Heun sampler (Karras et al. 2022, Algorithm 2) for any linear-Gaussian process.

    On the noise levels ``s_0 = s(T) > ... > s_N = s(t_min)`` of the grid (default ``karras``,
    EDM eq. 5), with the scaled state ``y = x / alpha`` and ``d(y, t) = -sigma_t score(alpha_t y, t)``
    (the ODE direction ``dy/ds``, see the module docstring)::

        s_hat = min(s_i (1 + gamma_i), s(T)),  y_hat = y_i + sqrt(s_hat^2 - s_i^2) s_noise eps_i
        y'      = y_hat + (s_{i+1} - s_hat) d(y_hat, t_hat)                          (Euler)
        y_{i+1} = y_hat + (s_{i+1} - s_hat) (d(y_hat, t_hat) + d(y', t_{i+1})) / 2   (trapezoid)

    ``eps_i`` is ``noise.normal(event, step=i)``, drawn only when ``gamma_i > 0``. EDM skips the
    correction when the step ends at level 0; here every grid ends at ``t_min > 0`` (``s_N > 0``),
    so every step, the last included, is a full Heun step: ``NFE = 2 steps``. With ``churn = 0`` the
    sampler is deterministic (the samples are a function of the prior draw alone). Shapes: ``x_T``
    ``(B, *event)``, any float dtype and device; coefficients are computed in float64 on the CPU.
    """

    name = "heun"
    Params = HeunParams
    params: HeunParams
    requires = frozenset({LINEAR_GAUSSIAN})

    def run(self, score_fn: ScoreFn, process: ForwardProcess, x_T: Tensor, noise: NoiseSource,
            callback: Callback | None) -> tuple[Tensor, int]:
        p = self.params
        lg = require_linear_gaussian(process, describe(self))
        points = grid_points(lg, p.steps, p.grid, p.rho)
        top = level(points[0])
        gamma = min(p.churn / p.steps, MAX_GAMMA)
        threshold = thresholding_of(p)
        event = tuple(x_T.shape[1:])
        y = x_T / points[0].alpha
        for i in range(p.steps):
            cur, nxt = points[i], points[i + 1]
            s_i = level(cur)
            in_window = p.s_tmin <= s_i and (p.s_tmax is None or s_i <= p.s_tmax)
            hat = cur
            if gamma > 0.0 and in_window and s_i < top:
                target = min(s_i * (1.0 + gamma), top)
                hat = point_at_lambda(lg, -math.log(target))
                std = math.sqrt(max(level(hat) ** 2 - s_i**2, 0.0)) * p.s_noise
                y = y + std * noise.normal(event, step=i, dtype=y.dtype)
            ds = level(nxt) - level(hat)
            d = direction(score_fn, y, hat, threshold)
            y_euler = y + ds * d
            y = y + ds * 0.5 * (d + direction(score_fn, y_euler, nxt, threshold))
            self.report(callback, i, nxt.t, nxt.alpha * y)
        return points[-1].alpha * y, p.steps


def level(point: LogSNRPoint) -> float:
    """The EDM noise level ``s = sigma / alpha`` of a grid point."""
    return point.sigma / point.alpha


def direction(score_fn: ScoreFn, y: Tensor, point: LogSNRPoint, threshold: ThresholdParams | None = None) -> Tensor:
    """``dy/ds = -sigma_t score(alpha_t y, t)`` for the scaled state ``y`` ``(B, *event)``; with
    ``threshold``, ``(y - threshold_x0(D)) / s`` with the denoiser ``D = x0_hat`` and ``s = sigma_t / alpha_t``."""
    if threshold is None:
        return -point.sigma * score_at(score_fn, point.alpha * y, point)
    denoised = model_output("data", score_fn, point.alpha * y, point, threshold)
    return (y - denoised) / level(point)
