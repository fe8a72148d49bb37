"""Ancestral sampling with the DDPM posterior (seed 003, eqs. 20.13-20.17), for any linear-Gaussian process.

Seed 003 writes the forward chain of DDPM as ``q(z_t | z_{t-1}) = N(sqrt(1 - beta_t) z_{t-1}, beta_t I)``
with ``q(z_t | x) = N(sqrt(abar_t) x, (1 - abar_t) I)`` (its eqs. 20.6-20.7 call ``abar_t`` "alpha_t") and
the posterior of one step given the data (eqs. 20.15-20.17)::

    q(z_{t-1} | z_t, x) = N(m_t, s_t^2 I),
    m_t   = [(1 - abar_{t-1}) sqrt(1 - beta_t) z_t + sqrt(abar_{t-1}) beta_t x] / (1 - abar_t),   (20.16)
    s_t^2 = beta_t (1 - abar_{t-1}) / (1 - abar_t).                                                (20.17)

For a process with marginal ``x_t = alpha_t x_0 + sigma_t z`` and two times ``s < t`` the same algebra
(Bayes' rule, eq. 20.13, on Gaussians) holds with the transition ``x_t | x_s ~ N(alpha_{t|s} x_s,
sigma_{t|s}^2 I)``, ``alpha_{t|s} = alpha_t / alpha_s``, ``sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2``::

    mean = (alpha_{t|s} sigma_s^2 / sigma_t^2) x_t + (alpha_s sigma_{t|s}^2 / sigma_t^2) x_0,
    var  = sigma_{t|s}^2 sigma_s^2 / sigma_t^2.

For VP (``alpha^2 = abar``, ``sigma^2 = 1 - abar``) this is exactly (20.16)-(20.17) with
``beta = sigma_{t|s}^2 = 1 - abar_t / abar_s``. The sampler replaces ``x_0`` by its Tweedie estimate
``x0 = (x_t + sigma_t^2 s(x_t, t)) / alpha_t`` from the score. The step itself
(:func:`~diffcore_samplers.common.ancestral_step`, with :func:`~diffcore_samplers.common.posterior`) is
shared with ``pc``'s ``ancestral`` predictor and lives in :mod:`diffcore_samplers.common`.
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

from diffcore.component import describe
from diffcore.grids import GridKind, GridParams, time_grid
from diffcore.limits import Steps
from diffcore.noise import NoiseSource
from diffcore.process import ForwardProcess, ScoreFn
from diffcore.sampler import Callback, Sampler
from diffcore_samplers.common import ANCESTRAL


class AncestralParams(GridParams):
    """Parameters of ``ancestral``."""

    steps: Steps = Field(1000, description="Steps from T to t_min (DDPM uses 1000), one score evaluation each.")
    grid: GridKind = Field("uniform", description="Time grid: uniform, quadratic, logsnr or karras.")


class Ancestral(Sampler):
    """DDPM's ancestral sampler (Ho et al. 2020): stochastic, one score evaluation per step; robust, but needs hundreds
    of steps.

    Ancestral sampling (DDPM, Ho et al. 2020, Sec. 3.2): ``x_s ~ q(x_s | x_t, x0_hat)`` between
    consecutive grid times ``t > s``, with ``x0_hat`` the Tweedie estimate from the score, for any
    linear-Gaussian process.

    The module docstring gives the general-process form of the posterior (seed 003, eqs. 20.16-20.17).

    On VE this is Song et al. (2021)'s ancestral sampler for SMLD, ``x + (sigma_t^2 - sigma_s^2) s +
    sqrt(sigma_s^2 (sigma_t^2 - sigma_s^2) / sigma_t^2) z``; on VP the DDPM update with ``beta =
    1 - abar_t / abar_s`` and the posterior variance ``tilde beta`` (eq. 20.17). The last step adds no
    noise (it returns the posterior mean). Noise of step ``i``: ``noise.normal(event, step=i)``.
    ``NFE = steps``; ``x_T`` ``(B, *event)``.
    """

    name = "ancestral"
    Params = AncestralParams
    params: AncestralParams
    requires = ANCESTRAL.requires

    def run(self, score_fn: ScoreFn, process: ForwardProcess, x_T: Tensor, noise: NoiseSource,
            callback: Callback | None) -> tuple[Tensor, int]:
        p = self.params
        times = time_grid(process, p.steps, p.grid, rho=p.rho).tolist()
        x = ANCESTRAL.run(describe(self), score_fn, process, x_T, times, noise, callback, noise_last=False)
        return x, p.steps
