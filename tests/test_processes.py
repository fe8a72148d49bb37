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


# ---------------------------------------------------------------------------------------------
# The half log-SNR range (diffcore.limits.MIN_HALF_LOG_SNR, MAX_HALF_LOG_SNR)
# ---------------------------------------------------------------------------------------------

NOISE_FIELD = {"vp": "beta_max", "subvp": "beta_max", "ve": "sigma_max"}
MIN_NOISE_FIELD = {"vp": "beta_min", "subvp": "beta_min", "ve": "sigma_min"}


def refusal(name: str, **params: float) -> str:
    with pytest.raises(SpecError) as info:
        get_registry().build("process", name, **params)
    return str(info.value)


def limit_in(message: str, field: str) -> float:
    """The limit a refusal gives for ``field`` (``lower beta_max to at most 79.8``)."""
    return float(message.split(f" {field} to at ")[1].split()[1].rstrip(";"))


def half_log_snr(process: object, t: float) -> float:
    return float(process.half_log_snr(torch.tensor([t], dtype=torch.float64)))  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", PROCESSES)
@pytest.mark.parametrize("field", ["noise", "T"])
def test_too_much_noise_at_T_is_refused_with_the_largest_allowed_value(name: str, field: str) -> None:
    """``beta_max: 1e300``, ``sigma_max: 1e300``, ``T: 1e300`` overflowed in sampling; the refusal names
    the limit (3 digits, rounded into the range), which is accepted, and 1% beyond it is refused."""
    field = NOISE_FIELD[name] if field == "noise" else "T"
    message = refusal(name, **{field: 1e300})
    assert "lambda(T) must be at least -20" in message and f"lower {field} to at most" in message
    limit = limit_in(message, field)
    process = get_registry().build("process", name, **{field: limit})
    assert -20.0 <= half_log_snr(process, process.T) < -19.7
    assert f"lower {field} to at most {limit:.3g}" in refusal(name, **{field: limit * 1.01})


@pytest.mark.parametrize("name", PROCESSES)
def test_too_little_noise_at_t_min_is_refused_with_the_smallest_allowed_value(name: str) -> None:
    """``t_min: 1e-300`` made ddim, dpm_solver and unipc return finite garbage; the refusal names the
    smallest t_min, which is accepted, and 1% below it is refused."""
    message = refusal(name, t_min=1e-300)
    assert "lambda(t_min) must be at most 20" in message and f"or raise {MIN_NOISE_FIELD[name]}" in message
    limit = limit_in(message, "t_min")
    process = get_registry().build("process", name, t_min=limit)
    assert 19.7 < half_log_snr(process, process.t_min) <= 20.0
    assert f"raise t_min to at least {limit:.3g}" in refusal(name, t_min=limit * 0.99)


@pytest.mark.parametrize("name", PROCESSES)
def test_too_little_noise_at_T_is_refused_with_the_smallest_allowed_T(name: str) -> None:
    """``vp`` with ``t_min: 1e-12, T: 1e-10`` returned the prior's noise unchanged: at T its marginal is
    still the data. The refusal names the smallest T, which is accepted, and 1% below it is refused."""
    message = refusal(name, t_min=1e-12, T=1e-10)
    assert "lambda(T) must be at most 0" in message and "samplers, which start from its prior" in message
    limit = limit_in(message, "T")
    process = get_registry().build("process", name, T=limit)
    assert -0.02 < half_log_snr(process, process.T) <= 0.0
    assert f"raise T to at least {limit:.3g}" in refusal(name, T=limit * 0.99)


def test_the_limits_in_the_messages() -> None:
    """The limits at the defaults, as a user reads them (vp: T = 1, beta_min = 0.1)."""
    assert "lower beta_max to at most 79.8 or lower T to at most 0.893" in refusal("vp", beta_max=100.0)
    assert "lower sigma_max to at most 4.85e+08" in refusal("ve", sigma_max=1e9)
    assert "raise t_min to at least 4.25e-17" in refusal("vp", t_min=1e-20)
    assert "raise t_min to at least 2.07e-08" in refusal("subvp", t_min=1e-10)  # sigma ~ B, not sqrt(B)
    assert "raise sigma_min to at least" in refusal("ve", sigma_min=1e-30, t_min=1e-5)


def test_the_order_checks_come_before_the_range() -> None:
    assert refusal("vp", beta_min=5.0, beta_max=1.0).endswith("beta_max (1.0) must be at least beta_min (5.0)")
    assert refusal("ve", sigma_min=5.0, sigma_max=5.0).endswith("sigma_max (5.0) must exceed sigma_min (5.0)")
    assert refusal("subvp", t_min=2.0).endswith("t_min (2.0) must be smaller than T (1.0)")


def test_a_subclass_reusing_its_parents_params_is_checked_when_built() -> None:
    """VPSDE's Params check the range with VPSDE's sigma; a subclass with another sigma that reuses
    them is checked again, with its own, when it is built, and the limit it is told is its own."""

    class Louder(VPSDE):
        name = "louder"

        def sigma(self, t: torch.Tensor) -> torch.Tensor:
            return 1e7 * super().sigma(t)

        def half_log_snr(self, t: torch.Tensor) -> torch.Tensor:
            return torch.log(self.alpha(t)) - torch.log(self.sigma(t))

    VPSDE()  # fine with VPSDE's sigma: lambda(T) = -5.0
    with pytest.raises(SpecError) as info:
        Louder()  # lambda(T) = -5.0 - log(1e7) = -21.1
    message = str(info.value)
    assert message.startswith("louder: invalid parameters: ") and "at T = 1 is -21.14" in message
    limit = limit_in(message, "beta_max")
    assert 15.0 < limit < 17.0
    Louder(beta_max=limit)
    with pytest.raises(SpecError):
        Louder(beta_max=limit * 1.01)


@pytest.mark.parametrize("name", PROCESSES)
def test_half_log_snr_and_its_inverse_hold_over_the_whole_allowed_range(name: str) -> None:
    """At the extremes (lambda from -20 to 20 and beyond): no overflow in lambda, and the inverse returns
    the time (subvp's inverse returned t = 0 from lambda ~ 37 on, VE's lambda overflowed for wide ranges)."""
    process = get_registry().build("process", name)
    lam = torch.linspace(-25.0, 40.0, 66, dtype=torch.float64)
    t = process.t_from_half_log_snr(lam)  # type: ignore[attr-defined]
    assert torch.all(t > 0)
    torch.testing.assert_close(process.half_log_snr(t), lam, rtol=1e-9, atol=1e-9)  # type: ignore[attr-defined]
    message = refusal(name, **{NOISE_FIELD[name]: 1e4 if name != "ve" else 1e30})
    assert "lambda = log(alpha / sigma) at T = 1 is -" in message  # a value, not an overflow
