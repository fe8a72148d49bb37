"""Shared set-up of the sampler benchmarks: the Gaussian mixtures, the VP pipeline with their exact
score, the prior draws, the exact reference draws and the quality metrics.

Every sampler benchmark integrates the VP SDE (``beta_min = 0.1``, ``beta_max = 20``, ``t_min = 1e-3``,
``T = 1``) of the ``gmm`` model, whose score of ``p_t`` is exact: differences between samplers are their
discretisation errors alone (plus Monte-Carlo noise, shown by the floor). All of them start from the
same prior draws: the pipeline's own, ``x_T = prior_std * noise.normal(stream="prior")`` with
``prior_std = sqrt(alpha_T^2 + sigma_T^2) = 1`` for VP (diffcore's prior for unit-variance data).

Metrics, against ``p_0`` (the data distribution), of samples of one mixture (:meth:`Reference.metrics`):

- ``ED``: the energy distance (the U-statistic :func:`diffcore.metrics.energy_distance`) to the
  reference's exact draws; ``ED/fl``: in units of the floor (:meth:`Reference.floor`), the RMS energy
  distance of fresh exact draws of the same size against the same reference (a value of order one is
  indistinguishable from exact sampling);
- ``wErr``: the largest absolute error of the mode weights (:func:`diffcore.metrics.mode_weights`);
- ``spread%``: for the samples assigned to each component, the relative error of the per-axis
  standard deviation against the component's, averaged (absolute) over axes and components;
  ``sbias%`` the same signed (negative: modes too narrow).

Also the command line shared by the sampler benchmarks (:func:`parse_args`) and the interleaved
timing of two loops shared with ``training.py`` (:func:`interleaved`).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from diffcore import Pipeline
from diffcore.metrics import assign_modes, energy_distance, mode_weights
from diffcore.noise import NoiseSource
from diffcore.process import LinearGaussianProcess, ScoreFn
from diffcore.testing.conformance import REFERENCE_MIXTURE, sample_mixture

SEED = 0
"""Seed of the prior draws and of every sampler's noise."""

RunFn = Callable[[int, Tensor], tuple[Tensor, int]]
"""``(size, x_T) -> (samples (B, D) float64, NFE)``: one sampler at a size (steps, grid points or
levels) from the VP prior draws ``x_T`` ``(B, D)``."""


# ---------------------------------------------------------------------------------------------
# Mixtures
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


REFERENCE_2D = Mixture("reference-2d", REFERENCE_MIXTURE)
"""The conformance suites' reference mixture (2-D, three modes)."""


def make_mixtures() -> list[Mixture]:
    """The mixtures of the quality table: the conformance reference, very unequal weights, per-axis
    scales of 1e-2 and 1e2, and 64 dimensions."""
    gen = torch.Generator().manual_seed(1)
    means_64 = (1.5 * torch.randn(4, 64, generator=gen, dtype=torch.float64)).round(decimals=3)
    variances_64 = (0.3 + 1.2 * torch.rand(4, 64, generator=gen, dtype=torch.float64)).round(decimals=3)
    small, large = 1e-2, 1e2
    return [
        REFERENCE_2D,
        Mixture("unequal-2d", {"weights": [0.05, 0.95], "means": [[-4.0, -3.0], [3.0, 2.0]],
                               "variances": [[0.5, 0.8], [1.0, 0.7]]}),
        Mixture("scales-8d", {"weights": [0.4, 0.6], "means": [[-3.0] * 8, [3.0] * 8],
                              "variances": [[small, large] * 4, [large, small] * 4]}),
        Mixture("gmm-64d", {"weights": [0.1, 0.2, 0.3, 0.4], "means": means_64.tolist(),
                            "variances": variances_64.tolist()}),
    ]


# ---------------------------------------------------------------------------------------------
# Reference draws and metrics
# ---------------------------------------------------------------------------------------------


def rms(values: Iterable[float]) -> float:
    """Root mean square of ``values``."""
    return math.sqrt(statistics.fmean(v**2 for v in values))


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
        self.log_w, self.means, self.variances = mixture.tensors()

    def energy_distance(self, x: Tensor) -> float:
        """:func:`diffcore.metrics.energy_distance` of samples ``x`` ``(n, D)`` against the reference draws."""
        return energy_distance(x, self.y)

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

    def floor(self, num: int, replicates: int = 3) -> float:
        """The RMS energy distance of ``replicates`` sets of ``num`` fresh exact draws: what exact
        sampling scores."""
        return rms(self.energy_distance(self.exact(num)) for _ in range(replicates))


# ---------------------------------------------------------------------------------------------
# The pipeline of one mixture
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
    def build(cls, mixture: Mixture, process_type: str = "vp") -> Setup:
        """The pipeline of ``mixture`` under the process ``process_type`` with its default parameters
        (VP, the sampler benchmarks' process, unless told; ``likelihood.py`` also takes ve and subvp)."""
        pipe = Pipeline.from_spec({"process": {"type": process_type}, "model": {"type": "gmm", **mixture.params},
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


# ---------------------------------------------------------------------------------------------
# Timing and the command line
# ---------------------------------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call of ``fn``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(measures: Sequence[Callable[[], float]], rounds: int) -> list[list[float]]:
    """``rounds`` rounds of every measurement, in order on even rounds and reversed on odd ones
    (A B, B A, A B, ...) so that drifting machine load hits all alike; one list of values per measurement."""
    values: list[list[float]] = [[] for _ in measures]
    order = list(enumerate(measures))
    for r in range(rounds):
        for i, measure in order if r % 2 == 0 else order[::-1]:
            values[i].append(measure())
    return values


def parse_args(description: str | None, quick_help: str, argv: Sequence[str] | None = None,
               extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """The options every sampler benchmark takes (``--quick``, ``--threads``; ``extra`` adds more),
    applied: torch's thread count, and the torchsde warning filter."""
    summary = " ".join(description.split("\n\n")[0].split()) if description else None  # the first paragraph
    parser = argparse.ArgumentParser(description=summary)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    # k-diffusion's float32 Brownian tree asks for tb a rounding error past t1; torchsde warns each time.
    warnings.filterwarnings("ignore", message="Should have tb<=t1")
    return args


def run_script(description: str | None, quick_help: str, section: Callable[..., None],
               argv: Sequence[str] | None = None) -> None:
    """The ``main`` of a one-section script: the options (:func:`parse_args`), ``section(quick=...)``,
    then the total time."""
    args = parse_args(description, quick_help, argv)
    started = time.perf_counter()
    section(quick=args.quick)
    print(f"\ntotal {time.perf_counter() - started:.0f}s")
