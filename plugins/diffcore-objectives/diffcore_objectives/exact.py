"""Exact (implicit) score matching with the full Jacobian trace (Hyvarinen 2005; seed 002)."""

from __future__ import annotations

import torch
from torch import Tensor

from diffcore.model import ScoreModel
from diffcore.noise import NoiseSource
from diffcore.objective import Objective
from diffcore.process import LINEAR_GAUSSIAN, ForwardProcess, require_linear_gaussian
from diffcore_objectives.common import score_on_noisy_data, sum_event


class ExactScoreMatching(Objective):
    """Explicit score matching (Hyvarinen 2005) on noised data, with the score's Jacobian trace computed exactly; for
    low-dimensional data only (one backward pass per dimension).

    ``E_t sigma(t)^2 E_{x_t} [ tr(d s / d x) + ||s||^2 / 2 ]`` on samples of ``p_t``, the trace
    by one backward pass per data dimension: meant for low dimensions (D up to a few dozen)."""

    name = "exact_sm"
    requires = frozenset({LINEAR_GAUSSIAN})

    def loss(self, model: ScoreModel, process: ForwardProcess, x0: Tensor, noise: NoiseSource,
             cond: Tensor | None = None) -> Tensor:
        lg = require_linear_gaussian(process, f"objective {self.name!r}")
        t, x_t, score = score_on_noisy_data(model, lg, x0, noise, cond)
        flat = score.reshape(x0.shape[0], -1)
        trace = torch.zeros(x0.shape[0], dtype=x0.dtype, device=x0.device)
        for i in range(flat.shape[1]):
            (grad,) = torch.autograd.grad(flat[:, i].sum(), x_t, create_graph=True)
            trace = trace + grad.reshape(x0.shape[0], -1)[:, i]
        return (lg.sigma(t) ** 2 * (trace + 0.5 * sum_event(score**2))).mean()
