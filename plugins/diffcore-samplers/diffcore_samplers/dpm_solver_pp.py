"""DPM-Solver++ (Lu et al. 2022b): the DPM-Solver exponential integrator in data prediction."""

from __future__ import annotations

from diffcore_samplers.common import DPMSolverBase, DPMSolverPPParams


class DPMSolverPP(DPMSolverBase):
    """DPM-Solver++ (Lu et al. 2022b): a high-order ODE solver on the data prediction, stable under guidance and
    thresholding; for 10 to 50 evaluations.

    DPM-Solver++ (Lu et al. 2022b), data prediction: exponential integrator of order 1-3 in ``lambda``.

    ``x_t = (sigma_t/sigma_s) x_s + alpha_t [h phi_1(-h) x0_s + h^2 phi_2(-h) x0'_s + h^3 phi_3(-h) x0''_s]``
    with ``h = lambda_t - lambda_s``, ``x0 = (x + sigma^2 score) / alpha`` and
    ``phi_k(-h) = int_0^1 e^{-(1-u) h} u^{k-1}/(k-1)! du`` (Lu et al. 2022b, Sec. 4: the exact solution
    in data prediction, Taylor-expanded in ``lambda``); order 1 is DDIM (eta = 0). Singlestep orders
    2 and 3 are "2S"/"3S" (Sec. 4.1, Algorithm 1, with the ``phi_2`` weight), multistep "2M"/"3M"
    (Sec. 5, Algorithm 2; order 3 with the exact ``phi_3`` term).

    ``steps`` counts solver steps, the intervals of the time grid (default ``logsnr``). NFE:
    multistep, one per step (``NFE = steps``, the default, the papers' recommendation for few
    steps); singlestep order ``k``, ``k`` per step (``NFE = k * steps``). With ``lower_order_final``
    and fewer than 15 steps the last steps drop order (step ``i`` of ``N`` at most ``N - i``),
    which also lowers the singlestep NFE. ``final_denoise`` adds one evaluation. Shapes: ``x_T``
    ``(B, *event)``.

    ``thresholding`` (``clip`` or ``dynamic``, Saharia et al. 2022, Sec. 2.3) applies
    :func:`~diffcore_samplers.common.threshold_x0` to every data prediction, the evaluations inside
    singlestep steps and the final Tweedie step included.
    """

    name = "dpm_solver_pp"
    Params = DPMSolverPPParams
    params: DPMSolverPPParams
    prediction = "data"
