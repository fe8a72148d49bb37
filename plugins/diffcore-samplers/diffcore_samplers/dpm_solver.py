"""DPM-Solver (Lu et al. 2022): exponential integrators of the probability-flow ODE in the half
log-SNR ``lambda = log(alpha / sigma)``.

The machinery (the ``phi`` functions, Taylor weights, derivative estimates) and the solver itself,
:class:`~diffcore_samplers.common.DPMSolverBase`, shared with ``dpm_solver_pp``, are in
:mod:`diffcore_samplers.common`.
"""

from __future__ import annotations

from diffcore_samplers.common import DPMSolverBase


class DPMSolver(DPMSolverBase):
    """DPM-Solver (Lu et al. 2022): a high-order ODE solver for diffusion models, on the noise prediction; good samples
    in 10 to 20 evaluations.

    DPM-Solver (Lu et al. 2022), noise prediction: exponential integrator of order 1-3 in ``lambda``.

    ``x_t = (alpha_t/alpha_s) x_s - sigma_t [h phi_1(h) eps_s + h^2 phi_2(h) eps'_s + h^3 phi_3(h) eps''_s]``
    with ``h = lambda_t - lambda_s`` (Lu et al. 2022, eq. (3.4) and Sec. 3.2); order 1 is DDIM (eta = 0).

    ``steps`` counts solver steps, the intervals of the time grid (default ``logsnr``: uniform in
    ``lambda``). NFE: multistep, one per step (``NFE = steps``); singlestep order ``k``, ``k`` per
    step (``NFE = k * steps``; for ``NFE`` comparable with a multistep run use ``steps = NFE / k``).
    With ``lower_order_final`` and fewer than 15 steps the last steps drop order (step ``i`` of
    ``N`` has order at most ``N - i``), which also lowers the singlestep NFE (order 3, 10 steps:
    ``8 * 3 + 2 + 1 = 27``). ``final_denoise`` adds one evaluation. Shapes: ``x_T`` ``(B, *event)``.
    """

    name = "dpm_solver"
    prediction = "noise"
