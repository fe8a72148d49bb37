"""Forward processes against their closed forms (seeds 000 and 001)."""

from __future__ import annotations

import math

import pytest
import torch

from diffcore import get_registry
from diffcore.errors import SpecError
from diffcore.testing.conformance import check_linear_gaussian_consistency, check_process_marginals
from diffcore_processes import VESDE, VPSDE, SubVPSDE

PROCESSES = get_registry().names("process")


@pytest.mark.parametrize("name", PROCESSES)
def test_simulated_forward_sde_matches_closed_form_marginals(name: str) -> None:
    process = get_registry().build("process", name)
    report = check_process_marginals(process)
    print(report)
    assert len(report.times) == 4


@pytest.mark.parametrize("name", PROCESSES)
def test_sde_coefficients_match_the_marginal(name: str) -> None:
    check_linear_gaussian_consistency(get_registry().build("process", name))


def test_marginal_check_catches_a_wrong_sigma() -> None:
    """The conformance suite must be able to fail: a VP whose sigma is 5% off is caught."""

    class WrongVP(VPSDE):
        def sigma(self, t: torch.Tensor) -> torch.Tensor:
            return 1.05 * super().sigma(t)

    with pytest.raises(AssertionError, match="forward marginals disagree"):
        check_process_marginals(WrongVP())
    with pytest.raises(AssertionError):
        check_linear_gaussian_consistency(WrongVP())


def test_score_sde_closed_forms() -> None:
    """Spot values from the formulas of Song et al. (2021), written out independently here."""
    t = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    ve = VESDE(sigma_min=0.01, sigma_max=50.0)
    s = 0.01 * (50.0 / 0.01) ** t
    torch.testing.assert_close(ve.diffusion(t), s * math.sqrt(2 * math.log(5000.0)))
    torch.testing.assert_close(ve.sigma(t) ** 2, s**2 - 0.01**2)
    vp = VPSDE(beta_min=0.1, beta_max=20.0)
    log_mean_coeff = -0.25 * t**2 * 19.9 - 0.5 * t * 0.1  # score_sde's VPSDE.marginal_prob
    torch.testing.assert_close(vp.alpha(t), torch.exp(log_mean_coeff))
    torch.testing.assert_close(vp.sigma(t), torch.sqrt(1 - torch.exp(2 * log_mean_coeff)))
    sub = SubVPSDE()
    torch.testing.assert_close(sub.sigma(t), 1 - torch.exp(2 * log_mean_coeff))
    torch.testing.assert_close(sub.diffusion(t) ** 2, (0.1 + t * 19.9) * (1 - torch.exp(-2 * (0.1 * t + 9.95 * t**2))))


@pytest.mark.parametrize("name", PROCESSES)
def test_prior_log_prob_is_the_normal_density(name: str) -> None:
    process = get_registry().build("process", name)
    x = torch.randn(5, 3, 2, dtype=torch.float64)
    std = process.prior_std()
    expected = torch.distributions.Normal(0.0, std).log_prob(x).sum((1, 2))
    torch.testing.assert_close(process.prior_log_prob(x), expected)


@pytest.mark.parametrize("name", PROCESSES)
def test_reverse_drift_for_a_gaussian_is_the_closed_form(name: str) -> None:
    """For data N(0, I) the score of p_t is -x / (alpha^2 + sigma^2); check the generic reverse SDE
    and probability-flow drifts built from it."""
    process = get_registry().build("process", name)
    t = torch.full((4,), 0.3, dtype=torch.float64)
    x = torch.randn(4, 2, dtype=torch.float64)
    var = process.alpha(t) ** 2 + process.sigma(t) ** 2
    score = lambda x_, t_: -x_ / var[:, None]  # noqa: E731
    f, g2 = process.drift_coef(t)[:, None], process.diffusion(t)[:, None] ** 2
    torch.testing.assert_close(process.reverse(score).drift(x, t), f * x + g2 * x / var[:, None])
    ode = process.reverse(score, probability_flow=True)
    torch.testing.assert_close(ode.drift(x, t), f * x + 0.5 * g2 * x / var[:, None])
    assert torch.all(ode.diffusion(t) == 0)


def test_process_params_are_validated() -> None:
    with pytest.raises(SpecError, match="sigma_max"):
        VESDE(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(SpecError, match="t_min"):
        VPSDE(t_min=1.0)
    with pytest.raises(SpecError, match="beta_mn"):
        VPSDE(beta_mn=0.1)
