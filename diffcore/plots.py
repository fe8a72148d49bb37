"""Figures of training runs and samples, written as PNG files.

Every writer builds a :class:`matplotlib.figure.Figure` with its own Agg canvas (no pyplot, no
global backend state, so it is safe from any thread) and saves it to a temporary file in the
target folder, then renames it over the target (``os.replace``): a reader never sees a partial PNG.

Shapes: losses ``(steps,)``; 2-D point sets ``(N, 2)``; images ``(N, C, H, W)`` with ``C`` in ``{1, 3}``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from diffcore.errors import UsageError
from diffcore.utils import atomic_write

MAX_GRID_IMAGES = 64
"""At most this many images go into the grid written by :func:`save_samples`."""
DPI = 100

FloatArray = np.ndarray[Any, np.dtype[np.float64]]


def _to_numpy(x: Tensor) -> FloatArray:
    return x.detach().to("cpu").double().numpy()


def _write(fig: Figure, path: Path) -> Path:
    """Render ``fig`` to ``path`` as a PNG, atomically (:func:`~diffcore.utils.atomic_write`)."""
    FigureCanvasAgg(fig)
    return atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=DPI))


def moving_average(values: FloatArray, window: int) -> FloatArray:
    """Trailing mean over ``window`` values ``(n,) -> (n,)``; the first ``window - 1`` entries average
    what is there so far."""
    window = max(1, int(window))
    cumsum = np.concatenate([[0.0], np.cumsum(values)])
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (cumsum[ends] - cumsum[starts]) / (ends - starts)


# ---------------------------------------------------------------------------------------------
# Loss curve
# ---------------------------------------------------------------------------------------------


def save_loss_curve(losses: Sequence[float], path: Path, *, title: str = "training loss") -> Path:
    """Plot per-step ``losses`` ``(steps,)`` (light) and their moving average (window ``steps / 50``,
    at least 1) against the step; a log y-axis when every loss is positive. Returns ``path``."""
    values = np.asarray(list(losses), dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise UsageError(f"save_loss_curve needs a non-empty sequence of losses, got {values.size} values")
    steps = np.arange(1, values.size + 1)
    window = max(1, values.size // 50)
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(steps, values, color="tab:blue", alpha=0.25, linewidth=0.8, label="per step")
    ax.plot(steps, moving_average(values, window), color="tab:blue", linewidth=1.8,
            label=f"moving average ({window} steps)")
    finite = values[np.isfinite(values)]
    if finite.size and bool((finite > 0).all()):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right")
    return _write(fig, path)


# ---------------------------------------------------------------------------------------------
# 2-D scatter panels
# ---------------------------------------------------------------------------------------------


def _check_points(name: str, x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != 2 or x.shape[0] == 0:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise UsageError(f"scatter panel {name!r}: expected a tensor of 2-D points (N, 2), got {shape}")


def scatter_limits(x: Tensor, margin: float = 0.1) -> tuple[float, float, float, float]:
    """``(xmin, xmax, ymin, ymax)`` around the finite points of ``x`` ``(N, 2)``, widened by
    ``margin`` times the larger extent on every side."""
    a = _to_numpy(x)
    a = a[np.isfinite(a).all(axis=1)]
    if a.shape[0] == 0:
        return -1.0, 1.0, -1.0, 1.0
    lo, hi = a.min(axis=0), a.max(axis=0)
    pad = margin * max(float((hi - lo).max()), 1e-6)
    return float(lo[0]) - pad, float(hi[0]) + pad, float(lo[1]) - pad, float(hi[1]) + pad


def save_scatter(panels: Sequence[tuple[str, Tensor]], path: Path, *,
                 limits: tuple[float, float, float, float] | None = None) -> Path:
    """Side-by-side scatter plots of ``(title, points (N, 2))`` panels, all with the same axis
    ``limits`` ``(xmin, xmax, ymin, ymax)`` (default: the first panel's range plus a margin) and an
    equal aspect. Returns ``path``."""
    if not panels:
        raise UsageError("save_scatter needs at least one (title, points) panel")
    for name, x in panels:
        _check_points(name, x)
    xmin, xmax, ymin, ymax = limits if limits is not None else scatter_limits(panels[0][1])
    if not (math.isfinite(xmin + xmax + ymin + ymax) and xmin < xmax and ymin < ymax):
        raise UsageError(f"scatter limits must be finite (xmin, xmax, ymin, ymax) with min < max, got {limits}")
    width = 4.0
    height = min(6.0, max(2.0, width * (ymax - ymin) / (xmax - xmin)))  # the panels' equal aspect
    fig = Figure(figsize=(width * len(panels), height + 0.5), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    largest = max(x.shape[0] for _, x in panels)  # one marker style for all panels, so densities compare
    marker = max(1.0, min(6.0, 8000.0 / largest))  # points^2: denser sets, smaller marks
    alpha = max(0.3, min(0.8, 3000.0 / largest))
    for ax, (name, x) in zip(axes, panels, strict=True):
        a = _to_numpy(x)
        ax.scatter(a[:, 0], a[:, 1], s=marker, alpha=alpha, linewidths=0, color="tab:blue", rasterized=True)
        ax.set_xlim(xmin, xmax)
        ax.set_ylim(ymin, ymax)
        ax.set_aspect("equal", adjustable="box")
        ax.set_title(f"{name}, n={a.shape[0]}")
        ax.grid(True, alpha=0.2)
    return _write(fig, path)


# ---------------------------------------------------------------------------------------------
# Image grids
# ---------------------------------------------------------------------------------------------


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[0] == 0:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise UsageError(f"save_image_grid: expected images (N, C, H, W) with C 1 or 3 and N >= 1, got {shape}")


def image_grid(images: FloatArray, nrow: int, pad: int = 1,
               fill: float = 1.0) -> FloatArray:
    """Tile ``images`` ``(N, C, H, W)`` into one ``(rows * (H + pad) + pad, nrow * (W + pad) + pad, C)``
    array, row by row, with ``pad`` pixels of ``fill`` between and around the tiles."""
    n, c, h, w = images.shape
    rows = math.ceil(n / nrow)
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), fill, dtype=np.float64)
    for k in range(n):
        r, col = divmod(k, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[top:top + h, left:left + w] = images[k].transpose(1, 2, 0)
    return grid


def save_image_grid(images: Tensor, path: Path, *, nrow: int | None = None,
                    value_range: tuple[float, float] | None = None, title: str | None = None) -> Path:
    """A grid of ``images`` ``(N, C, H, W)``, ``C`` in ``{1, 3}`` (grey colour map for one channel),
    ``nrow`` per row (default ``ceil(sqrt(N))``), values clipped to ``value_range`` (default the
    batch's min and max) and shown without interpolation. Returns ``path``."""
    _check_images(images)
    if nrow is not None and nrow < 1:
        raise UsageError(f"save_image_grid: nrow must be positive, got {nrow}")
    a = _to_numpy(images)
    finite = a[np.isfinite(a)]
    if value_range is None:
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    else:
        lo, hi = float(value_range[0]), float(value_range[1])
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise UsageError(f"save_image_grid: value_range must be finite (low, high) with low < high, "
                             f"got {value_range}")
    if hi <= lo:
        hi = lo + 1.0
    a = (np.clip(np.nan_to_num(a, nan=lo, posinf=hi, neginf=lo), lo, hi) - lo) / (hi - lo)  # to [0, 1]
    n = a.shape[0]
    per_row = nrow or math.ceil(math.sqrt(n))
    grid = image_grid(a, min(per_row, n))
    rows = math.ceil(n / min(per_row, n))
    aspect = grid.shape[0] / grid.shape[1]
    width = min(10.0, max(3.0, 0.6 * min(per_row, n) + 1.0))
    fig = Figure(figsize=(width, width * aspect + (0.4 if title else 0.0)), layout="constrained")
    ax = fig.add_subplot()
    if grid.shape[2] == 1:
        ax.imshow(grid[:, :, 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(f"{title} ({n} images, {rows} x {min(per_row, n)})")
    return _write(fig, path)


# ---------------------------------------------------------------------------------------------
# Dispatch on the sample shape
# ---------------------------------------------------------------------------------------------


def save_samples(x: Tensor, path: Path, *, reference: Tensor | None = None, title: str = "samples",
                 value_range: tuple[float, float] | None = None) -> Path | None:
    """A figure of samples ``x`` chosen by their event shape: points ``(N, 2)`` give a scatter plot
    (after a first panel "data" of ``reference`` ``(M, 2)`` when given); images ``(N, C, H, W)``
    with ``C`` in ``{1, 3}`` give a grid of the first :data:`MAX_GRID_IMAGES`. Any other shape
    writes nothing and returns ``None``; otherwise returns ``path``."""
    if x.ndim == 2 and x.shape[1] == 2 and x.shape[0] > 0:
        panels: list[tuple[str, Tensor]] = []
        if reference is not None:
            panels.append(("data", reference))
        panels.append((title, x))
        limits = scatter_limits(reference if reference is not None else x)
        return save_scatter(panels, path, limits=limits)
    if x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[0] > 0:
        return save_image_grid(x[:MAX_GRID_IMAGES], path, value_range=value_range, title=title)
    return None
