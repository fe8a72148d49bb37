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
``x0 = (x_t + sigma_t^2 s(x_t, t)) / alpha_t`` from the score.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from diffcore.errors import CompatibilityError
from diffcore.grids import GridKind, GridParams, time_grid
from diffcore.noise import NoiseSource
from diffcore.process import LINEAR_GAUSSIAN, ForwardProcess, LinearGaussianProcess, ScoreFn
from diffcore.sampler import Callback, Sampler


def as_linear_gaussian(process: ForwardProcess, what: str) -> LinearGaussianProcess:
    """``process`` narrowed to a linear-Gaussian process, or a :class:`CompatibilityError` naming ``what``."""
    if not isinstance(process, LinearGaussianProcess):
        raise CompatibilityError(f"{what} needs a linear-Gaussian process (alpha, sigma); "
                                 f"{getattr(process, 'name', type(process).__name__)!r} is not one")
    return process


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


def posterior(process: LinearGaussianProcess, x_t: Tensor, x0: Tensor, t: float, s: float) -> tuple[Tensor, float]:
    """Mean ``(B, *event)`` and standard deviation (a float) of ``q(x_s | x_t, x_0)`` for ``s < t``:
    seed 003 eqs. 20.16 (mean) and 20.17 (variance) for a general linear-Gaussian process."""
    alpha_s, sigma_s = alpha_sigma(process, s)
    _, sigma_t = alpha_sigma(process, t)
    a, var_ts = transition(process, s, t)
    mean = (a * sigma_s**2 / sigma_t**2) * x_t + (alpha_s * var_ts / sigma_t**2) * x0
    return mean, (var_ts * sigma_s**2 / sigma_t**2) ** 0.5


def step(score_fn: ScoreFn, process: ForwardProcess, x: Tensor, t: float, s: float, z: Tensor | None) -> Tensor:
    """One ancestral step from ``x`` ``(B, *event)`` at time ``t`` to time ``s < t``: the posterior
    ``q(x_s | x_t, x0)`` (eqs. 20.16-20.17) with ``x0`` from the score by Tweedie's formula, plus
    ``std * z`` (``z`` shaped like ``x``; ``None``: the posterior mean). One score evaluation."""
    lg = as_linear_gaussian(process, "ancestral sampling")
    alpha_t, sigma_t = alpha_sigma(lg, t)
    tt = torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)
    x0 = (x + sigma_t**2 * score_fn(x, tt)) / alpha_t
    mean, std = posterior(lg, x, x0, t, s)
    return mean if z is None else mean + std * z


class AncestralParams(GridParams):
    """Parameters of ``ancestral``."""

    steps: int = Field(1000, gt=0, description="Steps from T to t_min (DDPM uses 1000), one score evaluation each.")
    grid: GridKind = Field("uniform", description="Time grid: uniform, quadratic, logsnr or karras.")


class Ancestral(Sampler):
    """Ancestral sampling (DDPM, seed 003): ``x_s ~ q(x_s | x_t, x0_hat)`` between consecutive grid
    times ``t > s``, with ``x0_hat`` the Tweedie estimate from the score; see the module docstring
    for the general-process form of eqs. 20.16-20.17.

    On VE this is Song et al. (2021)'s ancestral sampler for SMLD, ``x + (sigma_t^2 - sigma_s^2) s +
    sqrt(sigma_s^2 (sigma_t^2 - sigma_s^2) / sigma_t^2) z``; on VP the DDPM update with ``beta =
    1 - abar_t / abar_s`` and the posterior variance ``tilde beta`` (eq. 20.17). The last step adds no
    noise (it returns the posterior mean). Noise of step ``i``: ``noise.normal(event, step=i)``.
    ``NFE = steps``; ``x_T`` ``(B, *event)``.
    """

    name = "ancestral"
    Params = AncestralParams
    params: AncestralParams
    requires = frozenset({LINEAR_GAUSSIAN})

    def run(self, score_fn: ScoreFn, process: ForwardProcess, x_T: Tensor, noise: NoiseSource,
            callback: Callback | None) -> tuple[Tensor, int]:
        p = self.params
        times = time_grid(process, p.steps, p.grid, rho=p.rho).tolist()
        x, event = x_T, tuple(x_T.shape[1:])
        for i in range(p.steps):
            z = noise.normal(event, step=i, dtype=x.dtype) if i < p.steps - 1 else None
            x = step(score_fn, process, x, times[i], times[i + 1], z)
            self.report(callback, i, times[i + 1], x)
        return x, p.steps
