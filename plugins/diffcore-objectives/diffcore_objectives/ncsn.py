"""NCSN's multi-level denoising score matching (Song & Ermon 2019; seed 004)."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from diffcore.component import Params
from diffcore.limits import Levels
from diffcore.model import ScoreModel, to_score
from diffcore.noise import NoiseSource
from diffcore.objective import Objective
from diffcore.process import LINEAR_GAUSSIAN, ForwardProcess, require_linear_gaussian
from diffcore.utils import bcast
from diffcore_objectives.common import perturb, sum_event


class NCSNParams(Params):
    num_scales: Levels = Field(10, description="L, the number of noise levels of the ladder.")


class NCSNScoreMatching(Objective):
    """Denoising score matching over a discrete ladder of noise levels (NCSN, Song & Ermon 2019), for models sampled by
    annealed Langevin dynamics.

    ``1/L sum_i sigma_i^2 E || s(x0 + sigma_i z, sigma_i) + z / sigma_i ||^2`` over a geometric
    ladder ``sigma_1 > ... > sigma_L``, one random level per sample.

    The ladder is the process's own: ``L`` times ``t_i`` evenly spaced in half log-SNR from
    ``t_min`` to ``T``, so ``sigma_i / alpha_i`` is geometric (for ``ve``, exactly NCSN's
    ``sigma_min .. sigma_max``), and the model is conditioned on ``t_i``.
    """

    name = "ncsn"
    Params = NCSNParams
    params: NCSNParams
    requires = frozenset({LINEAR_GAUSSIAN})

    def levels(self, process: ForwardProcess, device: torch.device) -> Tensor:
        """The ``L`` times of the ladder, ``(L,)``, from ``T`` (largest noise) down to ``t_min``."""
        lg = require_linear_gaussian(process, f"objective {self.name!r}")
        ends = lg.half_log_snr(torch.tensor([lg.T, lg.t_min], dtype=torch.float64, device=device))
        return lg.t_from_half_log_snr(torch.linspace(float(ends[0]), float(ends[1]), self.params.num_scales,
                                                     dtype=torch.float64, device=device))

    def loss(self, model: ScoreModel, process: ForwardProcess, x0: Tensor, noise: NoiseSource,
             cond: Tensor | None = None) -> Tensor:
        lg = require_linear_gaussian(process, f"objective {self.name!r}")
        levels = self.levels(lg, x0.device)
        u = noise.uniform((), step=0, stream="level", dtype=torch.float64)
        index = torch.clamp((u * self.params.num_scales).long(), max=self.params.num_scales - 1)
        t = levels[index].to(x0.dtype)
        sigma = lg.sigma(t)
        x_t, eps = perturb(lg, x0, t, noise, sigma=sigma)
        score = to_score(model(x_t, t, cond), model.output, x_t, t, lg)
        return (sigma**2 * sum_event((score + eps / bcast(sigma, x0)) ** 2)).mean()
