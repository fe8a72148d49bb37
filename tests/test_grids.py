"""Time grids: endpoints, monotonicity, and each grid's defining property in closed form."""

from __future__ import annotations

import pytest
import torch

from diffcore import get_registry
from diffcore.errors import CompatibilityError
from diffcore.grids import GRID_KINDS, time_grid

REGISTRY = get_registry()
PROCESSES = ["vp", "ve", "subvp"]


@pytest.mark.parametrize("name", PROCESSES)
@pytest.mark.parametrize("kind", GRID_KINDS)
def test_grids_run_from_T_to_t_min_strictly_decreasing(name: str, kind: str) -> None:
    process = REGISTRY.build("process", name)
    t = time_grid(process, 17, kind)
    assert t.shape == (18,) and t.dtype == torch.float64
    assert float(t[0]) == process.T and float(t[-1]) == process.t_min
    assert bool((t.diff() < 0).all())


@pytest.mark.parametrize("name", PROCESSES)
def test_logsnr_grid_has_equal_log_snr_steps(name: str) -> None:
    process = REGISTRY.build("process", name)
    lam = process.half_log_snr(time_grid(process, 12, "logsnr"))  # type: ignore[attr-defined]
    steps = lam.diff()
    torch.testing.assert_close(steps, torch.full_like(steps, float(steps.mean())), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", PROCESSES)
def test_karras_grid_follows_the_edm_formula_on_sigma_over_alpha(name: str) -> None:
    process = REGISTRY.build("process", name)
    n, rho = 10, 7.0
    t = time_grid(process, n, "karras", rho=rho)
    s = process.sigma(t) / process.alpha(t)  # type: ignore[attr-defined]
    s_max, s_min = float(s[0]), float(s[-1])
    i = torch.arange(n + 1, dtype=torch.float64)
    edm = (s_max ** (1 / rho) + i / n * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    torch.testing.assert_close(s, edm, rtol=1e-6, atol=1e-9)


def test_uniform_and_quadratic_grids_in_closed_form() -> None:
    process = REGISTRY.build("process", "vp", t_min=0.01)
    u = torch.linspace(1, 0, 5, dtype=torch.float64)
    torch.testing.assert_close(time_grid(process, 4, "uniform"), 0.01 + 0.99 * u)
    torch.testing.assert_close(time_grid(process, 4, "quadratic"), 0.01 + 0.99 * u**2)


def test_log_snr_grids_need_a_linear_gaussian_process() -> None:
    from diffcore.process import ForwardProcess

    class Plain(ForwardProcess):
        name = "plain"

        def drift(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return -x

        def diffusion(self, t: torch.Tensor) -> torch.Tensor:
            return torch.ones_like(t)

        def prior_sample(self, noise, event_shape, *, dtype):  # type: ignore[no-untyped-def]
            return noise.normal(event_shape, dtype=dtype)

        def prior_log_prob(self, x: torch.Tensor) -> torch.Tensor:
            return -0.5 * (x**2).sum(1)

    with pytest.raises(CompatibilityError, match="linear-Gaussian"):
        time_grid(Plain(), 4, "karras")
    assert time_grid(Plain(), 4, "uniform").shape == (5,)
