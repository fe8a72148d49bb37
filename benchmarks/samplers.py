"""Sampler quality per score evaluation: diffcore's samplers against k-diffusion's and diffusers', all
driven by the same exact score of Gaussian mixtures.

Every library integrates the VP SDE (``beta_min = 0.1``, ``beta_max = 20``, ``t_min = 1e-3``, ``T = 1``)
of the ``gmm`` model, whose score of ``p_t`` is exact: differences between rows are the samplers'
discretisation errors alone (plus Monte-Carlo noise, shown by the floor). All of them start from the
same prior draws: the pipeline's own, ``x_T = prior_std * noise.normal(stream="prior")`` with
``prior_std = sqrt(alpha_T^2 + sigma_T^2) = 1`` for VP (diffcore's prior for unit-variance data).

How each library sees the score (``score(x, t)`` is the ``gmm`` model bound to the VP process):

- diffcore: ``Pipeline.with_sampler(name, steps=..., ...).sample(n, seed, latents=x_T)``. Samplers
  stop at ``t_min``; those with ``final_denoise`` use it (one more evaluation, counted in the NFE),
  which is what the peers do when they step to noise level zero (see below).
- k-diffusion works on ``y = x0 + s z`` (the VE form of VP, ``s = sigma_t / alpha_t = exp(-lambda_t)``)
  with a denoiser ``D(y, s) = y + s^2 alpha_t score(alpha_t y, t)``, ``t`` the time with
  ``sigma_t / alpha_t = s`` (``process.t_from_half_log_snr(-log s)``). Its start is ``y_T = x_T / alpha_T``
  (the same draws in sigma units); its grid is ``get_sigmas_karras(n, s(t_min), s(T), rho=7)``, which
  ends with ``s = 0``: the last evaluation (at ``s(t_min)``) is a Tweedie denoising step. Its
  ``sampling.py`` is loaded on its own (the package ``__init__`` needs torchvision, wandb, ...),
  with a stub of the one helper it takes from ``k_diffusion.utils`` (``append_dims``).
- diffusers' schedulers are discrete (1000 training steps, ``beta_schedule="linear"``,
  ``beta_start = 0.1 / 1000``, ``beta_end = 20 / 1000``: the discretised VP SDE), ``prediction_type =
  "epsilon"``. The model output at scheduler timestep ``tau`` is ``eps = -sigma score(x, t)`` where the
  noise level is the scheduler's own: ``s = interp(tau, arange(1000), sqrt((1 - abar) / abar))`` (exact
  for the integer timesteps of the multistep schedulers, and the interpolation Euler and Heun use for
  their fractional ones), ``sigma = s / sqrt(1 + s^2)`` and ``t = process.t_from_half_log_snr(-log s)``
  (so ``alpha(t)^2 = abar``: the score is exact at the scheduler's noise level, even where its
  discrete ``abar`` differs slightly from the continuous ``alpha(t)^2``). The input is
  ``scale_model_input(x, tau)``, the VP-form state. The start is ``x_T * init_noise_sigma``. Spacing:
  ``timestep_spacing="linspace"`` (the default of the multistep, Euler and Heun schedulers) and
  ``"trailing"`` for DDIM (its default ``"leading"`` never visits timestep 999); DDIM with
  ``clip_sample=False`` (the data are not in ``[-1, 1]``) and ``set_alpha_to_one=True``. Every
  scheduler but DEIS ends at noise level zero (DEIS ends at ``abar_0``, ``s = 0.01``).

Metrics, against ``p_0`` (the data distribution), per mixture, sampler and NFE budget:

- ``ED``: the energy distance (the U-statistic of :func:`diffcore.metrics.energy_distance`; computed
  here with matrix-product distances and the reference's self-term cached, checked against diffcore's
  function at start-up) to 5000 exact draws (2000 with ``--quick``); ``ED/fl``: in units of the floor, the RMS energy
  distance of fresh exact draws of the same size against the same reference (a value of order one is
  indistinguishable from exact sampling);
- ``wErr``: the largest absolute error of the mode weights (:func:`diffcore.metrics.mode_weights`);
- ``spread%``: for the samples assigned to each component, the relative error of the per-axis
  standard deviation against the component's, averaged (absolute) over axes and components;
  ``sbias%`` the same signed (negative: modes too narrow).

Time grids are each library's own defaults: diffcore's samplers keep theirs (``logsnr`` for the
exponential integrators, ``uniform`` in ``t`` for the SDE samplers, ``karras`` for ``heun``; one row
puts ``dpm_solver_pp`` on ``karras``), k-diffusion's are ``karras`` and diffusers' are ``linspace`` in
the training timesteps (about uniform in ``t``). At NFE <= 10 the grid matters as much as the solver.

The rows ``exact p_0`` and ``exact p(t_min)`` are exact draws, the second at ``t_min`` (where samplers
without a final denoising step stop): the floor of every metric. diffcore's step counts are the
largest whose NFE does not exceed the budget (probed on two samples); so are the peers' ``n``.

Other sections: the cross-library consistency on the same grid, in float64 (diffcore's ``ddim``,
``dpm_solver_pp`` 2M and 3M and ``heun`` on the karras grid against k-diffusion's Euler,
DPM-Solver++(2M) in its two variants, DPM-Solver++(3M) and Heun: see :func:`run_consistency`);
diffcore's ``euler_maruyama`` against a hand-written PyTorch loop of the same algorithm (interleaved
timing); the torchsde-backed ``reverse_sde`` against the native ``euler_maruyama``.

Run the peers from a separate virtual environment that also holds diffcore::

    python3 -m venv .bench-venv && . .bench-venv/bin/activate
    pip install torch==2.13.0 && pip install -r requirements-dev.txt
    pip install diffusers && pip install --no-deps k-diffusion && pip install scipy torchsde tqdm torchdiffeq
    python benchmarks/samplers.py            # about ten minutes on one CPU thread
    python benchmarks/samplers.py --quick    # two mixtures, NFE 10 and 20, fewer samples: a smoke run

Without the peers installed only diffcore's rows are printed (with a notice).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import math
import statistics
import sys
import time
import types
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffcore import Pipeline
from diffcore.metrics import assign_modes, energy_distance, mode_weights
from diffcore.noise import NoiseSource
from diffcore.process import LinearGaussianProcess, ScoreFn
from diffcore.sampler import tweedie_denoise
from diffcore.testing.conformance import REFERENCE_MIXTURE, sample_mixture

SEED = 0
"""Seed of the prior draws and of every sampler's noise."""

SUMMARY_NFE = (10, 20)
"""The budgets of the summary: our best against the best peer."""

LOOP_TARGET = 1.05
"""Our Euler-Maruyama time over the hand-written loop's must be at most this."""

RunFn = Callable[[int, Tensor], tuple[Tensor, int]]
"""``(size, x_T) -> (samples (B, D) float64, NFE)``: one sampler at a size (steps, grid points or
levels) from the VP prior draws ``x_T`` ``(B, D)``."""


# ---------------------------------------------------------------------------------------------
# Mixtures and metrics
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mixture:
    """A diagonal Gaussian mixture, as ``gmm`` model parameters."""

    name: str
    params: dict[str, Any]

    @property
    def dim(self) -> int:
        return len(self.params["means"][0])

    def tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        """Log-weights ``(K,)``, means and variances ``(K, D)``, float64."""
        w = torch.tensor(self.params["weights"], dtype=torch.float64)
        return (torch.log(w / w.sum()), torch.tensor(self.params["means"], dtype=torch.float64),
                torch.tensor(self.params["variances"], dtype=torch.float64))


def make_mixtures() -> list[Mixture]:
    """The mixtures of the table: the conformance reference, very unequal weights, per-axis scales
    of 1e-2 and 1e2, and 64 dimensions."""
    gen = torch.Generator().manual_seed(1)
    means_64 = (1.5 * torch.randn(4, 64, generator=gen, dtype=torch.float64)).round(decimals=3)
    variances_64 = (0.3 + 1.2 * torch.rand(4, 64, generator=gen, dtype=torch.float64)).round(decimals=3)
    small, large = 1e-2, 1e2
    return [
        Mixture("reference-2d", REFERENCE_MIXTURE),
        Mixture("unequal-2d", {"weights": [0.05, 0.95], "means": [[-4.0, -3.0], [3.0, 2.0]],
                               "variances": [[0.5, 0.8], [1.0, 0.7]]}),
        Mixture("scales-8d", {"weights": [0.4, 0.6], "means": [[-3.0] * 8, [3.0] * 8],
                              "variances": [[small, large] * 4, [large, small] * 4]}),
        Mixture("gmm-64d", {"weights": [0.1, 0.2, 0.3, 0.4], "means": means_64.tolist(),
                            "variances": variances_64.tolist()}),
    ]


def _distance_sum(a: Tensor, b: Tensor, chunk: int = 2048) -> float:
    """``sum_ij |a_i - b_j|`` (float64, matrix-product distances, ``chunk`` rows of ``a`` at a time)."""
    return float(sum(torch.cdist(a[i:i + chunk], b).sum() for i in range(0, a.shape[0], chunk)))


@dataclass(frozen=True)
class Metrics:
    """Sample quality against ``p_0`` (see the module docstring)."""

    ed: float
    weight_err: float
    spread_err: float
    spread_bias: float


class Reference:
    """Exact draws of ``p_0`` and everything needed to score samples against them."""

    def __init__(self, mixture: Mixture, num: int, *, seed: int = 10_000) -> None:
        self.mixture = mixture
        self.generator = torch.Generator().manual_seed(seed)
        self.y = sample_mixture(mixture.params, num, self.generator)
        m = self.y.shape[0]
        self.self_term = _distance_sum(self.y, self.y) / (m * (m - 1))
        self.log_w, self.means, self.variances = mixture.tensors()

    def energy_distance(self, x: Tensor) -> float:
        """The U-statistic ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` against the reference draws."""
        x = x.reshape(x.shape[0], -1).to(torch.float64)
        n, m = x.shape[0], self.y.shape[0]
        return 2.0 * _distance_sum(x, self.y) / (n * m) - _distance_sum(x, x) / (n * (n - 1)) - self.self_term

    def metrics(self, x: Tensor) -> Metrics:
        """All metrics of samples ``x`` ``(n, D)``."""
        x = x.reshape(x.shape[0], -1).to(torch.float64)
        weights = mode_weights(x, self.log_w, self.means, self.variances)
        weight_err = float((weights - self.log_w.exp()).abs().max())
        labels = assign_modes(x, self.log_w, self.means, self.variances)
        abs_errs, signed = [], []
        for k in range(self.means.shape[0]):
            members = x[labels == k]
            if members.shape[0] < 20:  # too few to estimate a spread (counted in wErr)
                continue
            rel = members.std(0) / self.variances[k].sqrt() - 1.0
            abs_errs.append(float(rel.abs().mean()))
            signed.append(float(rel.mean()))
        nan = float("nan")
        return Metrics(self.energy_distance(x), weight_err, statistics.fmean(abs_errs) if abs_errs else nan,
                       statistics.fmean(signed) if signed else nan)

    def exact(self, num: int) -> Tensor:
        """Fresh exact draws ``(num, D)`` of ``p_0``."""
        return sample_mixture(self.mixture.params, num, self.generator)


def check_energy_distance() -> None:
    """Our cached, matrix-product energy distance equals :func:`diffcore.metrics.energy_distance`."""
    mixture = Mixture("check", REFERENCE_MIXTURE)
    ref = Reference(mixture, 600, seed=7)
    x = ref.exact(500) * 1.05
    ours, theirs = ref.energy_distance(x), energy_distance(x, ref.y)
    assert math.isclose(ours, theirs, rel_tol=1e-6, abs_tol=1e-9), (ours, theirs)


# ---------------------------------------------------------------------------------------------
# The samplers of each library
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """One sampler configuration of one library; ``run`` takes its size parameter (steps, ``n``)."""

    library: str
    label: str
    run: RunFn
    min_size: int = 1


@dataclass
class Setup:
    """What every library shares for one mixture: the pipeline (process, exact score) and its noise range."""

    mixture: Mixture
    pipe: Pipeline
    process: LinearGaussianProcess
    score: ScoreFn
    s_min: float
    s_max: float
    alpha_T: float

    @classmethod
    def build(cls, mixture: Mixture) -> Setup:
        pipe = Pipeline.from_spec({"process": {"type": "vp"}, "model": {"type": "gmm", **mixture.params},
                                   "sampler": {"type": "ddim"}})
        process = pipe.process
        assert isinstance(process, LinearGaussianProcess)
        ends = torch.tensor([process.t_min, process.T], dtype=torch.float64)
        s_min, s_max = (float(v) for v in torch.exp(-process.half_log_snr(ends)))
        alpha_T = float(process.alpha(ends[1:]))
        return cls(mixture, pipe, process, pipe.score_fn(), s_min, s_max, alpha_T)

    def prior(self, num: int, dtype: torch.dtype = torch.float32) -> Tensor:
        """The pipeline's own prior draws for samples ``0 .. num - 1`` (seed :data:`SEED`)."""
        noise = NoiseSource.range(SEED, 0, num)
        return self.process.prior_sample(noise, (self.mixture.dim,), dtype=dtype)

    def time_of_level(self, s: Tensor) -> Tensor:
        """The time ``t`` with ``sigma_t / alpha_t = s`` (float64, shape of ``s``)."""
        return self.process.t_from_half_log_snr(-torch.log(s.to(torch.float64)))


DIFFCORE_CONFIGS: list[tuple[str, str, dict[str, Any]]] = [
    # (label, registered name, params); ``steps`` (or ``levels``) is the size parameter.
    ("euler_maruyama", "euler_maruyama", {}),
    ("reverse_diffusion", "reverse_diffusion", {}),
    ("ancestral", "ancestral", {}),
    ("pc rd+langevin", "pc", {}),
    ("reverse_sde srk", "reverse_sde", {"method": "srk"}),
    ("annealed_langevin 1/level", "annealed_langevin", {"steps_per_level": 1}),
    ("probability_flow rk4", "probability_flow", {"method": "rk4"}),
    ("ddim +den", "ddim", {"final_denoise": True}),
    ("dpm_solver 2M +den", "dpm_solver", {"order": 2, "final_denoise": True}),
    ("dpm_solver 3M +den", "dpm_solver", {"order": 3, "final_denoise": True}),
    ("dpm_solver_pp 2M", "dpm_solver_pp", {"order": 2}),
    ("dpm_solver_pp 2M +den", "dpm_solver_pp", {"order": 2, "final_denoise": True}),
    ("dpm_solver_pp 2M karras +den", "dpm_solver_pp", {"order": 2, "grid": "karras", "final_denoise": True}),
    ("dpm_solver_pp 3M +den", "dpm_solver_pp", {"order": 3, "final_denoise": True}),
    ("dpm_solver_pp 2S +den", "dpm_solver_pp", {"order": 2, "method": "singlestep", "final_denoise": True}),
    ("unipc bh1 p2 +den", "unipc", {"order": 2, "variant": "bh1", "final_denoise": True}),
    ("unipc bh2 p3 +den", "unipc", {"order": 3, "variant": "bh2", "final_denoise": True}),
    ("heun (karras)", "heun", {}),
]
"""diffcore's rows: every registered diffusion sampler with its defaults (grids included), the
exponential integrators with ``final_denoise`` (the peers' last evaluation is a denoising step too),
and two variants showing its effect and the karras grid. Plain ``langevin`` (at ``t_min`` from the
prior draw) is left out: it is not a diffusion sampler and its mode weights depend on the start."""


def diffcore_candidates(setup: Setup) -> list[Candidate]:
    """diffcore's samplers on the pipeline of ``setup``."""
    candidates = []
    for label, name, params in DIFFCORE_CONFIGS:
        size_key = "levels" if name == "annealed_langevin" else "steps"

        def run(size: int, x_T: Tensor, name: str = name, params: dict[str, Any] = params,
                size_key: str = size_key) -> tuple[Tensor, int]:
            pipe = setup.pipe.with_sampler(name, **{**params, size_key: size})
            result = pipe.sample(x_T.shape[0], seed=SEED, latents=x_T, dtype=x_T.dtype)
            return result.x.to(torch.float64), result.nfe

        candidates.append(Candidate("diffcore", label, run, 2 if size_key == "levels" else 1))
    return candidates


def load_k_diffusion() -> types.ModuleType | None:
    """``k_diffusion/sampling.py`` loaded alone under the package name ``_kdiff``, with a stub
    ``_kdiff.utils`` holding the one helper it uses; ``None`` (with a notice) when not installed."""
    missing = [m for m in ("k_diffusion", "scipy", "torchsde", "torchdiffeq", "tqdm")
               if importlib.util.find_spec(m) is None]
    if missing:
        print(f"notice: k-diffusion rows skipped ({', '.join(missing)} not installed)")
        return None
    spec = importlib.util.find_spec("k_diffusion")
    assert spec is not None and spec.submodule_search_locations is not None
    path = f"{next(iter(spec.submodule_search_locations))}/sampling.py"
    package = types.ModuleType("_kdiff")
    package.__path__ = []
    utils = types.ModuleType("_kdiff.utils")

    def append_dims(x: Tensor, target_dims: int) -> Tensor:
        """k_diffusion.utils.append_dims: ``x`` with trailing singleton dimensions up to ``target_dims``."""
        return x[(...,) + (None,) * (target_dims - x.ndim)]

    utils.append_dims = append_dims  # type: ignore[attr-defined]
    package.utils = utils  # type: ignore[attr-defined]
    sys.modules["_kdiff"], sys.modules["_kdiff.utils"] = package, utils
    sampling_spec = importlib.util.spec_from_file_location("_kdiff.sampling", path)
    assert sampling_spec is not None and sampling_spec.loader is not None
    module = importlib.util.module_from_spec(sampling_spec)
    sys.modules["_kdiff.sampling"] = module
    sampling_spec.loader.exec_module(module)
    return module


K_DIFFUSION_SAMPLERS = ["sample_euler", "sample_heun", "sample_dpm_2", "sample_lms", "sample_dpmpp_2m",
                        "sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde", "sample_euler_ancestral"]
"""k-diffusion's samplers of the table, each with its default arguments (the SDE ones build their
default ``BrownianTreeNoiseSampler``, seeded through ``torch.manual_seed``)."""


class Denoiser:
    """k-diffusion's denoiser ``D(y, s) = y + s^2 alpha_t score(alpha_t y, t)`` on the VE form
    ``y = x / alpha_t`` of the VP process; counts its calls."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.calls = 0

    def __call__(self, y: Tensor, s: Tensor) -> Tensor:
        self.calls += 1
        t = self.setup.time_of_level(s)  # (B,) float64
        alpha = self.setup.process.alpha(t)
        shape = (-1,) + (1,) * (y.ndim - 1)
        score = self.setup.score(alpha.to(y.dtype).view(shape) * y, t.to(y.dtype))
        return y + (s.to(torch.float64) ** 2 * alpha).to(y.dtype).view(shape) * score


def k_diffusion_sigmas(kd: types.ModuleType, setup: Setup, n: int) -> Tensor:
    """``get_sigmas_karras(n, s(t_min), s(T), rho=7)``: ``n`` levels and a final zero."""
    sigmas: Tensor = kd.get_sigmas_karras(n, setup.s_min, setup.s_max, rho=7.0)
    return sigmas


def k_diffusion_candidates(kd: types.ModuleType, setup: Setup) -> list[Candidate]:
    """k-diffusion's samplers driven by :class:`Denoiser` on the karras grid."""
    candidates = []
    for name in K_DIFFUSION_SAMPLERS:
        fn = getattr(kd, name)

        def run(n: int, x_T: Tensor, fn: Callable[..., Tensor] = fn) -> tuple[Tensor, int]:
            denoiser = Denoiser(setup)
            torch.manual_seed(SEED)
            y = fn(denoiser, x_T / setup.alpha_T, k_diffusion_sigmas(kd, setup, n), disable=True)
            return y.to(torch.float64), denoiser.calls

        candidates.append(Candidate("k-diffusion", name.removeprefix("sample_"), run, min_size=2))
    return candidates


def load_diffusers() -> types.ModuleType | None:
    """The ``diffusers`` package, or ``None`` (with a notice)."""
    if importlib.util.find_spec("diffusers") is None:
        print("notice: diffusers rows skipped (diffusers not installed)")
        return None
    diffusers = importlib.import_module("diffusers")
    diffusers.utils.logging.set_verbosity_error()
    return diffusers


DIFFUSERS_COMMON: dict[str, Any] = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 0.1 / 1000,
                                    "beta_end": 20.0 / 1000, "prediction_type": "epsilon"}
"""The discretised VP SDE (beta_min 0.1, beta_max 20) with noise prediction."""

DIFFUSERS_CONFIGS: list[tuple[str, str, dict[str, Any]]] = [
    ("dpm++ 2M", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    ("dpm++ 3M", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 3}),
    ("unipc bh2 p2", "UniPCMultistepScheduler", {"solver_order": 2}),
    ("unipc bh2 p3", "UniPCMultistepScheduler", {"solver_order": 3}),
    ("deis 2", "DEISMultistepScheduler", {"solver_order": 2}),
    ("ddim", "DDIMScheduler", {"timestep_spacing": "trailing", "clip_sample": False, "set_alpha_to_one": True}),
    ("euler", "EulerDiscreteScheduler", {}),
    ("heun", "HeunDiscreteScheduler", {}),
]


class EpsModel:
    """The noise prediction ``eps = -sigma score(x, t)`` at a diffusers timestep, at the scheduler's
    own noise level (module docstring); counts its calls."""

    def __init__(self, setup: Setup, alphas_cumprod: Tensor) -> None:
        self.setup = setup
        abar = alphas_cumprod.to(torch.float64).numpy()
        self.levels = np.sqrt((1.0 - abar) / abar)
        self.calls = 0

    def __call__(self, x: Tensor, timestep: Tensor | float) -> Tensor:
        self.calls += 1
        s = float(np.interp(float(timestep), np.arange(self.levels.shape[0]), self.levels))
        t = self.setup.time_of_level(torch.tensor([s], dtype=torch.float64))
        sigma = s / math.sqrt(1.0 + s * s)
        return -sigma * self.setup.score(x, t.to(x.dtype).expand(x.shape[0]))


def diffusers_candidates(diffusers: types.ModuleType, setup: Setup) -> list[Candidate]:
    """diffusers' schedulers in their standard loop, driven by :class:`EpsModel`."""
    candidates = []
    for label, class_name, params in DIFFUSERS_CONFIGS:
        cls = getattr(diffusers, class_name, None)
        if cls is None:
            print(f"notice: diffusers has no {class_name}; row {label!r} skipped")
            continue

        def run(n: int, x_T: Tensor, cls: Any = cls, params: dict[str, Any] = params) -> tuple[Tensor, int]:
            scheduler = cls(**DIFFUSERS_COMMON, **params)
            scheduler.set_timesteps(n)
            model = EpsModel(setup, scheduler.alphas_cumprod)
            step_kwargs: dict[str, Any] = {}
            if "generator" in inspect.signature(scheduler.step).parameters:
                step_kwargs["generator"] = torch.Generator().manual_seed(SEED)
            x = x_T * scheduler.init_noise_sigma
            for timestep in scheduler.timesteps:
                eps = model(scheduler.scale_model_input(x, timestep), timestep)
                x = scheduler.step(eps, timestep, x, **step_kwargs).prev_sample
            return x.to(torch.float64), model.calls

        candidates.append(Candidate("diffusers", label, run, min_size=2))
    return candidates


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One sampler at one NFE budget on one mixture."""

    mixture: str
    library: str
    label: str
    budget: int
    nfe: int
    metrics: Metrics
    seconds: float


@dataclass
class Table:
    """All rows, the floors and the failures."""

    rows: list[Row] = field(default_factory=list)
    floors: dict[str, float] = field(default_factory=dict)
    failures: dict[tuple[str, str], str] = field(default_factory=dict)
    nfe_cache: dict[tuple[str, str, int], int] = field(default_factory=dict)


def fit_size(candidate: Candidate, budget: int, probe: Tensor, table: Table) -> tuple[int, int] | None:
    """The largest size whose NFE does not exceed ``budget`` and that NFE (``None``: even the
    smallest size exceeds it). NFE grows with the size; each probe samples two points."""

    def nfe(size: int) -> int:
        key = (candidate.library, candidate.label, size)
        if key not in table.nfe_cache:
            table.nfe_cache[key] = candidate.run(size, probe)[1]
        return table.nfe_cache[key]

    lo, hi = candidate.min_size, budget
    if nfe(lo) > budget:
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if nfe(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo, nfe(lo)


def format_row(library: str, label: str, nfe: str, m: Metrics, floor: float, seconds: str, mark: str = "") -> str:
    return (f"  {library:<12} {label:<30} {nfe:>4} {m.ed:>10.2e} {m.ed / floor:>8.1f} {m.weight_err:>7.4f} "
            f"{100 * m.spread_err:>8.2f} {100 * m.spread_bias:>7.2f} {seconds:>7} {mark}")


HEADER = (f"  {'library':<12} {'sampler':<30} {'NFE':>4} {'ED':>10} {'ED/fl':>8} {'wErr':>7} "
          f"{'spread%':>8} {'sbias%':>7} {'sec':>7}")


def run_table(mixtures: Sequence[Mixture], budgets: Sequence[int], *, num: int, ref_num: int, replicates: int,
              kd: types.ModuleType | None, diffusers: types.ModuleType | None) -> Table:
    """Sample every candidate at every budget on every mixture and print the rows as they come."""
    table = Table()
    for mixture in mixtures:
        setup = Setup.build(mixture)
        ref = Reference(mixture, ref_num)
        exact = [ref.metrics(ref.exact(num)) for _ in range(replicates)]
        floor = math.sqrt(statistics.fmean(m.ed**2 for m in exact))
        table.floors[mixture.name] = floor
        t_min = torch.tensor([setup.process.t_min], dtype=torch.float64)
        alpha_min, sigma_min = float(setup.process.alpha(t_min)), float(setup.process.sigma(t_min))
        at_t_min = ref.metrics(alpha_min * ref.exact(num) + sigma_min * torch.randn(num, mixture.dim,
                                                                                  generator=ref.generator,
                                                                                  dtype=torch.float64))
        candidates = diffcore_candidates(setup)
        if kd is not None:
            candidates += k_diffusion_candidates(kd, setup)
        if diffusers is not None:
            candidates += diffusers_candidates(diffusers, setup)
        x_T = setup.prior(num)
        probe = x_T[:2]
        print(f"\n== {mixture.name}: D={mixture.dim}, K={len(mixture.params['weights'])}, "
              f"weights={[round(w, 3) for w in mixture.params['weights']]}; {num} samples against {ref_num} exact "
              f"draws of p_0; ED floor (RMS over {replicates} exact sets) {floor:.2e}; "
              f"levels s = sigma/alpha in [{setup.s_min:.4g}, {setup.s_max:.4g}]")
        for budget in budgets:
            print(f"\n  -- {mixture.name}, NFE <= {budget}")
            print(HEADER)
            print(format_row("exact", "p_0 (draws)", "-", exact[0], floor, "-"))
            print(format_row("exact", "p(t_min) (draws)", "-", at_t_min, floor, "-"))
            rows = []
            for c in candidates:
                if (c.library, c.label) in table.failures:
                    continue
                try:
                    fitted = fit_size(c, budget, probe, table)
                    if fitted is None:
                        print(f"  {c.library:<12} {c.label:<30} (its smallest size needs more than {budget} NFE)")
                        continue
                    size, _ = fitted
                    start = time.perf_counter()
                    x, nfe = c.run(size, x_T)
                    seconds = time.perf_counter() - start
                    metrics = ref.metrics(x)
                except Exception as exc:  # noqa: BLE001 - a crashing sampler is reported and left out
                    table.failures[(c.library, c.label)] = f"{type(exc).__name__}: {exc}"
                    print(f"  {c.library:<12} {c.label:<30} CRASHED ({type(exc).__name__}: {exc})"[:200])
                    continue
                rows.append(Row(mixture.name, c.library, c.label, budget, nfe, metrics, seconds))
            best = {lib: min((r for r in rows if r.library == lib), key=lambda r: r.metrics.ed, default=None)
                    for lib in ("diffcore", "k-diffusion", "diffusers")}
            for r in rows:
                mark = "<- best " + r.library if best[r.library] is r else ""
                print(format_row(r.library, r.label, str(r.nfe), r.metrics, floor, f"{r.seconds:.2f}", mark))
            table.rows += rows
    return table


def print_summary(table: Table, mixtures: Sequence[Mixture], budgets: Sequence[int]) -> None:
    """Our best (by energy distance) against the best peer, per mixture, at the summary budgets."""
    print("\n== Summary: best diffcore sampler against the best peer, by ED ('matches': within 2 floors of it; "
          "'beats': more than 2 floors below)")
    print(f"  {'mixture':<13} {'NFE':>3}  {'ours (best)':<32} {'ED':>9} {'wErr':>7}  "
          f"{'best peer':<36} {'ED':>9} {'wErr':>7}  verdict")
    for mixture in mixtures:
        floor = table.floors[mixture.name]
        for budget in budgets:
            rows = [r for r in table.rows if r.mixture == mixture.name and r.budget == budget]
            ours = min((r for r in rows if r.library == "diffcore"), key=lambda r: r.metrics.ed, default=None)
            peer = min((r for r in rows if r.library != "diffcore"), key=lambda r: r.metrics.ed, default=None)
            if ours is None:
                continue
            ours_txt = f"{ours.label} ({ours.nfe})"
            if peer is None:
                print(f"  {mixture.name:<13} {budget:>3}  {ours_txt:<32} {ours.metrics.ed:>9.2e} "
                      f"{ours.metrics.weight_err:>7.4f}  (no peers)")
                continue
            peer_txt = f"{peer.library}:{peer.label} ({peer.nfe})"
            if ours.metrics.ed < peer.metrics.ed - 2 * floor:
                verdict = "beats"
            elif ours.metrics.ed <= peer.metrics.ed + 2 * floor:
                verdict = "matches"
            else:
                verdict = f"LOSES (x{ours.metrics.ed / max(peer.metrics.ed, 1e-300):.1f})"
            print(f"  {mixture.name:<13} {budget:>3}  {ours_txt:<32} {ours.metrics.ed:>9.2e} "
                  f"{ours.metrics.weight_err:>7.4f}  {peer_txt:<36} {peer.metrics.ed:>9.2e} "
                  f"{peer.metrics.weight_err:>7.4f}  {verdict}")


# ---------------------------------------------------------------------------------------------
# Consistency: the same algorithm on the same grid in diffcore and k-diffusion
# ---------------------------------------------------------------------------------------------


def run_consistency(kd: types.ModuleType, *, num: int = 256, n: int = 11) -> None:
    """diffcore's samplers on the karras grid against k-diffusion's on ``get_sigmas_karras(n)``, in float64.

    k-diffusion's ``n`` levels end with a step to zero, a Tweedie denoising step, so its run is
    diffcore's ``n - 1`` steps plus ``final_denoise`` (Heun: plus :func:`tweedie_denoise`, as
    k-diffusion's last Heun step to zero is an Euler step); ``lower_order_final`` is off, as
    k-diffusion keeps the full order up to the step into ``s(t_min)``. Pairs:

    - ``ddim`` (``eta = 0``) is Euler on ``dy/ds = (y - D) / s``: ``sample_euler``;
    - ``dpm_solver_pp`` 2M weights the divided difference with the exact ``h^2 phi_2(-h)``: that is
      ``sample_dpmpp_2m_sde`` with ``eta = 0, solver_type="heun"`` (diffusers' ``solver_type="heun"``),
      not ``sample_dpmpp_2m`` (DPM-Solver++(2M) of the paper, diffusers' default ``"midpoint"``), which
      uses ``(1 - e^-h) / (2 r)``: the two agree to second order only;
    - ``dpm_solver_pp`` 3M against ``sample_dpmpp_3m_sde`` with ``eta = 0``: the same warm-up and
      first-derivative term, but k-diffusion (like diffusers and the DPM-Solver reference code)
      weights ``D2 = h^2 P''/2`` with ``phi_2(-h) - 1/2``, half of the Taylor term ``h^3 phi_3(-h) P''``
      that diffcore uses (which is exact for a quadratic data prediction): expected to differ;
    - ``heun`` + Tweedie: ``sample_heun``.
    """
    setup = Setup.build(Mixture("reference-2d", REFERENCE_MIXTURE))
    x_T = setup.prior(num, torch.float64)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # get_sigmas_karras builds its ramp in the default dtype
    try:
        sigmas = k_diffusion_sigmas(kd, setup, n)
    finally:
        torch.set_default_dtype(previous)

    def ours(name: str, **params: Any) -> Tensor:
        return setup.pipe.with_sampler(name, steps=n - 1, grid="karras", **params).sample(
            num, seed=SEED, latents=x_T, dtype=torch.float64).x

    def theirs(fn: str, **kwargs: Any) -> Tensor:
        torch.manual_seed(SEED)
        out: Tensor = getattr(kd, fn)(Denoiser(setup), x_T / setup.alpha_T, sigmas, disable=True, **kwargs)
        return out

    dpmpp_2m = ours("dpm_solver_pp", order=2, lower_order_final=False, final_denoise=True)
    dpmpp_3m = ours("dpm_solver_pp", order=3, lower_order_final=False, final_denoise=True)
    heun = tweedie_denoise(setup.score, setup.process, ours("heun"), setup.process.t_min)
    pairs: list[tuple[str, Tensor, str, Tensor, bool]] = [
        ("ddim +den", ours("ddim", final_denoise=True), "euler", theirs("sample_euler"), True),
        ("dpm_solver_pp 2M +den", dpmpp_2m, "dpmpp_2m_sde eta=0 heun",
         theirs("sample_dpmpp_2m_sde", eta=0.0, solver_type="heun"), True),
        ("dpm_solver_pp 2M +den", dpmpp_2m, "dpmpp_2m (midpoint)", theirs("sample_dpmpp_2m"), False),
        ("dpm_solver_pp 3M +den", dpmpp_3m, "dpmpp_3m_sde eta=0", theirs("sample_dpmpp_3m_sde", eta=0.0), False),
        ("heun + tweedie", heun, "heun", theirs("sample_heun"), True),
    ]
    print(f"\n== Consistency (float64, {num} samples, reference-2d, k-diffusion karras n={n}): max |ours - theirs|")
    for label, x, their_label, y, same in pairs:
        diff = float((x - y).abs().max())
        agree = diff <= 1e-6 * max(float(y.abs().max()), 1.0)
        status = ("ok: same algorithm" if agree else "DIFFERS: bug?") if same else \
            ("agrees" if agree else "differs, as expected (a different scheme; see the docstring)")
        print(f"  diffcore {label:<22} vs k-diffusion {their_label:<24} {diff:.2e}  {status}")


# ---------------------------------------------------------------------------------------------
# Euler-Maruyama: our loop against a hand-written one; torchsde against native
# ---------------------------------------------------------------------------------------------


def hand_written_em(setup: Setup, num: int, steps: int, generator: torch.Generator | None = None) -> Tensor:
    """Euler-Maruyama on the reverse VP SDE as a user would write it: the VP ``beta`` inline, the
    ``gmm`` module as the score, no noise on the last step. With a ``generator``: ``torch.randn``
    prior and noise. Without: diffcore's counter-based noise, the same prior draw and step noise as
    ``euler_maruyama`` through the pipeline, so the two give the same samples up to float rounding
    and their time ratio is the framework's loop overhead alone."""
    model = setup.pipe.model
    params = setup.process.params
    beta_min, beta_max = params.beta_min, params.beta_max  # type: ignore[attr-defined]
    grid = torch.linspace(setup.process.T, setup.process.t_min, steps + 1, dtype=torch.float64).tolist()
    event = (setup.mixture.dim,)
    noise = None if generator is not None else NoiseSource.range(SEED, 0, num)

    def normal(step: int) -> Tensor:
        if noise is None:
            return torch.randn((num, *event), generator=generator)
        return noise.normal(event, step=step)

    if noise is None:
        x = torch.randn((num, *event), generator=generator)
    else:
        x = setup.process.prior_sample(noise, event, dtype=torch.float32)
    with torch.no_grad():
        for i in range(steps):
            t, h = grid[i], grid[i] - grid[i + 1]
            beta = beta_min + t * (beta_max - beta_min)
            score = model(x, torch.full((num,), t))
            x = x + (0.5 * beta * h) * x + (beta * h) * score
            if i < steps - 1:
                x = x + math.sqrt(beta * h) * normal(i)
    return x


def timed(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call of ``fn``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_loops(mixture: Mixture, *, num: int, steps: int, rounds: int) -> None:
    """One line of :func:`run_loop_timing`."""
    setup = Setup.build(mixture)
    pipe = setup.pipe.with_sampler("euler_maruyama", steps=steps)
    generator = torch.Generator().manual_seed(SEED)
    outputs: dict[str, Tensor] = {}

    def ours() -> None:
        outputs["ours"] = pipe.sample(num, seed=SEED).x

    def theirs() -> None:
        outputs["theirs"] = hand_written_em(setup, num, steps, generator)

    def same_noise() -> None:
        outputs["same_noise"] = hand_written_em(setup, num, steps)

    ours()  # warm-up
    theirs()
    same_noise()
    times: dict[str, list[float]] = {"ours": [], "theirs": [], "same_noise": []}
    for r in range(rounds):
        order: list[tuple[str, Callable[[], None]]] = [("ours", ours), ("theirs", theirs), ("same_noise", same_noise)]
        for key, fn in order if r % 2 == 0 else order[::-1]:
            times[key].append(timed(fn))
    ratio = statistics.median(a / b for a, b in zip(times["ours"], times["theirs"], strict=True))
    overhead = statistics.median(a / b for a, b in zip(times["ours"], times["same_noise"], strict=True))
    gap = float((outputs["ours"] - outputs["same_noise"]).abs().max())
    noise = NoiseSource.range(SEED, 0, num)
    noise_time = timed(lambda: [noise.normal((mixture.dim,), step=i) for i in range(steps)])
    ref = Reference(mixture, 2000)
    floor = math.sqrt(statistics.fmean(ref.energy_distance(ref.exact(num)) ** 2 for _ in range(3)))
    ed_ours, ed_theirs = ref.energy_distance(outputs["ours"]), ref.energy_distance(outputs["theirs"])
    verdict = "ok" if overhead <= LOOP_TARGET else "SLOWER than target"
    print(f"  {mixture.name:<13} {num:>5} samples: ours {statistics.median(times['ours']):.3f}s; hand-written with "
          f"the same counter-based noise {statistics.median(times['same_noise']):.3f}s, ratio {overhead:.3f} "
          f"({verdict}; max |difference| {gap:.1e}); hand-written with torch.randn "
          f"{statistics.median(times['theirs']):.3f}s, ratio {ratio:.3f} "
          f"(counter-based noise alone {noise_time:.3f}s); "
          f"ED/floor vs p_0: ours {ed_ours / floor:.1f}, hand-written {ed_theirs / floor:.1f}")


def run_loop_timing(*, num: int, steps: int, rounds: int) -> None:
    """``euler_maruyama`` through ``Pipeline.sample`` against :func:`hand_written_em`, interleaved
    (A B, B A, ...); prints the median per-round time ratio (ours over hand-written)."""
    print(f"\n== Euler-Maruyama: Pipeline.sample vs a hand-written loop ({steps} steps, {rounds} interleaved rounds, "
          f"median of the per-round time ratios ours / hand-written; target <= {LOOP_TARGET} against the same "
          "algorithm with the same noise)")
    time_loops(Mixture("reference-2d", REFERENCE_MIXTURE), num=num, steps=steps, rounds=rounds)
    time_loops(make_mixtures()[-1], num=num // 4, steps=steps, rounds=rounds)


def run_reverse_sde(*, num: int, step_counts: Sequence[int], ref_num: int) -> None:
    """The torchsde-backed ``reverse_sde`` (euler, srk) against the native ``euler_maruyama``
    (``denoise_last: false``, the same scheme as torchsde's euler): time, NFE and energy distance."""
    mixture = Mixture("reference-2d", REFERENCE_MIXTURE)
    setup = Setup.build(mixture)
    ref = Reference(mixture, ref_num)
    floor = math.sqrt(statistics.fmean(ref.energy_distance(ref.exact(num)) ** 2 for _ in range(3)))
    print(f"\n== reverse_sde (torchsde) vs native euler_maruyama ({mixture.name}, {num} samples, uniform grid; "
          f"ED floor {floor:.2e})")
    print(f"  {'sampler':<36} {'steps':>5} {'NFE':>5} {'sec':>7} {'ED':>10} {'ED/fl':>7}")
    configs: list[tuple[str, str, dict[str, Any]]] = [
        ("euler_maruyama (denoise_last=False)", "euler_maruyama", {"denoise_last": False}),
        ("reverse_sde euler", "reverse_sde", {"method": "euler"}),
        ("reverse_sde srk", "reverse_sde", {"method": "srk"}),
    ]
    for steps in step_counts:
        for label, name, params in configs:
            pipe = setup.pipe.with_sampler(name, steps=steps, **params)
            try:
                start = time.perf_counter()
                result = pipe.sample(num, seed=SEED)
                seconds = time.perf_counter() - start
            except Exception as exc:  # noqa: BLE001 - reported, not fatal
                print(f"  {label:<36} {steps:>5} CRASHED ({type(exc).__name__}: {exc})")
                continue
            ed = ref.energy_distance(result.x)
            print(f"  {label:<36} {steps:>5} {result.nfe:>5} {seconds:>7.2f} {ed:>10.2e} {ed / floor:>7.1f}")


# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="two mixtures, NFE 10 and 20, fewer samples")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--sections", nargs="+", default=["table", "consistency", "loop", "sde"],
                        choices=["table", "consistency", "loop", "sde"], help="what to run (default: all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    # k-diffusion's float32 Brownian tree asks for tb a rounding error past t1; torchsde warns each time.
    warnings.filterwarnings("ignore", message="Should have tb<=t1")
    check_energy_distance()
    kd, diffusers = load_k_diffusion(), load_diffusers()
    mixtures = make_mixtures()
    budgets: tuple[int, ...]
    if args.quick:
        mixtures = [m for m in mixtures if m.name in ("reference-2d", "scales-8d")]
        budgets, num, ref_num, replicates = (10, 20), 1000, 2000, 3
    else:
        budgets, num, ref_num, replicates = (5, 10, 20, 50), 4000, 5000, 5
    started = time.perf_counter()
    print(f"diffcore samplers vs peers on exact Gaussian-mixture scores (VP, seed {SEED}, "
          f"{torch.get_num_threads()} thread(s))")
    if "table" in args.sections:
        table = run_table(mixtures, budgets, num=num, ref_num=ref_num, replicates=replicates, kd=kd,
                          diffusers=diffusers)
        print_summary(table, mixtures, [b for b in budgets if b in SUMMARY_NFE])
        if table.failures:
            print("\n== Crashed (left out of the table)")
            for (library, label), error in table.failures.items():
                print(f"  {library} {label}: {error}")
    if "consistency" in args.sections and kd is not None:
        run_consistency(kd)
    if "loop" in args.sections:
        run_loop_timing(num=2048 if args.quick else 4096, steps=100 if args.quick else 200,
                        rounds=3 if args.quick else 7)
    if "sde" in args.sections:
        run_reverse_sde(num=num, step_counts=(50,) if args.quick else (100, 500), ref_num=ref_num)
    print(f"\ntotal {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
