"""Plain vs annealed Langevin dynamics on the toy mixture of seed 002 (sections 4.3-4.4).

``mu = 1/5 N((-5, -5), I) + 4/5 N((5, 5), I)`` with its exact score (the ``gmm`` model), both chains
started from the same broad spread, uniform over ``[-8, 8]^2`` (passed as ``latents``). The process
is VE with an NCSN-like ladder: ``sigma`` from 20 (above the 14-unit distance between the modes) down
to 0.1, and ``sigma(t_min) ~ 1e-3``, so the score at ``t_min`` is the data score for all practical
purposes.

- ``langevin`` (ULA at ``t_min``, seed 002, section 4.3): the low-density region between the modes
  is a bottleneck (a barrier of ~25 nats), so each chain stays in the basin it starts in and the
  mode weights are those of the initial spread, about 1/2 each, not 1/5 and 4/5. Measured:
  [0.4839, 0.5161] (the initial spread: [0.4836, 0.5164]).
- ``annealed_langevin`` (seed 002, section 4.4): at large noise levels the smoothed mixture is
  unimodal and the chain mixes; the modes separate only as the noise shrinks, by then the weights
  are right. Measured: [0.2047, 0.7953] (20 levels x 100 steps, ``h_i = 0.05 sigma_i^2``; the
  standard error of a weight from 10k samples is 0.004). The step's own bias pushes the weights
  towards the initial 1/2 (ULA with a finite step widens each level's distribution): 0.213 with
  ``step_ratio = 0.2``, 0.209 with 0.1 (measured), hence 0.05.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffcore import Pipeline, get_registry
from diffcore.metrics import mode_weights

REGISTRY = get_registry()
MIXTURE: dict[str, list[float] | list[list[float]]] = {
    "weights": [0.2, 0.8],
    "means": [[-5.0, -5.0], [5.0, 5.0]],
    "variances": [[1.0, 1.0], [1.0, 1.0]],
}
PROCESS = {"sigma_min": 0.1, "sigma_max": 20.0}
LANGEVIN: dict[str, object] = {"step_size": 0.05, "iterations": 400}
ANNEALED: dict[str, object] = {"levels": 20, "steps_per_level": 100, "grid": "uniform", "step_ratio": 0.05}
NUM = 10_000
TRUE_WEIGHTS = torch.tensor([0.2, 0.8], dtype=torch.float64)


def uniform_start(num: int = NUM, half_width: float = 8.0) -> Tensor:
    """``(num, 2)`` points uniform over ``[-half_width, half_width]^2`` (float64, fixed seed)."""
    gen = torch.Generator().manual_seed(0)
    return (2.0 * torch.rand(num, 2, generator=gen, dtype=torch.float64) - 1.0) * half_width


def weights(x: Tensor) -> Tensor:
    """Fraction ``(2,)`` of the points ``x`` ``(N, 2)`` in each mode of the mixture."""
    log_w = torch.log(torch.tensor(MIXTURE["weights"], dtype=torch.float64))
    means = torch.tensor(MIXTURE["means"], dtype=torch.float64)
    variances = torch.tensor(MIXTURE["variances"], dtype=torch.float64)
    return mode_weights(x, log_w, means, variances)


def run(sampler: str, params: dict[str, object], start: Tensor) -> Tensor:
    pipe = Pipeline(REGISTRY.build("process", "ve", **PROCESS), REGISTRY.build("model", "gmm", **MIXTURE),  # type: ignore[arg-type]
                    REGISTRY.build("sampler", sampler, **params))  # type: ignore[arg-type]
    return pipe.sample(start.shape[0], seed=0, latents=start, dtype=torch.float64).x


def test_plain_langevin_keeps_the_weights_of_its_start() -> None:
    start = uniform_start()
    initial, plain = weights(start), weights(run("langevin", LANGEVIN, start))
    print(f"initial spread {initial.tolist()}, plain Langevin {plain.tolist()}, truth {TRUE_WEIGHTS.tolist()}")
    assert float((plain - TRUE_WEIGHTS).abs().max()) > 0.1
    assert float((plain - initial).abs().max()) < 0.02  # the chains never cross the bottleneck


def test_annealed_langevin_recovers_the_weights() -> None:
    annealed = weights(run("annealed_langevin", ANNEALED, uniform_start()))
    print(f"annealed Langevin {annealed.tolist()}, truth {TRUE_WEIGHTS.tolist()}")
    assert float((annealed - TRUE_WEIGHTS).abs().max()) < 0.02
