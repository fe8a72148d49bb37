"""Inpainting / imputation by replacement (Song et al. 2021, Sec. 5 and Appendix I.2), as a score."""

from __future__ import annotations

import torch
from torch import Tensor

from diffcore.component import Params
from diffcore.condition import Condition
from diffcore.errors import UsageError
from diffcore.guidance import Guidance
from diffcore.model import ConditionalScoreFn
from diffcore.process import LINEAR_GAUSSIAN, ForwardProcess, require_linear_gaussian
from diffcore.utils import bcast


class Inpainting(Guidance):
    """Inpainting by replacement (Song et al. 2021, Sec. 5): observed values are kept exactly and the rest is filled in
    consistently with them.

    Fill in the unobserved coordinates of ``x`` given observed values ``y`` on a mask ``Omega``:
    the replacement method of Song et al. (2021, Sec. 5, Appendix I.2), written as a score so that
    every sampler runs it.

    The replacement method keeps the observed coordinates of the state distributed as the forward
    marginal of the observation, ``x_t(Omega) ~ N(alpha_t y, sigma_t^2 I)``, and moves the others with
    the model's score at the joint state. Here the guided score is::

        s(x, t)[Omega]  = -(x[Omega] - alpha_t y) / sigma_t^2      (the exact score of that marginal)
        s(x, t)[~Omega] = model score at x                           (unchanged)

    so any sampler, stochastic or deterministic, carries ``x(Omega)`` along the reverse process of
    ``N(alpha_t y, sigma_t^2 I)``: the same marginals the method draws at every step, without fresh
    noise at each step (a probability-flow sampler maps the prior draw ``z`` to ``alpha_t y + sigma_t z``).
    The final samples are then set to ``y`` on the mask exactly. Like the original it approximates
    ``p(x | y)``: the unobserved coordinates follow ``grad log p_t(x)``, not ``grad log p_t(x | y)``
    (the tests measure the gap on Gaussian mixtures). Needs the condition's ``mask`` ``(B, *event)``
    (True where observed) and ``observed`` ``(B, *event)`` (read on the mask).

    The observed coordinates' score has curvature ``1 / sigma_t^2``: samplers that step on the
    process's own time grid (every one but plain ``langevin``) are stable with it, while ``langevin``,
    which runs at ``t_min`` only, needs a ``step_size`` below ``sigma(t_min)^2``.
    """

    name = "inpaint"
    Params = Params
    requires = frozenset({LINEAR_GAUSSIAN})
    needs = frozenset({"mask", "observed"})

    def check_condition(self, cond: Condition) -> None:
        if cond.observed is not None and cond.mask is not None and cond.observed.shape != cond.mask.shape:
            raise UsageError(f"guidance 'inpaint': the observed values have shape {tuple(cond.observed.shape)} but "
                             f"the mask {tuple(cond.mask.shape)}; give one value per coordinate (any value where "
                             "the mask is False)")

    def guide(self, score_fn: ConditionalScoreFn, process: ForwardProcess) -> ConditionalScoreFn:
        lg = require_linear_gaussian(process, "guidance 'inpaint'")

        def guided(x: Tensor, t: Tensor, cond: Condition) -> Tensor:
            score = score_fn(x, t, cond)
            mask, y = cond.mask, cond.observed
            if mask is None or y is None:
                return score
            alpha, sigma = bcast(lg.alpha(t), x), bcast(lg.sigma(t), x)
            return torch.where(mask, (alpha * y - x) / sigma**2, score)

        return guided

    def finalize(self, x: Tensor, cond: Condition, process: ForwardProcess) -> Tensor:
        if cond.mask is None or cond.observed is None:
            return x
        return torch.where(cond.mask, cond.observed.to(x.dtype), x)
