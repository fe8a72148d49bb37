"""The probability-flow ODE integrated with torchdiffeq (seed 001, "Probability flow ODE").

``dx/dt = f(x, t) - g(t)^2 s(x, t) / 2`` from ``T`` down to ``t_min``; deterministic, so the
samples are a function of the prior draw alone. The integration itself is core's
(:mod:`diffcore.ode`, shared with the exact likelihood); this sampler is a thin wrapper around it.
"""

from __future__ import annotations

from torch import Tensor

from diffcore.noise import NoiseSource
from diffcore.ode import ADAPTIVE, FIXED, SolverParams, integrate, probability_flow_velocity
from diffcore.process import ForwardProcess, ScoreFn
from diffcore.sampler import Callback, Sampler

__all__ = ["ADAPTIVE", "FIXED", "ProbabilityFlow", "ProbabilityFlowParams"]


class ProbabilityFlowParams(SolverParams):
    """The solver options of :class:`diffcore.ode.SolverParams` (method, rtol, atol, steps)."""


class ProbabilityFlow(Sampler):
    """The probability-flow ODE (Song et al. 2021) solved by torchdiffeq: deterministic, adaptive step size
    (``dopri5``) by default; the same ODE gives exact likelihoods and encodings.

    Solve the probability-flow ODE with torchdiffeq (any method; adaptive ``dopri5`` by default).

    Adaptive methods pick one step size for the whole batch, so results depend on the batch
    composition within the solver tolerance; fixed-step methods give the same samples whatever the
    batch size, bit for bit. The steps reported are the grid's for fixed methods and the accepted
    steps for adaptive ones; the NFE (counted by :class:`~diffcore.sampler.CountedScore`) is the
    solver's function evaluations, rejected steps and the initial-step probes included.
    """

    name = "probability_flow"
    Params = ProbabilityFlowParams
    params: ProbabilityFlowParams

    def run(self, score_fn: ScoreFn, process: ForwardProcess, x_T: Tensor, noise: NoiseSource,
            callback: Callback | None) -> tuple[Tensor, int | None]:
        solution = integrate(probability_flow_velocity(process, score_fn), x_T, process.T, process.t_min,
                             self.params)
        x = solution.state
        # as before: an adaptive solve reports no intermediate steps and counts as step 0
        self.report(callback, 0 if self.params.adaptive else solution.steps, process.t_min, x)
        return x, solution.steps
