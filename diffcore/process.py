"""Forward processes: the SDE ``dx = f(x, t) dt + g(t) dw`` that turns data into noise.

Seeds: ``000_a7d38e14092c016d.txt`` (forward/reverse SDE, VE and VP examples) and
``001_2e13ba2d738afccc.txt`` (the score-SDE framework, the reverse SDE and the probability-flow ODE).

Shapes throughout: ``x`` is ``(batch, *event)``, ``t`` is ``(batch,)`` (a float tensor on the
device of ``x``), per-time coefficients are returned as ``(batch,)``.
"""

from __future__ import annotations

import abc
import inspect
import math
import sys
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from pydantic import Field, model_validator
from torch import Tensor

from diffcore.component import Component, Params
from diffcore.errors import CompatibilityError, SpecError
from diffcore.limits import MAX_HALF_LOG_SNR, MAX_PRIOR_HALF_LOG_SNR, MIN_HALF_LOG_SNR
from diffcore.messages import format_problems
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

    Validation runs, in order: ``t_min < T``; :meth:`check`, a subclass's checks of its own fields
    (override it rather than adding a validator, so that it runs first); and, for the Params of a
    :class:`LinearGaussianProcess`, the range of its half log-SNR (:func:`log_snr_problem`).
    """

    t_min: float = Field(1e-3, gt=0, description="Smallest time samplers reach (score_sde's eps).")
    T: float = Field(1.0, gt=0, description="Terminal time where the prior is (approximately) reached.")

    @model_validator(mode="after")
    def _valid(self) -> ProcessParams:
        if self.t_min >= self.T:
            raise ValueError(f"t_min ({self.t_min}) must be smaller than T ({self.T})")
        self.check()
        process_class = _bound_process(type(self))
        if process_class is not None and not inspect.isabstract(process_class):
            problem = log_snr_problem(process_class(self))
            if problem is not None:
                raise ValueError(problem)
        return self

    def check(self) -> None:
        """Checks of a subclass's own fields (e.g. their order): raise ``ValueError`` with the message.
        Runs after ``t_min < T`` and before the log-SNR range, which needs every field valid."""


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

    noise_field: ClassVar[str] = "T"
    """The parameter that sets the noise at ``T`` (larger: more noise; ``beta_max``, ``sigma_max``),
    named with ``T`` and their largest allowed values when ``lambda(T)`` is below the range."""
    min_noise_field: ClassVar[str | None] = None
    """The parameter that sets the noise at ``t_min`` (larger: more noise; ``beta_min``, ``sigma_min``),
    named with ``t_min`` and their smallest allowed values when ``lambda(t_min)`` is above the range."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        params = cls.__dict__.get("Params")
        if params is not None and params is not ProcessParams:
            _PROCESS_OF.setdefault(params, cls)  # the first class to declare a Params checks it

    def __init__(self, params: Params | None = None, /, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        if not _IN_CHECK.get() and _bound_process(type(self.params)) is not type(self):
            # not checked by its Params (a subclass reusing its parent's): check here
            problem = log_snr_problem(self)
            if problem is not None:
                raise SpecError(format_problems([("", problem)], getattr(self, "name", type(self).__name__),
                                                "parameters"), [("", problem)])

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


_IN_CHECK: ContextVar[bool] = ContextVar("diffcore_log_snr_check", default=False)
"""Set while :func:`log_snr_problem` builds candidate processes, which it checks itself."""
_PROCESS_OF: dict[type[Params], type[LinearGaussianProcess]] = {}
"""The linear-Gaussian process class that declared each Params class (its log-SNR range is checked
when the Params are validated)."""


def _bound_process(params_class: type[Params]) -> type[LinearGaussianProcess] | None:
    """The process class whose Params ``params_class`` is (or derives from, as a spec's model does)."""
    for klass in params_class.__mro__:
        if klass in _PROCESS_OF:
            return _PROCESS_OF[klass]
    return None


def half_log_snr_at(process: LinearGaussianProcess, t: float) -> float:
    """``lambda(t) = log(alpha(t) / sigma(t))`` in float64; NaN where it, ``alpha(t)`` or ``sigma(t)``
    cannot be evaluated (an error, an infinite ``lambda``, a NaN or negative scale)."""
    try:
        with torch.no_grad():
            tt = torch.tensor([t], dtype=torch.float64, device="cpu")  # whatever the default device
            values = [float(process.half_log_snr(tt)), float(process.alpha(tt)), float(process.sigma(tt))]
    except (ArithmeticError, ValueError, RuntimeError):
        return math.nan
    lam, scales = values[0], values[1:]
    return lam if math.isfinite(lam) and all(v >= 0 for v in scales) else math.nan  # (NaN >= 0 is False)


def log_snr_problem(process: LinearGaussianProcess) -> str | None:
    """Why the half log-SNR of ``process`` leaves the range every sampler handles, or ``None``.

    Samplers work in float32 with ``alpha``, ``sigma`` and ``lambda = log(alpha / sigma)`` (Kingma et
    al. 2021, "Variational Diffusion Models"; Lu et al. 2022, DPM-Solver): they need ``lambda`` finite
    and decreasing, with :data:`~diffcore.limits.MIN_HALF_LOG_SNR` ``<= lambda(T) < lambda(t_min) <=``
    :data:`~diffcore.limits.MAX_HALF_LOG_SNR`. The message names the parameters that move the
    offending end and, for each, its limit with the other parameters as given.
    """
    token = _IN_CHECK.set(True)
    try:
        return _problem(process)
    finally:
        _IN_CHECK.reset(token)


def _problem(process: LinearGaussianProcess) -> str | None:
    lam_0, lam_T = half_log_snr_at(process, process.t_min), half_log_snr_at(process, process.T)
    name = getattr(process, "name", type(process).__name__)
    problems = []
    too_noisy = not math.isfinite(lam_T) or lam_T < MIN_HALF_LOG_SNR
    if too_noisy:
        problems.append(f"{_lambda_text('T', process.T, lam_T)}: {name} adds more noise than the samplers "
                        f"resolve in float32 (lambda(T) must be at least {MIN_HALF_LOG_SNR:g}); "
                        + _fixes(process, [process.noise_field, "T"], "T", MIN_HALF_LOG_SNR, up=False))
    if math.isfinite(lam_T) and lam_T > MAX_PRIOR_HALF_LOG_SNR:
        problems.append(f"{_lambda_text('T', process.T, lam_T)}: {name} keeps more signal than noise at T, so "
                        "samplers, which start from its prior there, would return (nearly) the prior's noise "
                        f"(lambda(T) must be at most {MAX_PRIOR_HALF_LOG_SNR:g}); "
                        + _fixes(process, [process.noise_field, "T"], "T", MAX_PRIOR_HALF_LOG_SNR, up=True,
                                 at_most=True))
    if lam_0 > MAX_HALF_LOG_SNR or (not math.isfinite(lam_0) and not too_noisy):
        problems.append(f"{_lambda_text('t_min', process.t_min, lam_0)}: {name} leaves less noise at t_min than "
                        f"the samplers resolve in float32 (lambda(t_min) must be at most {MAX_HALF_LOG_SNR:g}); "
                        + _fixes(process, ["t_min", process.min_noise_field], "t_min", MAX_HALF_LOG_SNR, up=True))
    if not problems and lam_0 <= lam_T:
        problems.append(f"the half log-SNR must fall from t_min to T (the process must add noise), but "
                        f"lambda(t_min) = {lam_0:.6g} and lambda(T) = {lam_T:.6g}; widen [t_min, T]")
    return "; and ".join(problems) or None


def _lambda_text(where: str, t: float, lam: float) -> str:
    value = f"is {lam:.4g}" if math.isfinite(lam) else "overflows"
    return f"the half log-SNR lambda = log(alpha / sigma) at {where} = {t:g} {value}"


def _fixes(process: LinearGaussianProcess, fields: list[str | None], end: str, bound: float, *, up: bool,
           at_most: bool | None = None) -> str:
    """``raise t_min to at least 4.25e-17 or raise beta_min to at least ...``: each of ``fields`` (the
    parameters of ``process`` that move ``lambda`` at ``end`` towards ``bound`` when raised, ``up``, or
    lowered) with its limit, the other parameters as given, where one exists."""
    verb, side = ("raise", "at least") if up else ("lower", "at most")
    names = [f for f in dict.fromkeys(fields) if f is not None and f in type(process.params).model_fields]
    texts = []
    for field in names:
        limit = _field_limit(process, field, end, bound, up=up, at_most=at_most)
        texts.append(f"{verb} {field}" + (f" to {side} {limit:.3g}" if limit is not None else ""))
    return " or ".join(texts)


def _field_limit(process: LinearGaussianProcess, field: str, end: str, bound: float, *, up: bool,
                 at_most: bool | None = None) -> float | None:
    """The value of ``field`` (a positive parameter) at which ``lambda`` at ``end`` (``"T"`` or
    ``"t_min"``) reaches ``bound`` when ``field`` is raised (``up``) or lowered, the other parameters
    as given, rounded to 3 digits on the side within range; ``bound`` is an upper bound when
    ``at_most`` (default: at ``t_min``) and a lower one otherwise (default: at ``T``). Found by
    stepping ``field`` by factors of e^8, then of 2, until it is within range, then bisection in
    ``log(field)``; ``None`` when no valid value within range exists."""

    def inside(log_value: float) -> bool:
        if not _LOG_FLOAT_MIN <= log_value <= _LOG_FLOAT_MAX:
            return False
        params = process.params.model_copy(update={field: math.exp(log_value)})
        try:
            params.check()
        except ValueError:
            return False
        if params.t_min >= params.T:
            return False
        lam = half_log_snr_at(type(process)(params), params.t_min if end == "t_min" else params.T)
        return math.isfinite(lam) and (lam <= bound if upper else lam >= bound)

    upper = end == "t_min" if at_most is None else at_most

    start = math.log(getattr(process.params, field))
    for factor in (8.0, math.log(2.0)):  # coarse, then fine: a window narrower than e^8 is found too
        step = factor if up else -factor
        outside = start
        while _LOG_FLOAT_MIN <= outside + step <= _LOG_FLOAT_MAX:  # across the float range at most
            if inside(outside + step):
                within = outside + step
                for _ in range(48):
                    mid = 0.5 * (outside + within)
                    outside, within = (outside, mid) if inside(mid) else (mid, within)
                return _round_within(math.exp(within), up)
            outside += step
    return None


_LOG_FLOAT_MAX = math.log(sys.float_info.max)
_LOG_FLOAT_MIN = math.log(5e-324)  # the smallest positive (subnormal) float


def _round_within(value: float, up: bool) -> float:
    """``value`` to 3 significant digits, rounded away from the out-of-range side."""
    scale = 10.0 ** (math.floor(math.log10(value)) - 2)
    return (math.ceil(value / scale) if up else math.floor(value / scale)) * scale


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
