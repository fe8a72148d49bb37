"""The peer libraries of the sampler benchmarks, k-diffusion and diffusers, driven by the exact
score of :class:`common.Setup`: their loaders (each ``None``, with a notice, when not installed)
and their samplers as :class:`common.Candidate` rows.

How each library sees the score (``score(x, t)`` is the ``gmm`` model bound to the VP process):

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

Time grids are each library's own defaults: k-diffusion's are ``karras`` and diffusers' are
``linspace`` in the training timesteps (about uniform in ``t``).

Install the peers in a separate virtual environment that also holds diffcore::

    python3 -m venv .bench-venv && . .bench-venv/bin/activate
    pip install torch==2.13.0 && pip install -r requirements-dev.txt
    pip install diffusers && pip install --no-deps k-diffusion && pip install scipy torchsde tqdm torchdiffeq

Without them the sections that need them print a notice and run without their rows (the quality
table) or are skipped (the consistency check).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import sys
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from common import SEED, Candidate, Setup
from torch import Tensor

# ---------------------------------------------------------------------------------------------
# k-diffusion
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# diffusers
# ---------------------------------------------------------------------------------------------


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
