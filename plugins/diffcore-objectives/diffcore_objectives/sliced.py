"""Sliced score matching (Song et al. 2019; seed 001), plain and variance-reduced, on p_t."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from diffcore.component import Params
from diffcore.limits import Steps
from diffcore.model import ScoreModel
from diffcore.noise import NoiseSource
from diffcore.objective import Objective
from diffcore.process import LINEAR_GAUSSIAN, ForwardProcess, require_linear_gaussian
from diffcore_objectives.common import score_on_noisy_data, sum_event


class SSMParams(Params):
    variance_reduced: bool = Field(True, description="SSM-VR: replace (v.s)^2 / 2 by ||s||^2 / 2.")
    projections: Steps = Field(1, description="Random projections v per sample.")
    distribution: Literal["gaussian", "rademacher"] = Field("gaussian", description="Law of v.")


class SlicedScoreMatching(Objective):
    """Sliced score matching (Song et al. 2019): Hyvarinen's objective with random projections in place of the Jacobian
    trace; needs no noise target and scales to high dimensions.

    ``E_t sigma(t)^2 E_{x_t} E_v [ v^T (d s / d x) v + (v^T s)^2 / 2 ]`` (plain) or with
    ``||s||^2 / 2`` (variance-reduced), on samples ``x_t`` of ``p_t``. Needs no conditional score:
    its minimiser is ``grad log p_t`` itself (Hyvarinen's identity, sliced). One extra backward pass
    per projection."""

    name = "ssm"
    Params = SSMParams
    params: SSMParams
    requires = frozenset({LINEAR_GAUSSIAN})

    def loss(self, model: ScoreModel, process: ForwardProcess, x0: Tensor, noise: NoiseSource,
             cond: Tensor | None = None) -> Tensor:
        lg = require_linear_gaussian(process, f"objective {self.name!r}")
        t, x_t, score = score_on_noisy_data(model, lg, x0, noise, cond)
        total = torch.zeros(x0.shape[0], dtype=x0.dtype, device=x0.device)
        for k in range(self.params.projections):
            v = noise.normal(tuple(x0.shape[1:]), step=k, stream="projection", dtype=x0.dtype)
            if self.params.distribution == "rademacher":
                v = torch.sign(v)
            vs = sum_event(v * score)
            (grad,) = torch.autograd.grad(vs.sum(), x_t, create_graph=True)
            total = total + sum_event(v * grad)
            if not self.params.variance_reduced:
                total = total + 0.5 * vs**2
        total = total / self.params.projections
        if self.params.variance_reduced:
            total = total + 0.5 * sum_event(score**2)
        return (lg.sigma(t) ** 2 * total).mean()
