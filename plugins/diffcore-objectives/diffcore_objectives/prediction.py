"""Regression on the noise, the clean data or the velocity (Ho et al. 2020 "simple" loss, seed 003;
Salimans & Ho 2022 for v)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor

from diffcore.component import Params
from diffcore.model import ScoreModel, convert
from diffcore.noise import NoiseSource
from diffcore.objective import Objective
from diffcore.process import LINEAR_GAUSSIAN, ForwardProcess, require_linear_gaussian
from diffcore.utils import bcast
from diffcore_objectives.common import perturb, sum_event, uniform_times


class PredictionParams(Params):
    target: Literal["eps", "x0", "v"] = Field("eps", description="What the loss regresses on.")


class PredictionLoss(Objective):
    """Regression on the noise (DDPM's simple loss, Ho et al. 2020), on the clean data, or on the velocity ``v``
    (Salimans & Ho 2022), whatever the network itself predicts.

    ``E_t E || pred(x_t, t) - target ||^2`` for ``target`` in eps (the DDPM simple loss), x0 or
    ``v = alpha eps - sigma x0``; the network's own output kind is converted to the target for any
    linear-Gaussian process. Minimisers: ``E[eps | x_t]``, ``E[x0 | x_t]``, ``E[v | x_t]``, each an
    affine function of the score."""

    name = "prediction"
    Params = PredictionParams
    params: PredictionParams
    requires = frozenset({LINEAR_GAUSSIAN})

    def loss(self, model: ScoreModel, process: ForwardProcess, x0: Tensor, noise: NoiseSource,
             cond: Tensor | None = None) -> Tensor:
        lg = require_linear_gaussian(process, f"objective {self.name!r}")
        t = uniform_times(lg, noise, x0.dtype)
        alpha_t, sigma_t = lg.alpha(t), lg.sigma(t)
        x_t, eps = perturb(lg, x0, t, noise, alpha=alpha_t, sigma=sigma_t)
        pred = convert(model(x_t, t, cond), model.output, self.params.target, x_t, t, lg)
        alpha, sigma = bcast(alpha_t, x0), bcast(sigma_t, x0)
        target = {"eps": eps, "x0": x0, "v": alpha * eps - sigma * x0}[self.params.target]
        return sum_event((pred - target) ** 2).mean()
