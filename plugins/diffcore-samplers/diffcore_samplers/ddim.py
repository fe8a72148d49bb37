"""DDIM (Song, Meng & Ermon 2021) for any linear-Gaussian process, with the stochasticity ``eta``."""

from __future__ import annotations

import math

from pydantic import Field
from torch import Tensor

from diffcore.component import describe
from diffcore.grids import GridKind, GridParams
from diffcore.limits import Steps
from diffcore.noise import NoiseSource
from diffcore.process import LINEAR_GAUSSIAN, ForwardProcess, ScoreFn, require_linear_gaussian
from diffcore.sampler import Callback, Sampler
from diffcore_samplers.common import ThresholdParams, finish, grid_points, score_at, threshold_x0, thresholding_of


class DDIMParams(ThresholdParams, GridParams):
    """Parameters of ``ddim``."""

    steps: Steps = Field(50, description="Steps from T to t_min (one score evaluation each).")
    grid: GridKind = Field("logsnr", description="Time grid: logsnr (uniform in lambda), uniform, quadratic "
                           "(DDIM's) or karras.")
    eta: float = Field(0.0, ge=0.0, le=1.0, description="0: deterministic (probability-flow discretisation); "
                       "1: the ancestral (DDPM posterior) sampler; in between: interpolates the noise.")
    final_denoise: bool = Field(False, description="Finish with a Tweedie denoising step at t_min (one more "
                                "score evaluation).")


class DDIM(Sampler):
    """DDIM (Song, Meng & Ermon 2021): deterministic first-order steps of the probability-flow ODE; a sound default at
    50 to 100 evaluations.

    DDIM (Song, Meng & Ermon 2021, eq. (12)) written for a general ``x_t = alpha_t x_0 + sigma_t z``.

    From ``t`` to the next (less noisy) grid time ``t'``, with ``x0 = (x + sigma_t^2 s) / alpha_t``
    and ``eps = -sigma_t s`` from the score ``s(x, t)`` and ``z ~ N(0, I)``::

        x' = alpha_t' x0 + sqrt(sigma_t'^2 - sigma_eta^2) eps + sigma_eta z,
        sigma_eta = eta * sigma_t' * sqrt(1 - exp(-2 h)),   h = lambda_t' - lambda_t > 0.

    ``sigma_eta`` is eq. (16) of the paper in general form: at ``eta = 1`` it is the standard
    deviation of ``q(x_t' | x_t, x_0)``, ``sigma_t'^2 (1 - (alpha_t sigma_t')^2 / (alpha_t' sigma_t)^2)``,
    which for VP (``alpha^2 = abar``, ``sigma^2 = 1 - abar``) is
    ``(1 - abar_t') / (1 - abar_t) (1 - abar_t / abar_t')``. ``eta = 0`` is the exponential-integrator
    discretisation of the probability-flow ODE (= DPM-Solver-1, first order); ``eta = 1`` the
    ancestral sampler. Noise of step ``i`` is ``noise.normal(event, step=i)``.

    ``thresholding`` (Saharia et al. 2022, Sec. 2.3) replaces ``x0`` by
    :func:`~diffcore_samplers.common.threshold_x0` of it and ``eps`` by the noise consistent with it,
    ``(x - alpha_t x0) / sigma_t`` (as diffusers' DDIM does); the final Tweedie step is thresholded too.

    One score evaluation per step: ``NFE = steps`` (+1 with ``final_denoise``). Shapes: ``x_T``
    ``(B, *event)``.
    """

    name = "ddim"
    Params = DDIMParams
    params: DDIMParams
    requires = frozenset({LINEAR_GAUSSIAN})

    def run(self, score_fn: ScoreFn, process: ForwardProcess, x_T: Tensor, noise: NoiseSource,
            callback: Callback | None) -> tuple[Tensor, int]:
        p = self.params
        lg = require_linear_gaussian(process, describe(self))
        points = grid_points(lg, p.steps, p.grid, p.rho)
        threshold = thresholding_of(p)
        x, event = x_T, tuple(x_T.shape[1:])
        for i in range(p.steps):
            s, t = points[i], points[i + 1]
            score = score_at(score_fn, x, s)
            eps = -s.sigma * score
            x0 = (x + s.sigma**2 * score) / s.alpha
            if threshold is not None:
                x0 = threshold_x0(x0, threshold)
                eps = (x - s.alpha * x0) / s.sigma
            keep = -math.expm1(-2.0 * (t.lam - s.lam))  # 1 - exp(-2h), in (0, 1)
            sigma_eta = p.eta * t.sigma * math.sqrt(keep)
            x = t.alpha * x0 + t.sigma * math.sqrt(1.0 - p.eta**2 * keep) * eps
            if sigma_eta > 0.0:
                x = x + sigma_eta * noise.normal(event, step=i, dtype=x.dtype)
            self.report(callback, i, t.t, x)
        return finish(score_fn, lg, x, p.final_denoise, threshold), p.steps
