"""Time grids for samplers: where the ``steps`` solver steps fall between ``T`` and ``t_min``.

Every grid is ``steps + 1`` decreasing times, exactly ``T`` first and exactly ``t_min`` last:

- ``uniform``: equal steps in ``t`` (seed 001, Euler-Maruyama);
- ``quadratic``: ``t = t_min + (T - t_min) u^2`` for equally spaced ``u`` (DDIM's "quadratic"
  schedule, Song, Meng & Ermon 2021): denser near the data;
- ``logsnr``: equal steps in the half log-SNR ``lambda = log(alpha / sigma)`` (DPM-Solver, Lu et al.
  2022, "logSNR" schedule);
- ``karras``: the EDM schedule (Karras et al. 2022, eq. 5) on the noise level
  ``sigma / alpha = exp(-lambda)``: ``s_i = (s_max^(1/rho) + i/N (s_min^(1/rho) - s_max^(1/rho)))^rho``.

``logsnr`` and ``karras`` are defined through ``alpha`` and ``sigma``, so they need a
linear-Gaussian process; the times come back through ``process.t_from_half_log_snr``.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from pydantic import Field
from torch import Tensor

from diffcore.component import Params
from diffcore.process import ForwardProcess, require_linear_gaussian

GridKind = Literal["uniform", "quadratic", "logsnr", "karras"]
GRID_KINDS: tuple[str, ...] = get_args(GridKind)


class GridParams(Params):
    """Parameters of a sampler that steps on a time grid (subclass it for the sampler's Params)."""

    steps: int = Field(50, gt=0, description="Solver steps from T to t_min.")
    grid: GridKind = Field("uniform", description="Time grid: uniform, quadratic, logsnr (uniform in "
                           "log-SNR) or karras (EDM, with rho).")
    rho: float = Field(7.0, ge=1.0, le=1000.0, description="Exponent of the karras grid (EDM uses 7); 1 to "
                       "1000 (below 1 the grid crowds at high noise and overflows, above it collapses).")


def time_grid(process: ForwardProcess, steps: int, kind: str = "uniform", *, rho: float = 7.0,
              device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64) -> Tensor:
    """``(steps + 1,)`` decreasing times from ``process.T`` to ``process.t_min`` on the grid ``kind``."""
    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    T, t_min = process.T, process.t_min
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)  # 1 -> 0
    if kind == "uniform":
        t = t_min + (T - t_min) * u
    elif kind == "quadratic":
        t = t_min + (T - t_min) * u**2
    elif kind in ("logsnr", "karras"):
        lg = require_linear_gaussian(process, f"the {kind!r} time grid (use grid: uniform or quadratic)")
        ends = torch.tensor([T, t_min], dtype=torch.float64)
        lam_T, lam_0 = (float(v) for v in lg.half_log_snr(ends))
        if kind == "logsnr":
            lam = lam_T + (lam_0 - lam_T) * (1.0 - u)
        else:
            s_max, s_min = math.exp(-lam_T), math.exp(-lam_0)  # noise levels sigma / alpha
            s = (s_max ** (1 / rho) + (1.0 - u) * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
            lam = -torch.log(s)
        t = lg.t_from_half_log_snr(lam)
    else:
        raise ValueError(f"unknown time grid {kind!r}; choose one of {', '.join(GRID_KINDS)}")
    t = t.to(torch.float64).clone()
    t[0], t[-1] = T, t_min
    return t.to(device=device, dtype=dtype)
