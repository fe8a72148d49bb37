"""Plain vs annealed Langevin dynamics on the toy mixture of seed 002 (sections 4.3-4.4).

Writes ``docs/images/langevin_vs_annealed.png``: the initial spread (uniform over ``[-8, 8]^2``), the
result of plain Langevin dynamics at ``t_min`` and that of annealed Langevin dynamics, for
``1/5 N((-5, -5), I) + 4/5 N((5, 5), I)`` with its exact score, the measured mode weights in the
panel titles. The settings are those of ``tests/test_langevin.py``. Run from anywhere::

    python docs/scripts/langevin_vs_annealed.py
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from diffcore import Pipeline, get_registry
from diffcore.metrics import mode_weights
from diffcore.plots import save_scatter

OUT = Path(__file__).resolve().parents[1] / "images" / "langevin_vs_annealed.png"
MIXTURE: dict[str, list[float] | list[list[float]]] = {
    "weights": [0.2, 0.8],
    "means": [[-5.0, -5.0], [5.0, 5.0]],
    "variances": [[1.0, 1.0], [1.0, 1.0]],
}
PROCESS = {"sigma_min": 0.1, "sigma_max": 20.0}  # VE: noise levels from 20 down to ~1e-3 at t_min
LANGEVIN: dict[str, object] = {"step_size": 0.05, "iterations": 400}
ANNEALED: dict[str, object] = {"levels": 20, "steps_per_level": 100, "grid": "uniform", "step_ratio": 0.05}
NUM = 10_000  # samples the weights are measured on
SHOWN = 2_000  # of which the first SHOWN are plotted


def weights(x: Tensor) -> list[float]:
    log_w = torch.log(torch.tensor(MIXTURE["weights"], dtype=torch.float64))
    means = torch.tensor(MIXTURE["means"], dtype=torch.float64)
    variances = torch.tensor(MIXTURE["variances"], dtype=torch.float64)
    return mode_weights(x, log_w, means, variances).tolist()


def run(sampler: str, params: dict[str, object], start: Tensor) -> Tensor:
    registry = get_registry()
    pipe = Pipeline(registry.build("process", "ve", **PROCESS), registry.build("model", "gmm", **MIXTURE),  # type: ignore[arg-type]
                    registry.build("sampler", sampler, **params))  # type: ignore[arg-type]
    return pipe.sample(start.shape[0], seed=0, latents=start, dtype=torch.float64).x


def title(name: str, x: Tensor) -> str:
    w = weights(x)
    # save_scatter appends ", n=<points shown>" to the title
    return f"{name}\nweights {w[0]:.3f} / {w[1]:.3f} (true 0.2 / 0.8)\nmeasured on {x.shape[0]}, shown"


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    start = (2.0 * torch.rand(NUM, 2, generator=gen, dtype=torch.float64) - 1.0) * 8.0
    plain = run("langevin", LANGEVIN, start)
    annealed = run("annealed_langevin", ANNEALED, start)
    panels = [(title("start: uniform on [-8, 8]^2", start), start[:SHOWN]),
              (title("plain Langevin (ULA at t_min)", plain), plain[:SHOWN]),
              (title("annealed Langevin", annealed), annealed[:SHOWN])]
    for name, _ in panels:
        print(name.replace("\n", "; "))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_scatter(panels, OUT, limits=(-10.0, 10.0, -10.0, 10.0))
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
