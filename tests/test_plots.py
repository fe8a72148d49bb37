"""PNG writers: valid files read back by matplotlib, atomic writes, shape errors."""

from __future__ import annotations

import threading
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch

from diffcore import plots
from diffcore.errors import UsageError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_png(path: Path) -> np.ndarray:
    """The image at ``path`` ``(H, W, 3 or 4)``, after checking the PNG signature."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    return image


def no_temporary_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]


def test_loss_curve(tmp_path: Path) -> None:
    path = tmp_path / "loss.png"
    losses = [2.0 / (1 + 0.01 * k) + 0.1 * float(np.sin(k)) ** 2 for k in range(500)]
    assert plots.save_loss_curve(losses, path) == path
    height, width = read_png(path).shape[:2]
    assert 200 < height < 2000 and 200 < width < 2000
    plots.save_loss_curve([0.5, -0.2, 0.1], path, title="signed losses: linear axis")  # overwrite
    read_png(path)
    assert plots.save_loss_curve([1.0], path) == path
    assert no_temporary_files(tmp_path)
    with pytest.raises(UsageError, match="non-empty"):
        plots.save_loss_curve([], path)


def test_moving_average() -> None:
    values = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert np.allclose(plots.moving_average(values, 2), [1.0, 1.5, 2.5, 3.5, 4.5])
    assert np.allclose(plots.moving_average(values, 1), values)
    assert np.allclose(plots.moving_average(values, 10), np.cumsum(values) / np.arange(1, 6))


def test_scatter_panels_share_limits(tmp_path: Path) -> None:
    path = tmp_path / "scatter.png"
    g = torch.Generator().manual_seed(0)
    panels = [("data", torch.randn(3000, 2, generator=g)), ("wide", 3 * torch.randn(500, 2, generator=g)),
              ("one point", torch.zeros(1, 2))]
    plots.save_scatter(panels, path)
    one = read_png(path)
    plots.save_scatter(panels[:1], path, limits=(-5.0, 5.0, -2.0, 2.0))
    assert read_png(path).shape[1] < one.shape[1]  # one panel is narrower than three
    assert no_temporary_files(tmp_path)


@pytest.mark.parametrize("bad", [torch.zeros(10, 3), torch.zeros(10), torch.zeros(0, 2), torch.zeros(4, 2, 1)])
def test_scatter_refuses_other_shapes(tmp_path: Path, bad: torch.Tensor) -> None:
    with pytest.raises(UsageError, match=r"\(N, 2\)"):
        plots.save_scatter([("ok", torch.zeros(5, 2)), ("bad", bad)], tmp_path / "x.png")
    assert not list(tmp_path.iterdir())


def test_scatter_refuses_bad_limits_and_no_panels(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="limits"):
        plots.save_scatter([("a", torch.zeros(5, 2))], tmp_path / "x.png", limits=(1.0, 0.0, 0.0, 1.0))
    with pytest.raises(UsageError, match="at least one"):
        plots.save_scatter([], tmp_path / "x.png")


@pytest.mark.parametrize("channels", [1, 3])
def test_image_grid(tmp_path: Path, channels: int) -> None:
    path = tmp_path / "grid.png"
    images = torch.rand(10, channels, 8, 8, generator=torch.Generator().manual_seed(1)) * 4 - 2
    plots.save_image_grid(images, path, nrow=5, value_range=(-1.0, 1.0), title="images")
    read_png(path)
    plots.save_image_grid(images[:1], path)  # one image, default range
    read_png(path)
    plots.save_image_grid(torch.full((2, channels, 4, 4), 3.0), path)  # constant batch: no zero division
    read_png(path)
    assert no_temporary_files(tmp_path)


def test_image_grid_layout() -> None:
    images = np.zeros((5, 1, 2, 3))
    grid = plots.image_grid(images, nrow=2, pad=1, fill=1.0)
    assert grid.shape == (3 * 3 + 1, 2 * 4 + 1, 1)
    assert grid[1:3, 1:4].max() == 0.0 and grid[0].min() == 1.0  # a tile, and the padding


@pytest.mark.parametrize("bad", [torch.zeros(4, 2, 8, 8), torch.zeros(4, 8, 8), torch.zeros(0, 1, 8, 8)])
def test_image_grid_refuses_other_shapes(tmp_path: Path, bad: torch.Tensor) -> None:
    with pytest.raises(UsageError, match=r"\(N, C, H, W\)"):
        plots.save_image_grid(bad, tmp_path / "x.png")
    with pytest.raises(UsageError, match="value_range"):
        plots.save_image_grid(torch.zeros(1, 1, 2, 2), tmp_path / "x.png", value_range=(1.0, 1.0))
    assert not list(tmp_path.iterdir())


def test_save_samples_dispatches_on_shape(tmp_path: Path) -> None:
    points = torch.randn(200, 2)
    assert plots.save_samples(points, tmp_path / "p.png", reference=torch.randn(100, 2)) == tmp_path / "p.png"
    with_reference = read_png(tmp_path / "p.png")
    plots.save_samples(points, tmp_path / "q.png")
    assert read_png(tmp_path / "q.png").shape[1] < with_reference.shape[1]  # one panel fewer
    assert plots.save_samples(torch.rand(100, 1, 8, 8), tmp_path / "i.png") == tmp_path / "i.png"
    read_png(tmp_path / "i.png")
    assert plots.save_samples(torch.rand(3, 3, 4, 4), tmp_path / "c.png", value_range=(0.0, 1.0)) is not None
    for shape in [(10, 3), (10,), (4, 2, 8, 8), (2, 1, 4, 4, 4), (0, 2)]:
        assert plots.save_samples(torch.zeros(shape), tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
    assert no_temporary_files(tmp_path)


def test_writes_are_atomic_and_thread_safe(tmp_path: Path) -> None:
    """Writers in several threads at once on one path: each rename is atomic, so the file is always
    one complete PNG and no temporary file is left; a failed write leaves the old file."""
    path = tmp_path / "shared.png"
    errors: list[BaseException] = []

    def write(seed: int) -> None:
        try:
            plots.save_scatter([("x", torch.randn(100, 2, generator=torch.Generator().manual_seed(seed)))], path)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and no_temporary_files(tmp_path)
    before = path.read_bytes()
    read_png(path)
    with pytest.raises(OSError):
        plots.save_loss_curve([1.0, 2.0], tmp_path / "missing-folder" / "loss.png")
    with pytest.raises(UsageError):
        plots.save_scatter([("bad", torch.zeros(3, 3))], path)
    assert path.read_bytes() == before and no_temporary_files(tmp_path)
