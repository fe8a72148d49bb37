"""Continuous denoising score matching (seed 001; Song et al. 2021, eq. 7; Vincent 2011)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from diffcore.component import Params
from diffcore.model import ScoreModel, to_score
from diffcore.noise import NoiseSource
from diffcore.objective import Objective
from diffcore.process import LINEAR_GAUSSIAN, ForwardProcess, require_linear_gaussian
from diffcore.utils import bcast
from diffcore_objectives.common import perturb, sum_event, uniform_times


class DSMParams(Params):
    weighting: Literal["sigma2", "likelihood", "uniform"] = Field(
        "sigma2", description="lambda(t): sigma(t)^2 (default), g(t)^2 (likelihood weighting) or 1.")
    importance_sampling: bool = Field(
        False, description="With weighting 'likelihood': draw t uniformly in log-SNR, which is "
        "t ~ g^2/sigma^2, and reweight (Song et al. 2021b), same expectation, lower variance.")


class DenoisingScoreMatching(Objective):
    """Denoising score matching (Vincent 2011; Song et al. 2021): regress the score on the noise added to the training
    data. The standard objective; ``weighting: likelihood`` trains for likelihood (Song et al. 2021b).

    ``E_t E_{x0, eps} lambda(t) || s(x_t, t) + eps / sigma(t) ||^2`` with ``x_t = alpha x0 + sigma eps``
    and ``t ~ U[t_min, T]``; its minimiser is ``grad log p_t``.

    With importance sampling, ``lambda = -2 d lambda/dt`` makes ``g^2 / p(t) = Z sigma^2`` with
    ``Z = 2 (lambda(t_min) - lambda(T))`` (half log-SNR), so the estimator samples the half log-SNR
    uniformly and weights by ``Z sigma^2 / (T - t_min)``: the same expectation as the plain
    ``g^2``-weighted loss.

    For a network predicting ``eps`` the residual is taken in its own units,
    ``lambda / sigma^2 ||eps - eps_hat||^2`` (the DDPM "simple" loss for ``sigma2``): the same loss
    without turning ``eps_hat`` into a score by dividing by a small ``sigma``.
    """

    name = "dsm"
    Params = DSMParams
    params: DSMParams
    requires = frozenset({LINEAR_GAUSSIAN})

    def loss(self, model: ScoreModel, process: ForwardProcess, x0: Tensor, noise: NoiseSource,
             cond: Tensor | None = None) -> Tensor:
        lg = require_linear_gaussian(process, f"objective {self.name!r}")
        p = self.params
        if p.importance_sampling and p.weighting == "likelihood":
            ends = torch.tensor([lg.t_min, lg.T], dtype=torch.float64, device=x0.device)
            lam_hi, lam_lo = lg.half_log_snr(ends).tolist()
            u = noise.uniform((), step=0, stream="t", dtype=torch.float64)
            t = lg.t_from_half_log_snr(lam_lo + (lam_hi - lam_lo) * u).to(x0.dtype)
            sigma = lg.sigma(t)
            weight = 2.0 * (lam_hi - lam_lo) * sigma**2 / (lg.T - lg.t_min)
        else:
            t = uniform_times(lg, noise, x0.dtype)
            sigma = lg.sigma(t)
            weight = {"sigma2": lambda: sigma**2, "likelihood": lambda: lg.diffusion(t) ** 2,
                      "uniform": lambda: torch.ones_like(t)}[p.weighting]()
        x_t, eps = perturb(lg, x0, t, noise, sigma=sigma)
        output = model(x_t, t, cond)
        if model.output == "eps":  # s + eps / sigma = (eps - eps_hat) / sigma: no division by a small sigma
            per_sample = sum_event((eps - output) ** 2)
            return (per_sample if p.weighting == "sigma2" else weight / sigma**2 * per_sample).mean()
        score = to_score(output, model.output, x_t, t, lg)
        residual = score + eps / bcast(sigma, x0)
        return (weight * sum_event(residual**2)).mean()
