"""UniPC (Zhao et al. 2023): the UniP multistep predictor and the UniC corrector, data prediction."""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
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
    finish,
    grid_points,
    model_output,
    phi,
    step_orders,
    thresholding_of,
)


class UniPCParams(ThresholdParams, GridParams):
    """Parameters of ``unipc``."""

    steps: Steps = Field(20, description="Solver steps (one score evaluation each).")
    grid: GridKind = Field("logsnr", description="Time grid: logsnr (uniform in lambda), uniform, quadratic "
                           "or karras.")
    order: int = Field(2, ge=1, le=3, description="Order p of the UniP predictor (1-3); with the corrector "
                       "the solver has order p + 1.")
    variant: Literal["bh1", "bh2"] = Field("bh1", description="B(h) = h (bh1) or 1 - exp(-h) (bh2).")
    corrector: bool = Field(True, description="Apply the UniC corrector after every step but the last (no "
                            "extra score evaluations).")
    lower_order_final: bool = Field(True, description="With fewer than 15 steps, lower the order of the final "
                                    "steps (step i of N at most N - i).")
    final_denoise: bool = Field(False, description="Finish with a Tweedie denoising step at t_min (one more "
                                "score evaluation).")


class UniPC(Sampler):
    """UniPC (Zhao et al. 2023): a predictor-corrector ODE solver on the data prediction, for few-step sampling
    (10 to 20 evaluations); ``diffcore compare`` measures it against the others on your model.

    UniPC (Zhao et al. 2023) in data prediction: UniP-p predictor, UniC-p corrector, ``p = order``.

    With ``h = lambda_t - lambda_s``, data predictions ``m_j = x0_hat`` at the grid points and
    ``r_j = (lambda_j - lambda_s) / h``, ``D_j = m_j - m_s``, both the predictor and the corrector are

        x_t = (sigma_t/sigma_s) x_s + alpha_t (1 - e^{-h}) m_s + alpha_t B(h) sum_j a_j D_j / r_j

    (the DPM-Solver++ first-order step plus a correction; Zhao et al. 2023, Sec. 3, data-prediction
    form). Expanding ``D_j / r_j = sum_n r_j^{n-1} h^n m^{(n)} / n!`` against the exact solution
    ``sum_n alpha_t h^{n+1} phi_{n+1}(-h) m^{(n)}`` gives the order conditions

        sum_j a_j r_j^{n-1} = n! h phi_{n+1}(-h) / B(h),   n = 1, 2, ...,

    with ``B(h) = h`` (``bh1``) or ``1 - e^{-h}`` (``bh2``). The predictor UniP-p uses the ``p - 1``
    previous points (``r_j < 0``) and the conditions ``n < p``: order ``p``. The corrector UniC-p
    adds the new point ``t`` (``r = 1``, ``D = m_t - m_s``, ``m_t`` evaluated at the predicted
    ``x_t``) and the conditions ``n <= p``: order ``p + 1``. ``m_t`` is kept for the next step, so
    the corrector costs no evaluation; it is not applied after the last step (it would need one).
    Where a single coefficient is needed (UniP-2, UniC-1) it is set to its ``h -> 0`` limit 1/2,
    which keeps the order; elsewhere the conditions are solved exactly, and then ``B(h)`` cancels:
    ``bh1`` and ``bh2`` differ only in those single-coefficient steps.

    Multistep warm-up (step ``i`` uses order ``min(p, i + 1)``) and ``lower_order_final`` as in
    ``dpm_solver_pp``. NFE: one per step, ``NFE = steps`` (+1 with ``final_denoise``). Shapes:
    ``x_T`` ``(B, *event)``. ``thresholding`` (Saharia et al. 2022, Sec. 2.3) applies
    :func:`~diffcore_samplers.common.threshold_x0` to every ``m_j`` and to the final Tweedie step.
    """

    name = "unipc"
    Params = UniPCParams
    params: UniPCParams
    requires = frozenset({LINEAR_GAUSSIAN})

    def run(self, score_fn: ScoreFn, process: ForwardProcess, x_T: Tensor, noise: NoiseSource,
            callback: Callback | None) -> tuple[Tensor, int]:
        p = self.params
        lg = require_linear_gaussian(process, describe(self))
        points = grid_points(lg, p.steps, p.grid, p.rho)
        orders = step_orders(p.order, p.steps, multistep=True, lower_order_final=p.lower_order_final)
        threshold = thresholding_of(p)
        x = x_T
        m_s = model_output("data", score_fn, x, points[0], threshold)
        history: list[tuple[float, Tensor]] = []  # (lambda_j, m_j) of earlier grid points, oldest first
        for i, k in enumerate(orders):
            s, t = points[i], points[i + 1]
            past = history[len(history) - (k - 1):] if k > 1 else []
            x_pred = self.update(x, s, t, m_s, past, None, k)
            if i == p.steps - 1:
                x = x_pred
            else:
                m_t = model_output("data", score_fn, x_pred, t, threshold)
                x = self.update(x, s, t, m_s, past, m_t, k) if p.corrector else x_pred
                history = [*history[-1:], (s.lam, m_s)]
                m_s = m_t
            self.report(callback, i, t.t, x)
        return finish(score_fn, lg, x, p.final_denoise, threshold), p.steps

    def update(self, x: Tensor, s: LogSNRPoint, t: LogSNRPoint, m_s: Tensor, past: list[tuple[float, Tensor]],
               m_t: Tensor | None, order: int) -> Tensor:
        """UniP-``order`` (``m_t`` is ``None``) or UniC-``order`` (with ``m_t`` at ``t``) from ``s`` to ``t``."""
        h = t.lam - s.lam
        base = (t.sigma / s.sigma) * x - (t.alpha * math.expm1(-h)) * m_s
        ratios = [(lam - s.lam) / h for lam, _ in past]
        diffs = [(m - m_s) / r for (_, m), r in zip(past, ratios, strict=True)]
        if m_t is not None:
            ratios.append(1.0)
            diffs.append(m_t - m_s)
        if not diffs:
            return base
        b_h = h if self.params.variant == "bh1" else -math.expm1(-h)
        coefs = self.coefficients(ratios, h, b_h)
        correction = coefs[0] * diffs[0]
        for a, d in zip(coefs[1:], diffs[1:], strict=True):
            correction = correction + a * d
        return base + (t.alpha * b_h) * correction

    @staticmethod
    def coefficients(ratios: list[float], h: float, b_h: float) -> list[float]:
        """``a`` with ``sum_j a_j r_j^{n-1} = n! h phi_{n+1}(-h) / B(h)`` for ``n = 1..len(ratios)``
        (a single coefficient: its limit 1/2)."""
        n = len(ratios)
        if n == 1:
            return [0.5]
        lhs = torch.tensor([[r ** (row) for r in ratios] for row in range(n)], dtype=torch.float64)
        rhs = torch.tensor([math.factorial(row + 1) * h * phi(row + 2, -h) / b_h for row in range(n)],
                           dtype=torch.float64)
        return [float(a) for a in torch.linalg.solve(lhs, rhs)]
