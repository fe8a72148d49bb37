"""Samplers against the analytic mixture, reproducibility, NaN detection, compatibility."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICES, DoubleWell, ZeroScore
from torch import Tensor

from diffcore import CompatibilityError, NonFiniteError, Pipeline, get_registry
from diffcore.errors import SpecError
from diffcore.limits import MAX_HALF_LOG_SNR, MIN_HALF_LOG_SNR
from diffcore.process import LinearGaussianProcess
from diffcore.sampler import Sampler, StepInfo
from diffcore.testing.conformance import (
    CONFORMANCE_PROCESSES,
    QUICK_NUM,
    QUICK_WEIGHT_TOL,
    REFERENCE_MIXTURE,
    check_sampler,
)
from diffcore_models import GaussianMixture

REGISTRY = get_registry()
REFERENCE = GaussianMixture(**REFERENCE_MIXTURE)
"""The conformance run's ground truth: the analytic mixture, exact score and exact draws."""
PROCESS_PARAMS = CONFORMANCE_PROCESSES  # VE at sigma_max 100: see its docstring
# High-NFE settings per sampler for the conformance run (defaults where absent); one line per sampler.
# Each line: NFE, then the energy distance in floor stds on vp / ve / subvp and the largest mode-weight
# error over the three, measured (seed 0, 20k samples).
CONFORMANCE_PARAMS: dict[str, dict[str, object]] = {
    "ancestral": {"steps": 125},  # 125: -0.06 / 0.06 / -0.01, 0.007
    "annealed_langevin": {"levels": 40, "steps_per_level": 50, "step_ratio": 0.1, "grid": "uniform"},  # 2000
    # annealed_langevin: 0.49 / 0.28 / 0.18, 0.006 (30 levels: 1.68 / 1.50 / 0.99, 0.011)
    "ddim": {"steps": 100},  # 100: 0.33 / 0.98 / 0.80, 0.004 (75 steps: 0.63 / 1.62 / 1.60)
    "dpm_solver": {"steps": 30},  # 30: 0.04 / 0.40 / 0.20, 0.004
    "dpm_solver_pp": {"steps": 30},  # 30: 0.31 / 1.18 / 0.89, 0.008 (20 steps: 0.95 / 5.31 / 6.34)
    "euler_maruyama": {"steps": 125},  # 125: -0.33 / -0.19 / -0.28, 0.005
    "heun": {"steps": 25},  # 50: 0.56 / 1.15 / 0.80, 0.009
    # langevin cannot pass: ULA at t_min from the prior draw keeps the mode weights of its start (seed 002,
    # section 4.3; tests/test_langevin.py). 200: 2538 / 635 / 2540 floor stds, weights off by 0.48 / 0.26 / 0.48.
    "langevin": {"iterations": 200, "step_size": 0.05},
    "pc": {"steps": 125},  # 250: 0.67 / 0.16 / 0.84, 0.008
    "probability_flow": {},  # dopri5 at 1e-5, 80 / 122 / 92: 0.24 / 0.71 / 0.24, 0.009
    "reverse_diffusion": {"steps": 250},  # 250: 0.36 / 1.18 / 0.47, 0.009 (125 steps: 0.88 / 1.76 / 1.10, 0.012)
    "reverse_sde": {"steps": 125},  # 125: -0.23 / 0.34 / -0.31, 0.007
    "unipc": {"steps": 30},  # 30: 0.35 / 1.08 / 0.61, 0.010
}


NOT_DIFFUSION_SAMPLERS = {"langevin"}
"""Samplers that do not target p_t along a diffusion: the conformance run checks that they miss the mixture."""


def conformance(sampler_name: str, process_name: str, num: int, weight_tol: float) -> None:
    """Every sampler (at its high-NFE settings) on a process against the exact mixture: energy
    distance within 3 noise-floor stds at ``num`` samples, mode weights within ``weight_tol``. Plain
    Langevin dynamics is not a diffusion sampler and must fail (seed 002, section 4.3)."""
    process = REGISTRY.build("process", process_name, **PROCESS_PARAMS.get(process_name, {}))
    sampler = REGISTRY.build("sampler", sampler_name, **CONFORMANCE_PARAMS.get(sampler_name, {}))
    if sampler_name in NOT_DIFFUSION_SAMPLERS:
        with pytest.raises(AssertionError, match=r"energy distance .* floor stds"):
            check_sampler(sampler, process, REFERENCE, num=num, weight_tol=weight_tol)  # type: ignore[arg-type]
        return
    report = check_sampler(sampler, process, REFERENCE, num=num, weight_tol=weight_tol)  # type: ignore[arg-type]
    print(f"{sampler_name} on {process_name}: ED {report.energy_distance:.2e} = "
          f"{report.ed_in_floor_stds:.2f} floor stds, weights {report.mode_weights}, NFE {report.nfe}")


@pytest.mark.slow
@pytest.mark.parametrize("process_name", REGISTRY.names("process"))
@pytest.mark.parametrize("sampler_name", REGISTRY.names("sampler"))
def test_samples_match_the_mixture(sampler_name: str, process_name: str) -> None:
    """20k samples: energy distance within 3 noise-floor stds, mode weights within 0.02."""
    conformance(sampler_name, process_name, 20_000, 0.02)


SMALL_NUM = QUICK_NUM
SMALL_WEIGHT_TOL = QUICK_WEIGHT_TOL


@pytest.mark.parametrize("process_name", REGISTRY.names("process"))
@pytest.mark.parametrize("sampler_name", REGISTRY.names("sampler"))
def test_samples_match_the_mixture_at_small_size(sampler_name: str, process_name: str) -> None:
    """The conformance run of the default test tier: 2000 samples (the noise floor of the energy
    distance grows as the sample shrinks, so only gross errors show); the slow tier repeats it at
    20k samples."""
    conformance(sampler_name, process_name, SMALL_NUM, SMALL_WEIGHT_TOL)


def pipeline(sampler: str = "euler_maruyama", **sampler_params: object) -> Pipeline:
    return Pipeline.from_spec({
        "process": {"type": "vp"}, "model": {"type": "gmm", **REFERENCE_MIXTURE},
        "sampler": {"type": sampler, **sampler_params},
    })


@pytest.mark.parametrize(("sampler", "params"), [
    ("euler_maruyama", {"steps": 50}),
    ("probability_flow", {"method": "rk4", "steps": 20}),
])
def test_same_seed_same_samples_whatever_the_batch_size(sampler: str, params: dict[str, object]) -> None:
    pipe = pipeline(sampler, **params)
    whole = pipe.sample(3000, seed=42).x
    chunked = pipe.sample(3000, seed=42, batch_size=1000).x
    odd = pipe.sample(3000, seed=42, batch_size=777).x
    assert torch.equal(whole, chunked) and torch.equal(whole, odd)
    shifted = pipe.sample(1000, seed=42, start=2000).x  # samples 2000..2999 drawn on their own
    assert torch.equal(whole[2000:], shifted)
    assert not torch.equal(whole, pipe.sample(3000, seed=43).x)


def test_adaptive_ode_is_batch_invariant_within_tolerance() -> None:
    """Adaptive step-size control couples the batch; results agree to the solver tolerance."""
    pipe = pipeline("probability_flow", rtol=1e-6, atol=1e-6)
    whole = pipe.sample(2000, seed=1).x
    chunked = pipe.sample(2000, seed=1, batch_size=500).x
    assert (whole - chunked).abs().max() < 1e-3


def test_latents_replace_the_prior_draw() -> None:
    pipe = pipeline("probability_flow", method="rk4", steps=20)
    latents = torch.randn(100, 2)
    a = pipe.sample(100, seed=0, latents=latents).x
    b = pipe.sample(100, seed=99, latents=latents).x
    assert torch.equal(a, b)  # deterministic sampler: only the latents matter
    with pytest.raises(ValueError, match="latents have shape"):
        pipe.sample(100, seed=0, latents=torch.randn(100, 3))


def test_one_line_sampler_swap_and_nfe() -> None:
    pipe = pipeline("euler_maruyama", steps=30)
    assert pipe.sample(10, seed=0).nfe == 30
    swapped = pipe.with_sampler("probability_flow", method="euler", steps=12)
    assert swapped.sample(10, seed=0).nfe == 12 and swapped.process is pipe.process


def test_callback_sees_every_step() -> None:
    seen: list[StepInfo] = []
    pipeline(steps=25).sample(8, seed=0, callback=seen.append)
    assert [s.step for s in seen] == list(range(25))
    assert seen[-1].t == pytest.approx(1e-3) and seen[0].t < 1.0


class NaNAfter(GaussianMixture):
    """The exact mixture score, except NaN once t drops below 0.5."""

    name = "nan_after"

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        out = super().forward(x, t, cond)
        return torch.where((t < 0.5)[:, None], torch.nan, out)


@pytest.mark.parametrize(("sampler", "params"), [("euler_maruyama", {"steps": 100}),
                                                 ("probability_flow", {})])
def test_nan_stops_sampling_with_step_and_time(sampler: str, params: dict[str, object]) -> None:
    process = REGISTRY.build("process", "vp")
    pipe = Pipeline(process, NaNAfter(**REFERENCE_MIXTURE), REGISTRY.build("sampler", sampler, **params))  # type: ignore[arg-type]
    with pytest.raises(NonFiniteError) as exc:
        pipe.sample(16, seed=0)
    assert exc.value.t < 0.5 and exc.value.t > 0.4
    assert f"t={exc.value.t:.6g}" in str(exc.value) and f"step {exc.value.step}" in str(exc.value)


class NeedsLinear(Sampler):
    name = "needs_linear"
    requires = frozenset({"linear_gaussian"})

    def run(self, score_fn, process, x_T, noise, callback):  # type: ignore[no-untyped-def]
        return x_T, 0


def test_incompatible_pairs_are_refused_at_assembly() -> None:
    with pytest.raises(CompatibilityError, match="requires a process with linear_gaussian"):
        Pipeline(DoubleWell(), GaussianMixture(**REFERENCE_MIXTURE), REGISTRY.build("sampler", "euler_maruyama"))  # type: ignore[arg-type]
    with pytest.raises(CompatibilityError, match="needs_linear"):
        Pipeline(DoubleWell(), ZeroScore(), NeedsLinear())
    # the generic samplers accept any process
    em = REGISTRY.build("sampler", "euler_maruyama", steps=5)
    result = Pipeline(DoubleWell(), ZeroScore(), em).sample(4, seed=0)  # type: ignore[arg-type]
    assert result.x.shape == (4, 2) and result.nfe == 5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sampler", REGISTRY.names("sampler"))
def test_every_sampler_runs_on_every_device(device: str, sampler: str) -> None:
    pipe = Pipeline.from_spec({"process": {"type": "subvp"}, "model": {"type": "gmm", **REFERENCE_MIXTURE},
                               "sampler": {"type": sampler}})
    x = pipe.sample(64, seed=0, device=device).x
    assert x.device.type == device and torch.isfinite(x).all()
    if device != "cpu":
        cpu = pipe.sample(64, seed=0, device="cpu").x
        assert (x.cpu() - cpu).abs().max() < 1e-3


def test_nan_step_is_the_step_callbacks_see() -> None:
    """Euler-Maruyama on [t_min, 1] with 10 steps: step i starts at t = 1 - i h. The score turns NaN
    below t = 0.5, first met at the start of step 6 (t = 0.4006)."""
    process = REGISTRY.build("process", "vp")
    pipe = Pipeline(process, NaNAfter(**REFERENCE_MIXTURE), REGISTRY.build("sampler", "euler_maruyama", steps=10))  # type: ignore[arg-type]
    seen: list[int] = []
    with pytest.raises(NonFiniteError) as exc:
        pipe.sample(4, seed=0, callback=lambda info: seen.append(info.step))
    assert seen == [0, 1, 2, 3, 4, 5]
    assert exc.value.step == 6 and exc.value.evaluation == 7
    assert exc.value.t == pytest.approx(1 - 6 * (1 - 1e-3) / 10, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# Every sampler at the extremes of the allowed process parameters
# ---------------------------------------------------------------------------------------------

# The samplers at the corner of the allowed range, lambda(T) = -20 and lambda(t_min) = 20 at once
# (diffcore.limits.MIN_HALF_LOG_SNR, MAX_HALF_LOG_SNR), need more steps than at the defaults where the
# range is [-5, 4.6]: their grids span four times the log-SNR. Each line: the energy distance in floor
# stds on vp / ve / subvp and the largest mode-weight error, measured (seed 0, 2000 samples); the other
# samplers pass with their CONFORMANCE_PARAMS (ancestral -0.39 / 0.83 / -0.11, 0.013; ddim 1.22 / 1.22 /
# 1.22, 0.001; dpm_solver 1.97 / 1.96 / 1.97, 0.013; probability_flow 0.81 / 0.82 / 0.81, 0.017;
# reverse_sde 0.12 / 0.16 / 0.47, 0.015).
EXTREME_PARAMS: dict[str, dict[str, object]] = {
    "annealed_langevin": {"levels": 160, "steps_per_level": 25},  # -1.24 / -0.98 / -1.15, 0.018
    "dpm_solver_pp": {"steps": 120},  # 0.85 / 0.85 / 0.85, 0.017 (30 steps: 45 floor stds)
    "euler_maruyama": {"steps": 500},  # -0.30 / -0.73 / -0.28, 0.018 (125 on ve: 9.25)
    "heun": {"steps": 400},  # 0.95 / 0.96 / 0.95, 0.018 (the karras grid puts most steps at high noise)
    "pc": {"steps": 500},  # -0.84 / -0.41 / -1.03, 0.009 (125 on ve: 6.83)
    "reverse_diffusion": {"steps": 500},  # -0.38 / -0.02 / 0.43, 0.013 (250 on ve: 2.25)
    "unipc": {"steps": 120},  # 0.91 / 0.92 / 0.91, 0.018 (30 steps: 175 floor stds)
}


def extreme_process_params(process_name: str) -> dict[str, float]:
    """The noise field at its largest and ``t_min`` at its smallest allowed value at once, read from
    the refusals just beyond them (vp: beta_max 79.8, t_min 4.25e-17; ve: sigma_max 4.85e8, t_min
    8.64e-16; subvp: beta_max 79.8, t_min 2.07e-8)."""
    base = dict(PROCESS_PARAMS.get(process_name, {}))
    noise = {"ve": "sigma_max"}.get(process_name, "beta_max")
    params = {**base, noise: limit_from_refusal(process_name, {**base, noise: 1e300}, noise)}
    return {**params, "t_min": limit_from_refusal(process_name, {**params, "t_min": 1e-300}, "t_min")}


def limit_from_refusal(process_name: str, params: dict[str, float], field: str) -> float:
    with pytest.raises(SpecError) as info:
        REGISTRY.build("process", process_name, **params)
    return float(str(info.value).split(f" {field} to at ")[1].split()[1].rstrip(";"))


@pytest.mark.parametrize("process_name", REGISTRY.names("process"))
@pytest.mark.parametrize("sampler_name", REGISTRY.names("sampler"))
def test_samplers_match_the_mixture_at_the_extremes_of_the_process_range(sampler_name: str,
                                                                         process_name: str) -> None:
    """2000 samples at the corner of the allowed range, against the exact mixture at ``t_min``: the
    bounds are inside the range where every sampler is correct (langevin, not a diffusion sampler,
    must stay finite)."""
    process = REGISTRY.build("process", process_name, **extreme_process_params(process_name))
    assert isinstance(process, LinearGaussianProcess)
    for t, bound in ((process.T, MIN_HALF_LOG_SNR), (process.t_min, MAX_HALF_LOG_SNR)):
        assert abs(float(process.half_log_snr(torch.tensor([t], dtype=torch.float64))) - bound) < 0.3
    params = {**CONFORMANCE_PARAMS.get(sampler_name, {}), **EXTREME_PARAMS.get(sampler_name, {})}
    sampler = REGISTRY.build("sampler", sampler_name, **params)
    if sampler_name in NOT_DIFFUSION_SAMPLERS:
        x = Pipeline(process, REFERENCE, sampler).sample(SMALL_NUM, seed=0).x  # type: ignore[arg-type]
        assert torch.isfinite(x).all()
        return
    report = check_sampler(sampler, process, REFERENCE, num=SMALL_NUM, weight_tol=SMALL_WEIGHT_TOL)  # type: ignore[arg-type]
    print(f"{sampler_name} on {process_name} at the extremes: {report.ed_in_floor_stds:.2f} floor stds, "
          f"weights {report.mode_weights}, NFE {report.nfe}")
