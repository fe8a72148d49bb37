"""DPM-Solver (Lu et al. 2022): exponential integrators of the probability-flow ODE in the half
log-SNR ``lambda = log(alpha / sigma)``.

For a linear-Gaussian process (``x_t = alpha_t x_0 + sigma_t z``) the probability-flow ODE is
semi-linear. Written in ``lambda`` its linear part is solved exactly (variation of constants,
Lu et al. 2022, Prop. 3.1, eq. (3.4)); from ``s`` to ``t`` with ``h = lambda_t - lambda_s > 0``:

- noise prediction ``eps_hat = -sigma * score`` (DPM-Solver)::

      x_t = (alpha_t / alpha_s) x_s - alpha_t int_{lambda_s}^{lambda_t} e^{-lambda} eps_hat dlambda
          = (alpha_t / alpha_s) x_s - sigma_t sum_n h^{n+1} phi_{n+1}(h) eps_hat^{(n)}(lambda_s)

- data prediction ``x0_hat = (x + sigma^2 score) / alpha`` (DPM-Solver++, Lu et al. 2022b, Sec. 4)::

      x_t = (sigma_t / sigma_s) x_s + sigma_t int_{lambda_s}^{lambda_t} e^{lambda} x0_hat dlambda
          = (sigma_t / sigma_s) x_s + alpha_t sum_n h^{n+1} phi_{n+1}(-h) x0_hat^{(n)}(lambda_s)

where ``phi_k(z) = int_0^1 e^{(1 - u) z} u^{k-1} / (k-1)! du`` (``phi_1(z) = expm1(z) / z``,
``phi_{k+1}(z) = (phi_k(z) - 1/k!) / z``) and ``m^{(n)}`` is the ``n``-th derivative in ``lambda``
(the Taylor expansion of Lu et al. 2022, Sec. 3.2, integrated exactly). A solver of order ``k``
keeps the terms ``n < k`` and estimates the derivatives from extra evaluations: inside the step
(singlestep) or at earlier grid points (multistep). Everything here uses only ``alpha``, ``sigma``
and ``lambda`` of a :class:`~diffcore.process.LinearGaussianProcess`, computed in float64 on the
CPU; the state keeps the dtype and device of ``x_T``.

The machinery (the ``phi`` functions, Taylor weights, derivative estimates) and the solver itself,
:class:`~diffcore_samplers.common.DPMSolverBase`, shared with ``dpm_solver_pp``, are in
:mod:`diffcore_samplers.common`.
"""

from __future__ import annotations

from diffcore_samplers.common import DPMSolverBase


class DPMSolver(DPMSolverBase):
    """DPM-Solver (Lu et al. 2022), noise prediction: exponential integrator of order 1-3 in ``lambda``.

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
