"""The probability-flow ODE integrated with torchdiffeq (seed 001, "Probability flow ODE").

``dx/dt = f(x, t) - g(t)^2 s(x, t) / 2`` from ``T`` down to ``t_min``; deterministic, so the
samples are a function of the prior draw alone.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor
from torchdiffeq import odeint

from diffcore.component import Params
from diffcore.limits import Steps, Tolerance
from diffcore.noise import NoiseSource
from diffcore.process import ForwardProcess, ScoreFn
from diffcore.sampler import Callback, Sampler, uniform_grid

ADAPTIVE = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
FIXED = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams")


class ProbabilityFlowParams(Params):
    method: Literal[ADAPTIVE + FIXED] = Field(  # type: ignore[valid-type]
        "dopri5", description="torchdiffeq method; adaptive ones use rtol/atol, fixed ones `steps`.")
    rtol: Tolerance = Field(1e-5, description="Relative tolerance (adaptive methods).")
    atol: Tolerance = Field(1e-5, description="Absolute tolerance (adaptive methods).")
    steps: Steps | None = Field(None, description="Uniform steps (fixed methods; default 100).")

    @model_validator(mode="after")
    def _steps_only_for_fixed(self) -> ProbabilityFlowParams:
        if self.steps is not None and self.method in ADAPTIVE:
            raise ValueError(f"steps applies to fixed-step methods ({', '.join(FIXED)}); method "
                             f"{self.method!r} is adaptive and chooses its own steps from rtol/atol. "
                             "Drop steps or pick a fixed-step method")
        return self


class ProbabilityFlow(Sampler):
    """Solve the probability-flow ODE with torchdiffeq (any method; adaptive ``dopri5`` by default).

    Adaptive methods pick one step size for the whole batch, so results depend on the batch
    composition within the solver tolerance; fixed-step methods give the same samples whatever the
    batch size, bit for bit.
    """

    name = "probability_flow"
    Params = ProbabilityFlowParams
    params: ProbabilityFlowParams

    def run(self, score_fn: ScoreFn, process: ForwardProcess, x_T: Tensor, noise: NoiseSource,
            callback: Callback | None) -> tuple[Tensor, int | None]:
        reverse = process.reverse(score_fn, probability_flow=True)
        batch = x_T.shape[0]

        def velocity(t: Tensor, x: Tensor) -> Tensor:
            return reverse.drift(x, t.to(x.dtype).expand(batch))

        p = self.params
        if p.method in ADAPTIVE:
            times = torch.tensor([process.T, process.t_min], device=x_T.device, dtype=torch.float64)
            # step_t makes the last step land on t_min: torchdiffeq otherwise steps past the end and
            # interpolates back, evaluating the score at t < t_min where the process may be undefined.
            path = odeint(velocity, x_T, times, method=p.method, rtol=p.rtol, atol=p.atol,
                          options={"step_t": times[1:]})
            steps = None
        else:
            steps = p.steps or 100
            times = uniform_grid(process.T, process.t_min, steps, device=x_T.device)
            path = odeint(velocity, x_T, times, method=p.method)
        x = path[-1]
        self.report(callback, steps or 0, process.t_min, x)
        return x, steps
