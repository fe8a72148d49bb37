"""The reverse-time SDE solved with torchsde (Li et al. 2020; Kidger et al. 2021).

The reverse SDE of ``dx = f(x, t) dt + g(t) dw`` (Anderson 1982; Song et al. 2021, eq. 6) runs from
``T`` down to ``t_min``: ``dx = [f - g^2 s] dt + g dw_bar``. torchsde integrates forward in its time
variable, so it solves the same SDE in ``tau = T - t`` (from 0 to ``T - t_min``)::

    dx = -[f(x, T - tau) - g(T - tau)^2 s(x, T - tau)] dtau + g(T - tau) dW_tau,

with ``W_tau`` a standard Brownian motion (the time-reversed ``w_bar``). The diffusion ``g`` depends on
time alone, so the noise is additive; it is declared to torchsde as ``diagonal`` noise (``g`` returned
as ``(B, D)``, never a ``(B, D, D)`` matrix), and for additive noise the Ito and Stratonovich
readings of the SDE are the same equation (the Ito-Stratonovich correction ``g dg/dx / 2`` vanishes),
so ``reversible_heun``, a Stratonovich solver, solves it as declared ``stratonovich``; the others as
``ito``. Any data shape ``(B, *event)`` is flattened to ``(B, D)`` for torchsde and back.
"""

from __future__ import annotations

import bisect
import math
import sys
from typing import Any, Literal

import torch
import torchsde
from pydantic import Field, model_validator
from torch import Tensor

from diffcore.grids import GridKind, GridParams, time_grid
from diffcore.limits import MAX_STEPS, Steps, Tolerance
from diffcore.noise import NoiseSource
from diffcore.process import ForwardProcess, ReverseProcess, ScoreFn
from diffcore.sampler import Callback, Sampler

Method = Literal["euler", "milstein", "srk", "reversible_heun"]
STRATONOVICH: frozenset[str] = frozenset({"reversible_heun"})
LEVY_AREA = {"srk": "space-time"}
"""The Levy-area approximation each method needs from the Brownian motion (torchsde's names)."""

_FIXED_ONLY = ("steps", "grid", "rho")
_ADAPTIVE_ONLY = ("rtol", "atol", "dt0", "dt_min")


class ReverseSDEParams(GridParams):
    """Parameters of ``reverse_sde``: fixed steps on a time grid, or ``adaptive`` step-size control."""

    method: Method = Field("euler", description="torchsde method: euler (Euler-Maruyama), milstein, srk "
                           "(strong order 1.5 Runge-Kutta) or reversible_heun.")
    steps: Steps = Field(1000, description="Fixed steps from T to t_min (not with adaptive).")
    grid: GridKind = Field("uniform", description="Time grid of the fixed steps: uniform, quadratic, logsnr or "
                           "karras (the last two need a linear-Gaussian process).")
    adaptive: bool = Field(False, description="Adaptive step size (torchsde's step doubling; rtol, atol, dt0). "
                           "Results then depend on the batch composition.")
    rtol: Tolerance = Field(1e-3, description="Relative tolerance (adaptive).")
    atol: Tolerance = Field(1e-3, description="Absolute tolerance (adaptive).")
    dt0: float = Field(0.01, gt=0, description="First step size in time units (adaptive).")
    dt_min: float = Field(1e-5, ge=1.0 / MAX_STEPS, description="Smallest step size in time units (adaptive); "
                          "an adaptive solve takes at most (T - t_min) / dt_min steps.")

    @model_validator(mode="after")
    def _mode_fields(self) -> ReverseSDEParams:
        # a value other than the default (a spec's model_dump lists every field, defaults included)
        fields = type(self).model_fields
        wrong = [k for k in (_FIXED_ONLY if self.adaptive else _ADAPTIVE_ONLY) if getattr(self, k) != fields[k].default]
        if wrong:
            mode, other = ("adaptive", "fixed-step") if self.adaptive else ("fixed-step", "adaptive")
            raise ValueError(f"{', '.join(wrong)} only apply to {other} solves, but this one is {mode} "
                             f"(adaptive: {str(self.adaptive).lower()}); drop {', '.join(wrong)} or change adaptive")
        return self


class ReverseSDE(Sampler):
    """The reverse-time SDE (Song et al. 2021) solved by torchsde: Euler-Maruyama, Milstein, stochastic Runge-Kutta or
    adaptive steps; for any process.

    Solve the reverse-time SDE with ``torchsde.sdeint`` (any process: only ``f``, ``g``, the score).

    Methods (strong orders for the additive noise here, torchsde's): ``euler`` (1.0),
    ``milstein`` (1.0; its correction term vanishes for additive noise, so it takes the same steps as
    ``euler``), ``srk`` (1.5; Rossler 2010's SRI scheme for diagonal noise), ``reversible_heun``
    (1.0; Kidger et al. 2021). Score evaluations per step: 1, 1, 3 and 1 (+1 at the start).

    Fixed steps (default): one torchsde step per grid interval ``[t_i, t_{i+1}]``. The Brownian
    increment of step ``i`` is ``sqrt(h_i) noise.normal(event, step=i, stream="brownian")`` and the
    space-time Levy area ``srk`` also needs is drawn from the stream ``"brownian_levy"``
    (:class:`GridBrownian`), so sample ``k`` depends only on the seed and ``k``: the results are the
    same whatever the batch size or chunking. ``euler`` on the ``uniform`` grid is the native
    ``euler_maruyama`` with ``denoise_last: false``, up to rounding, when both read the same noise.

    Adaptive (``adaptive: true``): torchsde's step doubling with ``rtol``/``atol``, starting from
    ``dt0``; the Brownian path is a ``torchsde.BrownianInterval`` over the whole batch whose entropy
    is derived from the seed and the sample indices of the batch. The step sizes are chosen for the
    batch as a whole and the path is drawn batch-wide, so adaptive results depend on the batch
    composition (the same batch gives the same samples). ``steps`` is reported as ``None``.

    Score evaluations go through a small memo keyed on (time, state): the schemes of torchsde re-ask
    the drift at points they evaluated before (``srk`` recomputes earlier stages, the step-doubling
    error estimate starts two steps at one point), and each distinct point costs one evaluation.
    Shapes: ``x_T`` ``(B, *event)``, float32 or float64, any device.
    """

    name = "reverse_sde"
    Params = ReverseSDEParams
    params: ReverseSDEParams

    def run(self, score_fn: ScoreFn, process: ForwardProcess, x_T: Tensor, noise: NoiseSource,
            callback: Callback | None) -> tuple[Tensor, int | None]:
        p = self.params
        sde = TimeReversedSDE(process.reverse(score_fn), process.T, tuple(x_T.shape),
                              sde_type="stratonovich" if p.method in STRATONOVICH else "ito")
        y = x_T.reshape(x_T.shape[0], -1)
        levy = LEVY_AREA.get(p.method, "none")
        if p.adaptive:
            span = process.T - process.t_min
            bm = torchsde.BrownianInterval(t0=0.0, t1=span, size=tuple(y.shape), dtype=y.dtype, device=y.device,
                                           entropy=brownian_entropy(noise), levy_area_approximation=levy)
            taus = torch.tensor([0.0, span], dtype=torch.float64)
            ys = torchsde.sdeint(sde, y, taus, bm=bm, method=p.method, dt=p.dt0, adaptive=True, rtol=p.rtol,
                                 atol=p.atol, dt_min=p.dt_min)
            x = ys[-1].reshape(x_T.shape)
            self.report(callback, 0, process.t_min, x)
            return x, None
        times = time_grid(process, p.steps, p.grid, rho=p.rho)  # (steps + 1,) float64, T -> t_min
        taus = process.T - times  # 0 -> T - t_min
        taus[0] = 0.0
        brownian = GridBrownian(taus, noise, tuple(x_T.shape[1:]), dtype=y.dtype, levy_area_approximation=levy)
        extra: Any = None
        span = float(taus[-1])
        for i in range(p.steps):
            # One sdeint call per grid interval: torchsde's fixed stepping uses a single dt, which
            # cannot follow a non-uniform grid; dt = the whole span makes each call one step that
            # lands exactly on the interval's end. `extra` carries multistep state (reversible_heun).
            ys, extra = torchsde.sdeint(sde, y, taus[i:i + 2], bm=brownian, method=p.method, dt=span,
                                        extra=True, extra_solver_state=extra)
            y = ys[-1]
            self.report(callback, i, float(times[i + 1]), y.reshape(x_T.shape))
        return y.reshape(x_T.shape), p.steps


class TimeReversedSDE:
    """The reverse SDE in ``tau = T - t`` for torchsde: drift ``f(tau, y) = -[f - g^2 s](x, T - tau)``
    and diffusion ``g(tau, y) = g(T - tau)``, on flattened states ``y`` ``(B, D)`` (``x`` is
    ``y.reshape(shape)``, ``shape = (B, *event)``). ``noise_type`` is ``diagonal``: ``g`` is returned
    as ``(B, D)``, the same for every coordinate.
    """

    noise_type = "diagonal"

    def __init__(self, reverse: ReverseProcess, T: float, shape: tuple[int, ...], *, sde_type: str,
                 memo_size: int = 4) -> None:
        self.reverse, self.T, self.shape, self.sde_type = reverse, T, shape, sde_type
        self.memo: list[tuple[float, Tensor, Tensor]] = []
        self.memo_size = memo_size

    def _times(self, tau: Tensor | float, y: Tensor) -> Tensor:
        return torch.full((y.shape[0],), self.T - float(tau), dtype=y.dtype, device=y.device)

    def f(self, tau: Tensor, y: Tensor) -> Tensor:
        """Drift in ``tau``, ``(B, D)``: one score evaluation per distinct ``(tau, y)``."""
        caller = sys._getframe(1)
        if caller.f_code.co_name == "check_contract" and caller.f_globals.get("__name__", "").startswith("torchsde"):
            # sdeint evaluates the drift once before solving, only to read its shape.
            return torch.zeros_like(y)
        key = float(tau)
        for k, seen, drift in self.memo:
            if k == key and (seen is y or torch.equal(seen, y)):
                return drift
        drift = -self.reverse.drift(y.reshape(self.shape), self._times(key, y)).reshape(y.shape)
        self.memo.append((key, y, drift))
        del self.memo[:-self.memo_size]
        return drift

    def g(self, tau: Tensor, y: Tensor) -> Tensor:
        """Diffusion ``g(T - tau)`` broadcast to ``(B, D)`` (no score evaluation)."""
        g = self.reverse.process.diffusion(self._times(tau, y)).to(y.dtype)
        return g[:, None].expand_as(y)


class GridBrownian(torchsde.BaseBrownian):  # type: ignore[misc]
    """Brownian increments on a fixed grid of ``tau``, drawn from the counter-based noise.

    Over grid interval ``i`` (``[taus[i], taus[i + 1]]``, length ``h``) the increment is
    ``W = sqrt(h) z`` with ``z = noise.normal(event, step=i, stream="brownian")`` and, for methods
    that need it (``levy_area_approximation="space-time"``), the space-time Levy area
    ``H = sqrt(h / 12) zeta`` with ``zeta`` from the stream ``"brownian_levy"``, independent of ``W``
    (Foster et al. 2020; torchsde's ``BrownianInterval`` draws ``H ~ N(0, h/12)`` the same way).
    torchsde's solvers ask for ``U = int W(s) - W(t_a) ds = h (W / 2 + H)`` (``return_U``). Only
    whole grid intervals can be asked for (every fixed-step solver here asks once per step); both
    ends must match grid points, otherwise :class:`ValueError`. Shapes ``(B, D)``.
    """

    def __init__(self, taus: Tensor, noise: NoiseSource, event_shape: tuple[int, ...], *, dtype: torch.dtype,
                 levy_area_approximation: str = "none") -> None:
        self.taus: list[float] = taus.tolist()
        self.noise, self.event_shape, self._dtype = noise, event_shape, dtype
        self._levy = levy_area_approximation
        self._shape = (noise.batch_size, math.prod(event_shape))
        self._last: tuple[int, Tensor, Tensor | None] | None = None

    def __call__(self, ta: Tensor | float, tb: Tensor | float | None = None, return_U: bool = False,
                 return_A: bool = False) -> Tensor | tuple[Tensor, ...]:
        if tb is None or return_A:
            raise ValueError("the grid Brownian motion answers interval queries (ta, tb) with W and U only")
        i = self.step_of(float(ta), float(tb))
        if self._last is None or self._last[0] != i:
            h = self.taus[i + 1] - self.taus[i]
            w = math.sqrt(h) * self.noise.normal(self.event_shape, step=i, stream="brownian", dtype=self._dtype)
            u = None
            if self._levy == "space-time":
                zeta = self.noise.normal(self.event_shape, step=i, stream="brownian_levy", dtype=self._dtype)
                u = h * (0.5 * w + math.sqrt(h / 12.0) * zeta)
            self._last = (i, w.reshape(self._shape), None if u is None else u.reshape(self._shape))
        _, w_flat, u_flat = self._last
        if not return_U:
            return w_flat
        if u_flat is None:
            raise ValueError("U (space-time Levy area) was asked for but the Brownian motion was built without it")
        return w_flat, u_flat

    def step_of(self, ta: float, tb: float) -> int:
        """The grid interval ``i`` with ``taus[i] == ta`` and ``taus[i + 1] == tb`` (to rounding)."""
        taus = self.taus
        i = min(max(bisect.bisect_left(taus, ta) - 1, 0), len(taus) - 2)
        tol = 1e-9 * max(taus[-1], 1.0)
        for j in (i, i + 1):  # bisect lands on i or i + 1 depending on the rounding of ta
            if j + 1 < len(taus) and abs(taus[j] - ta) <= tol and abs(taus[j + 1] - tb) <= tol:
                return j
        raise ValueError(f"the solver asked for the Brownian increment over ({ta:.9g}, {tb:.9g}), which is not one "
                         "step of the time grid; fixed-step solves take exactly one solver step per grid step")

    def __repr__(self) -> str:
        return f"GridBrownian(steps={len(self.taus) - 1}, shape={self._shape}, levy={self._levy!r})"

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self.noise.device

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    @property
    def levy_area_approximation(self) -> str:
        return self._levy


def brownian_entropy(noise: NoiseSource) -> int:
    """An integer seed for ``torchsde.BrownianInterval``, a function of the noise's seed and the
    sample indices (and their order) of the batch: different batches get different paths."""
    bits = (noise.uniform((1,), step=0, stream="brownian_entropy", dtype=torch.float64)[:, 0] * 2.0**32).long()
    position = torch.arange(bits.shape[0], dtype=torch.int64, device=bits.device)
    return int(((bits ^ (position * 0x9E3779B1)) & 0x7FFFFFFF).sum()) % (2**63)
