"""Partial-range sampling: start any sampler at a time ``t0 < T`` from given states.

SDEdit (Meng et al. 2022, "SDEdit: Guided Image Synthesis and Editing with Stochastic Differential
Equations", Sec. 3) noises data to an intermediate time ``t0`` with the forward marginal
``x_{t0} = alpha(t0) x_0 + sigma(t0) z`` and runs the reverse-time sampler from ``t0`` instead of from
the prior at ``T``; decoding the latents of :func:`diffcore.encoding.encode` at an intermediate time is
the same start with a deterministic sampler.

Every sampler builds its time grid from ``process.T`` to ``process.t_min``. :func:`starting_at` gives
it a *view* of the process whose ``T`` is ``t0`` and which is the original process in everything else,
so every sampler, built-in or third-party, runs from ``t0`` without a change to its code:

- the view is an instance of a subclass of the process's own class, so ``isinstance`` checks
  (``LinearGaussianProcess``, ``VPSDE``...), the capabilities and the compatibility checks see the
  original process;
- every attribute but ``T`` (and ``linear_gaussian``, which returns the view itself where the process
  returns itself) is looked up on the original process: ``params`` (with the original ``params.T``),
  ``alpha``, ``sigma``, ``drift``, ``diffusion``, ``t_from_half_log_snr``, ``reverse``... are the
  original's methods *bound to the original*, so a process whose formulas read ``self.T`` or
  ``self.params.T`` computes exactly what it computes unviewed. Only what a caller reads as the start
  time changes, never the process's math.

The alternative, a ``t_start`` argument to :meth:`~diffcore.sampler.Sampler.run`, would need every
sampler (and every third-party one) to be rewritten; a copy of the process with ``params.T = t0`` would
change the math of processes whose formulas use ``T`` (a schedule normalised to ``[0, T]``, say) and
its prior, and would fail the parameter checks (``log_snr_problem``) that the original passed.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar, cast

import torch
from torch import Tensor

from diffcore.errors import UsageError
from diffcore.messages import type_name
from diffcore.noise import NoiseSource
from diffcore.process import ForwardProcess, LinearGaussianProcess, require_linear_gaussian

P = TypeVar("P", bound=ForwardProcess)

FORWARD_STREAM = "forward"
"""The :class:`~diffcore.noise.NoiseSource` stream of :func:`noise_to` (samplers draw from ``"step"``
and the prior from ``"prior"``, so the same seed gives independent noise to each)."""

_OWN = frozenset({"T", "linear_gaussian", "original", "_view_original", "_view_t0", "__class__", "__dict__",
                  "__reduce__", "__reduce_ex__", "__repr__", "__setattr__", "__delattr__"})
"""Attributes a view answers itself; everything else is the original process's."""


class _StartView:
    """The mixin of :func:`starting_at`'s views (module docstring). Never instantiated directly."""

    _view_original: ForwardProcess
    _view_t0: float

    def __getattribute__(self, name: str) -> Any:
        if name in _OWN:
            return object.__getattribute__(self, name)
        return getattr(object.__getattribute__(self, "_view_original"), name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"a process started at t = {self._view_t0:g} is a read-only view; set {name!r} on "
                             "its `original`")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"a process started at t = {self._view_t0:g} is a read-only view")

    @property
    def T(self) -> float:
        """The start time ``t0`` (what samplers read as the start of their grid)."""
        return self._view_t0

    @property
    def original(self) -> ForwardProcess:
        """The viewed process (whose ``T`` is ``params.T``)."""
        return self._view_original

    @property
    def linear_gaussian(self) -> LinearGaussianProcess | None:
        """The view itself where the original is its own linear-Gaussian form (so the typed process a
        sampler sets up its loop with starts at ``t0`` too), a view of the original's otherwise."""
        lg = self._view_original.linear_gaussian
        if lg is None:
            return None
        if lg is self._view_original:
            return cast(LinearGaussianProcess, self)
        return starting_at(lg, self._view_t0)

    def __repr__(self) -> str:
        return f"{self._view_original!r} started at t={self._view_t0:g}"

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return starting_at, (self._view_original, self._view_t0)


_VIEW_CLASSES: dict[type, type] = {}


def _view_class(cls: type[ForwardProcess]) -> type:
    """The view class of ``cls`` (made once): ``_StartView`` first, then ``cls``, under ``cls``'s name
    (messages naming the process's class read as they do unviewed)."""
    view = _VIEW_CLASSES.get(cls)
    if view is None:
        def __new__(klass: type, *args: Any, **kwargs: Any) -> Any:
            # ``type(view)(params)`` (as in the process's own checks) builds a plain process of ``cls``
            return cls(*args, **kwargs)

        namespace = {"__module__": cls.__module__, "__qualname__": f"{cls.__qualname__}[started]", "__new__": __new__}
        meta: Any = type(cls)  # ABCMeta, or a process's own metaclass
        view = meta(cls.__name__, (_StartView, cls), namespace)
        _VIEW_CLASSES[cls] = view
    return view


def check_start_time(process: ForwardProcess, t_start: float) -> float:
    """``t_start`` as a float if ``t_min < t_start <= T`` of ``process``, else a
    :class:`~diffcore.errors.UsageError` naming the interval and the fix."""
    if isinstance(t_start, bool) or not isinstance(t_start, int | float) or not math.isfinite(t_start):
        raise UsageError(f"t_start must be a finite number, the time the start states are at; got {t_start!r}")
    t0 = float(t_start)
    if not process.t_min < t0 <= process.T:
        name = getattr(process, "name", type(process).__name__)
        raise UsageError(f"t_start = {t0:g} is outside (t_min, T] = ({process.t_min:g}, {process.T:g}] of process "
                         f"{name!r}; give a start time after t_min and at most T (t_start = T, or no t_start, "
                         "starts from the prior's time)")
    return t0


def starting_at(process: P, t_start: float) -> P:
    """``process`` as samplers see it when they start at ``t_start`` instead of ``process.T``.

    ``t_min < t_start <= T`` (:class:`~diffcore.errors.UsageError` otherwise). At ``t_start = T`` this is
    ``process`` itself; otherwise a read-only view (module docstring) whose ``T`` is ``t_start`` and
    which is ``process`` in everything else: pass it to any sampler's
    :meth:`~diffcore.sampler.Sampler.sample` with start states ``x`` ``(B, *event)`` at ``t_start``::

        x0 = sampler.sample(score_fn, starting_at(process, 0.5), x_half, noise).x

    A view of a view starts the original process at ``t_start``.
    """
    base = cast(P, original_process(process))
    t0 = check_start_time(base, t_start)
    if t0 == base.T:
        return base
    view: Any = object.__new__(_view_class(type(base)))
    object.__setattr__(view, "_view_original", base)
    object.__setattr__(view, "_view_t0", t0)
    return cast(P, view)


def original_process(process: ForwardProcess) -> ForwardProcess:
    """The process a :func:`starting_at` view shows (``process`` itself when it is not a view)."""
    return cast(_StartView, process).original if isinstance(process, _StartView) else process


def noise_to(process: ForwardProcess, x0: Tensor, t: float, *, seed: int, start: int = 0) -> Tensor:
    """Draw ``x_t ~ p(x_t | x_0) = N(alpha(t) x0, sigma(t)^2 I)``, the forward marginal of a linear-Gaussian
    process at time ``t`` (SDEdit's first step, Meng et al. 2022, Sec. 3), for data ``x0`` ``(n, *event)``.

    ``t_min <= t <= T``. The noise of row ``r`` is ``NoiseSource(seed, start + r)`` (stream
    :data:`FORWARD_STREAM`): reproducible and the same whatever the chunking, like the samplers'.
    Returns ``(n, *event)`` in ``x0``'s dtype and device. Raises
    :class:`~diffcore.errors.CompatibilityError` for a process that is not linear-Gaussian, and
    :class:`~diffcore.errors.UsageError` for ``t`` outside ``[t_min, T]`` or data without rows.
    """
    lg = require_linear_gaussian(process, "noising data with the forward marginal (noise_to)")
    if not isinstance(x0, Tensor) or not x0.is_floating_point() or x0.ndim < 2 or x0.shape[0] == 0:
        what = f"shape {tuple(x0.shape)}, {x0.dtype}" if isinstance(x0, Tensor) else type_name(x0)
        raise UsageError(f"the data must be a floating-point tensor (n, *event) with at least one row; got {what}")
    if isinstance(t, bool) or not isinstance(t, int | float) or not lg.t_min <= t <= lg.T:
        raise UsageError(f"t = {t!r} must be a time within [t_min, T] = [{lg.t_min:g}, {lg.T:g}]")
    tt = torch.tensor([float(t)], dtype=torch.float64)
    alpha, sigma = float(lg.alpha(tt)), float(lg.sigma(tt))
    noise = NoiseSource.range(seed, start, start + x0.shape[0], x0.device)
    z = noise.normal(tuple(x0.shape[1:]), step=0, stream=FORWARD_STREAM, dtype=x0.dtype)
    return alpha * x0 + sigma * z
