"""Forward processes: the SDE ``dx = f(x, t) dt + g(t) dw`` that turns data into noise.

Seeds: ``000_a7d38e14092c016d.txt`` (forward/reverse SDE, VE and VP examples) and
``001_2e13ba2d738afccc.txt`` (the score-SDE framework, the reverse SDE and the probability-flow ODE).

Shapes throughout: ``x`` is ``(batch, *event)``, ``t`` is ``(batch,)`` (a float tensor on the
device of ``x``), per-time coefficients are returned as ``(batch,)``.
"""

from __future__ import annotations

import abc
import math
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from pydantic import Field, model_validator
from torch import Tensor

from diffcore.component import Component, Params
from diffcore.errors import CompatibilityError
from diffcore.utils import bcast

if TYPE_CHECKING:
    from diffcore.noise import NoiseSource

LINEAR_GAUSSIAN = "linear_gaussian"
"""Capability of processes whose marginal is ``x_t = alpha(t) x_0 + sigma(t) z``."""


class ScoreFn(Protocol):
    """A score function ``(x, t) -> grad_x log p_t(x)``, shapes ``(B, *event), (B,) -> (B, *event)``."""

    def __call__(self, x: Tensor, t: Tensor) -> Tensor: ...


class ProcessParams(Params):
    """Parameters every process has: the time interval ``[t_min, T]`` samplers integrate over.

    ``t_min`` (score_sde's ``eps``) keeps samplers away from ``t = 0`` where the score of data
    without noise is singular.
    """

    t_min: float = Field(1e-3, gt=0, description="Smallest time samplers reach (score_sde's eps).")
    T: float = Field(1.0, gt=0, description="Terminal time where the prior is (approximately) reached.")

    @model_validator(mode="after")
    def _t_min_below_T(self) -> ProcessParams:
        if self.t_min >= self.T:
            raise ValueError(f"t_min ({self.t_min}) must be smaller than T ({self.T})")
        return self


class ForwardProcess(Component, abc.ABC):
    """A forward (noising) SDE ``dx = f(x, t) dt + g(t) dw`` on ``[0, T]``.

    The contract for implementers:

    - :meth:`drift` ``f(x, t)``: ``(B, *event), (B,) -> (B, *event)``;
    - :meth:`diffusion` ``g(t)``: ``(B,) -> (B,)`` (scalar diffusion, as in every seed process);
    - :meth:`prior_sample` / :meth:`prior_log_prob`: the distribution samplers start from at ``T``.

    The reverse-time SDE and the probability-flow ODE (seed 001) are derived here, generically, from
    ``f``, ``g`` and a score: :meth:`reverse`.
    """

    Params: ClassVar[type[Params]] = ProcessParams
    params: ProcessParams

    @property
    def T(self) -> float:
        return self.params.T

    @property
    def t_min(self) -> float:
        return self.params.t_min

    @abc.abstractmethod
    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """Drift ``f(x, t)``, shape of ``x``."""

    @abc.abstractmethod
    def diffusion(self, t: Tensor) -> Tensor:
        """Diffusion coefficient ``g(t)``, shape ``(B,)``."""

    @abc.abstractmethod
    def prior_sample(self, noise: NoiseSource, event_shape: tuple[int, ...], *, dtype: torch.dtype) -> Tensor:
        """Draw ``(B, *event_shape)`` samples of the prior at ``T`` from ``noise`` (its stream ``prior``)."""

    @abc.abstractmethod
    def prior_log_prob(self, x: Tensor) -> Tensor:
        """Log-density of the prior at ``x``, summed over the event dimensions, shape ``(B,)``."""

    @property
    def linear_gaussian(self) -> LinearGaussianProcess | None:
        """This process with its marginal ``alpha``, ``sigma`` and ``lambda`` when it is linear-Gaussian
        (declares :data:`LINEAR_GAUSSIAN`), else ``None``: the typed way to reach them, set up once
        before a sampler's loop (see :func:`require_linear_gaussian`)."""
        return None

    def reverse(self, score_fn: ScoreFn, *, probability_flow: bool = False) -> ReverseProcess:
        """The reverse-time SDE, or with ``probability_flow=True`` the probability-flow ODE."""
        return ReverseProcess(self, score_fn, probability_flow=probability_flow)


class LinearGaussianProcess(ForwardProcess):
    """A process whose marginal given the data is ``x_t = alpha(t) x_0 + sigma(t) z``, ``z ~ N(0, I)``.

    Implementers must give :meth:`alpha` and :meth:`sigma`; everything else has a generic default:

    - the SDE coefficients follow from the marginal (seed 001, and Kingma et al. 2021, eq. 28):
      ``f(t) = d log alpha / dt`` and ``g(t)^2 = d sigma^2 / dt - 2 f(t) sigma^2``, computed here by
      autograd (built-in processes override them with closed forms);
    - ``half_log_snr(t) = log(alpha / sigma)`` (DPM-Solver's lambda) and its inverse by bisection;
    - the prior is the marginal at ``T`` of unit-variance data: ``N(0, (alpha(T)^2 + sigma(T)^2) I)``.
    """

    @classmethod
    def capabilities(cls) -> frozenset[str]:
        return frozenset({LINEAR_GAUSSIAN})

    @property
    def linear_gaussian(self) -> LinearGaussianProcess:
        return self

    @abc.abstractmethod
    def alpha(self, t: Tensor) -> Tensor:
        """Signal scale ``alpha(t)``, shape ``(B,)``."""

    @abc.abstractmethod
    def sigma(self, t: Tensor) -> Tensor:
        """Noise scale ``sigma(t)``, shape ``(B,)``."""

    def half_log_snr(self, t: Tensor) -> Tensor:
        """``lambda(t) = log(alpha(t) / sigma(t))``, strictly decreasing in ``t``, shape ``(B,)``."""
        return torch.log(self.alpha(t)) - torch.log(self.sigma(t))

    def log_snr(self, t: Tensor) -> Tensor:
        """``log(alpha^2 / sigma^2) = 2 lambda(t)``, shape ``(B,)``."""
        return 2.0 * self.half_log_snr(t)

    def t_from_half_log_snr(self, lam: Tensor) -> Tensor:
        """Inverse of :meth:`half_log_snr` on ``[t_min, T]`` (bisection; override with a closed form)."""
        lo = torch.full_like(lam, self.t_min)
        hi = torch.full_like(lam, self.T)
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            above = self.half_log_snr(mid) > lam  # lambda decreases: the root lies later
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    def marginal(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean ``alpha(t) x0`` (shape of ``x0``) and std ``sigma(t)`` (``(B,)``) of ``p(x_t | x_0)``."""
        return bcast(self.alpha(t), x0) * x0, self.sigma(t)

    def drift_coef(self, t: Tensor) -> Tensor:
        """``f(t)`` with ``f(x, t) = f(t) x``, shape ``(B,)``; default ``d log alpha / dt`` by autograd."""
        return _time_derivative(lambda s: torch.log(self.alpha(s)), t)

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        return bcast(self.drift_coef(t), x) * x

    def diffusion(self, t: Tensor) -> Tensor:
        dvar = _time_derivative(lambda s: self.sigma(s) ** 2, t)
        g2 = dvar - 2.0 * self.drift_coef(t) * self.sigma(t) ** 2
        return torch.sqrt(torch.clamp(g2, min=0.0))

    def prior_std(self) -> float:
        """Std of the prior ``N(0, prior_std^2 I)``: the marginal at ``T`` of unit-variance data."""
        t = torch.tensor([self.T], dtype=torch.float64)
        return math.sqrt(float(self.alpha(t) ** 2 + self.sigma(t) ** 2))

    def prior_sample(self, noise: NoiseSource, event_shape: tuple[int, ...], *, dtype: torch.dtype) -> Tensor:
        return self.prior_std() * noise.normal(event_shape, step=-1, stream="prior", dtype=dtype)

    def prior_log_prob(self, x: Tensor) -> Tensor:
        std = self.prior_std()
        flat = x.reshape(x.shape[0], -1)
        d = flat.shape[1]
        return -0.5 * (flat / std).pow(2).sum(1) - d * (math.log(std) + 0.5 * math.log(2 * math.pi))


def require_linear_gaussian(process: ForwardProcess, who: str) -> LinearGaussianProcess:
    """``process`` as a :class:`LinearGaussianProcess` (``alpha``, ``sigma``, ``lambda``), or a
    :class:`~diffcore.errors.CompatibilityError` saying that ``who`` needs one.

    Components that need these declare ``requires = {LINEAR_GAUSSIAN}`` (checked when they are
    assembled) and call this once, before their loop, to get the typed process."""
    lg = process.linear_gaussian
    if lg is None:
        raise CompatibilityError(f"{who} needs a linear-Gaussian process (alpha, sigma); "
                                 f"process {getattr(process, 'name', type(process).__name__)!r} is not one")
    return lg


class ReverseProcess:
    """The reverse-time SDE ``dx = [f - g^2 s] dt + g dw_bar`` or, with ``probability_flow``,
    the ODE ``dx = [f - g^2 s / 2] dt`` (seed 001, "Probability flow ODE"), integrated from ``T``
    down to ``t_min``. ``drift`` is the coefficient of ``dt`` with time running forward, so an
    Euler step from ``t`` to ``t - h`` is ``x - drift(x, t) h``.
    """

    def __init__(self, process: ForwardProcess, score_fn: ScoreFn, *, probability_flow: bool) -> None:
        self.process = process
        self.score_fn = score_fn
        self.probability_flow = probability_flow

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        g2 = self.process.diffusion(t) ** 2
        weight = 0.5 if self.probability_flow else 1.0
        return self.process.drift(x, t) - bcast(weight * g2, x) * self.score_fn(x, t)

    def diffusion(self, t: Tensor) -> Tensor:
        """``g(t)`` for the SDE, zeros for the probability-flow ODE; shape ``(B,)``."""
        g = self.process.diffusion(t)
        return torch.zeros_like(g) if self.probability_flow else g


def _time_derivative(fn: Any, t: Tensor) -> Tensor:
    """Elementwise ``d fn(t) / dt`` for a function acting elementwise on ``t`` of shape ``(B,)``."""
    with torch.enable_grad():
        s = t.detach().requires_grad_(True)
        out = fn(s)
        if not out.requires_grad:  # constant in t, e.g. alpha(t) = 1
            return torch.zeros_like(t)
        (grad,) = torch.autograd.grad(out.sum(), s)
    return grad.detach()
