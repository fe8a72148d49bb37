"""The diffcore-data datasets, against geometric and statistical ground truth."""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from diffcore import get_registry
from diffcore.errors import SpecError, UsageError
from diffcore_data import ArrayDataset, Checkerboard, Digits, GMMSamples, Moons, Rings, SwissRoll

MIXTURE: dict[str, Any] = {"weights": [0.2, 0.5, 0.3], "means": [[-2.0, 0.0], [1.0, 1.5], [3.0, -1.0]],
                           "variances": [[0.3, 0.5], [1.0, 0.2], [0.4, 0.4]]}
BUILDS: dict[str, dict[str, Any]] = {
    "moons": {"num": 500}, "swiss_roll": {"num": 500}, "checkerboard": {"num": 500},
    "rings": {"num": 500}, "gmm_samples": {"num": 500, **MIXTURE},
}


def test_every_dataset_is_registered_through_the_entry_point() -> None:
    registry = get_registry()
    names = set(registry.names("dataset"))
    assert {"moons", "swiss_roll", "checkerboard", "rings", "gmm_samples", "digits", "array"} <= names
    assert [(k, n) for k, n in registry.plugins["data"].components if k == "dataset"]
    assert not [e for e in registry.errors() if "'data'" in e]


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_shapes_dtypes_and_determinism(name: str) -> None:
    registry = get_registry()
    a = registry.build("dataset", name, seed=3, **BUILDS[name])
    x, y = a.arrays()  # type: ignore[attr-defined]
    assert x.shape == (500, 2) and x.dtype == torch.float32 and torch.isfinite(x).all()
    if y is not None:
        assert y.shape == (500,) and y.dtype == torch.int64
        assert a.num_classes is not None and int(y.min()) >= 0 and int(y.max()) < a.num_classes  # type: ignore[attr-defined]
    x2, y2 = registry.build("dataset", name, seed=3, **BUILDS[name]).arrays()  # type: ignore[attr-defined]
    assert torch.equal(x, x2) and (y is None or torch.equal(y, y2))
    x3, _ = a.arrays()  # type: ignore[attr-defined]
    assert torch.equal(x, x3)
    x4, _ = registry.build("dataset", name, seed=4, **BUILDS[name]).arrays()  # type: ignore[attr-defined]
    assert not torch.equal(x, x4)


def test_mutating_returned_arrays_does_not_change_the_dataset() -> None:
    ds = Moons(num=100)
    x, _ = ds.arrays()
    x.zero_()
    assert ds.arrays()[0].abs().sum() > 0


def test_params_are_validated() -> None:
    with pytest.raises(SpecError):
        Moons(num=0)
    with pytest.raises(SpecError):
        Rings(noise=-0.1)
    with pytest.raises(SpecError):
        Checkerboard(nmu=10)
    with pytest.raises(SpecError, match="one entry per component"):
        GMMSamples(weights=[1.0, 1.0], means=[[0.0]], variances=[[1.0]])
    with pytest.raises(SpecError):
        GMMSamples(weights=[1.0], means=[[0.0, 1.0]], variances=[[1.0]])
    with pytest.raises(SpecError):
        GMMSamples(weights=[1.0], means=[[0.0]], variances=[[-1.0]])


# -- 2-D toys ------------------------------------------------------------------------------------


def test_moons_points_lie_on_unit_half_circles_around_their_centres() -> None:
    x, y = Moons(num=4001, noise=0.0, seed=1).arrays()
    assert y is not None and int((y == 0).sum()) == 2001 and int((y == 1).sum()) == 2000
    outer, inner = x[y == 0].double(), x[y == 1].double()
    torch.testing.assert_close(outer.norm(dim=1), torch.ones(2001, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close((inner - torch.tensor([1.0, 0.5], dtype=torch.float64)).norm(dim=1),
                               torch.ones(2000, dtype=torch.float64), atol=1e-6, rtol=0)
    assert (outer[:, 1] >= -1e-6).all() and (inner[:, 1] <= 0.5 + 1e-6).all()  # upper / lower halves
    # with noise sigma, the radial deviation of each point is ~ N(0, sigma^2) to first order
    sigma = 0.05
    x, y = Moons(num=20000, noise=sigma, seed=2).arrays()
    assert y is not None
    centre = torch.tensor([[0.0, 0.0], [1.0, 0.5]])[y]
    dev = ((x - centre).norm(dim=1) - 1.0).double()
    assert abs(float(dev.mean())) < 5 * sigma / math.sqrt(len(dev)) + sigma**2  # + curvature bias sigma^2/2r
    assert abs(float(dev.std()) / sigma - 1.0) < 0.05


def test_rings_radii_and_counts() -> None:
    x, y = Rings(num=3001, num_rings=3, noise=0.0, seed=0).arrays()
    assert y is not None
    assert [int((y == k).sum()) for k in range(3)] == [1001, 1000, 1000]
    torch.testing.assert_close(x.norm(dim=1), (y.float() + 1.0) / 3.0, atol=1e-6, rtol=0)
    sigma = 0.02
    ds = Rings(num=30000, num_rings=4, noise=sigma, seed=5)
    assert ds.num_classes == 4
    x, y = ds.arrays()
    assert y is not None
    dev = x.norm(dim=1).double() - (y.double() + 1.0) / 4.0
    assert dev.abs().max() < 6 * sigma
    assert abs(float(dev.std()) / sigma - 1.0) < 0.05
    # angles are uniform: mean of the unit vector is ~ 0 (std error 1/sqrt(2n) per coordinate)
    unit = x / x.norm(dim=1, keepdim=True)
    assert (unit.mean(dim=0).abs() < 5 / math.sqrt(2 * len(x))).all()


def test_checkerboard_only_black_squares_and_uniform_across_them() -> None:
    n = 40000
    x, y = Checkerboard(num=n, seed=0).arrays()
    assert y is None
    assert (x >= -2).all() and (x < 2).all()
    i, j = (x[:, 0] + 2).floor().long(), (x[:, 1] + 2).floor().long()
    assert ((i + j) % 2 == 0).all()  # black: (0,0), (0,2), (1,1), ... e.g. [-2,-1)^2 is black
    counts = torch.bincount(i * 4 + j, minlength=16).double()
    black = [4 * a + b for a in range(4) for b in range(4) if (a + b) % 2 == 0]
    expected, sd = n / 8, math.sqrt(n * (1 / 8) * (7 / 8))
    assert ((counts[black] - expected).abs() < 5 * sd).all()
    # uniform inside each square: the fractional parts are U(0, 1), mean 1/2, variance 1/12
    frac = (x + 2) - (x + 2).floor()
    assert ((frac.mean(dim=0) - 0.5).abs() < 5 * math.sqrt(1 / 12 / n)).all()
    assert ((frac.var(dim=0) - 1 / 12).abs() < 0.01).all()


def test_swiss_roll_lies_on_the_spiral() -> None:
    x, y = SwissRoll(num=2000, noise=0.0, seed=0).arrays()
    assert y is None
    t = x.double().norm(dim=1)  # r = t on the spiral (t cos t, t sin t)
    assert (t >= 1.5 * math.pi - 1e-4).all() and (t <= 4.5 * math.pi + 1e-4).all()
    torch.testing.assert_close(x.double(), torch.stack([t * t.cos(), t * t.sin()], dim=1), atol=1e-4, rtol=0)


# -- Gaussian mixture samples ----------------------------------------------------------------------


def test_gmm_samples_moments_and_label_frequencies() -> None:
    n = 200000
    ds = GMMSamples(num=n, seed=7, **MIXTURE)
    assert ds.num_classes == 3
    x, y = ds.arrays()
    assert y is not None
    w = torch.tensor(MIXTURE["weights"], dtype=torch.float64)
    w = w / w.sum()
    mu = torch.tensor(MIXTURE["means"], dtype=torch.float64)
    var = torch.tensor(MIXTURE["variances"], dtype=torch.float64)
    # closed form: E x = sum w mu; Cov x = sum w (diag v + mu mu^T) - m m^T
    m = (w[:, None] * mu).sum(0)
    cov = sum(w[k] * (torch.diag(var[k]) + torch.outer(mu[k], mu[k])) for k in range(3)) - torch.outer(m, m)
    xd = x.double()
    se_mean = (torch.diag(cov) / n).sqrt()
    assert ((xd.mean(0) - m).abs() < 5 * se_mean).all()
    c = xd - m
    prods = c[:, :, None] * c[:, None, :]
    se_cov = prods.std(0) / math.sqrt(n)
    assert ((prods.mean(0) - cov).abs() < 5 * se_cov).all()
    freq = torch.bincount(y, minlength=3).double() / n
    assert ((freq - w).abs() < 5 * (w * (1 - w) / n).sqrt()).all()
    # each component's own draws: its mean and variance
    for k in range(3):
        xk = xd[y == k]
        assert ((xk.mean(0) - mu[k]).abs() < 5 * (var[k] / len(xk)).sqrt()).all()
        assert ((xk.var(0) / var[k] - 1).abs() < 5 * math.sqrt(2 / len(xk))).all()


def test_gmm_samples_accepts_exactly_the_gmm_model_params() -> None:
    from diffcore_models import GaussianMixture

    model = GaussianMixture(**MIXTURE)
    ds = GMMSamples(num=10, **model.params.model_dump())
    assert ds.arrays()[0].shape == (10, 2)


# -- digits ----------------------------------------------------------------------------------------


def test_digits_raw() -> None:
    ds = get_registry().build("dataset", "digits")
    assert ds.num_classes == 10 and ds.bin_width == 1.0  # type: ignore[attr-defined]
    x, y = ds.arrays()  # type: ignore[attr-defined]
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    assert y is not None and y.shape == (1797,) and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 16.0 and torch.equal(x, x.round())
    assert sorted(y.unique().tolist()) == list(range(10))
    assert (torch.bincount(y) >= 170).all()  # about 180 of each digit


def test_digits_holdout_split_is_disjoint_and_covers_everything() -> None:
    ds = Digits(holdout=0.3, split_seed=1)
    train_rows, test_rows = ds.split_rows
    assert len(test_rows) == round(0.3 * 1797) == 539 and len(train_rows) == 1797 - 539
    assert not set(train_rows.tolist()) & set(test_rows.tolist())
    assert sorted(train_rows.tolist() + test_rows.tolist()) == list(range(1797))
    x, y = ds.arrays()
    (xtr, ytr), (xte, yte) = ds.split("train"), ds.split("test")
    assert y is not None and ytr is not None and yte is not None
    assert xtr.shape == (1258, 1, 8, 8) and xte.shape == (539, 1, 8, 8)
    assert torch.equal(torch.bincount(torch.cat([ytr, yte]), minlength=10), torch.bincount(y, minlength=10))
    assert float(xtr.sum() + xte.sum()) == float(x.sum())
    # the same split every time; another seed gives another split
    assert torch.equal(Digits(holdout=0.3, split_seed=1).split("test")[0], xte)
    assert not torch.equal(Digits(holdout=0.3, split_seed=2).split("test")[0], xte)


def test_digits_scaling_and_dequantisation() -> None:
    ds = Digits(scale="minus_one_one", dequantize=True, holdout=0.3)
    x, _ = ds.split("train")
    # with dequantisation the half bins beyond 0 and 16 are in range too: [-0.5, 16.5] -> [-1, 1]
    assert float(x.min()) == pytest.approx(-1 + 1 / 17) and float(x.max()) == pytest.approx(1 - 1 / 17)
    assert float(Digits(scale="minus_one_one").split("train")[0].min()) == -1.0  # no dequantisation
    raw = ds.to_raw(x)
    torch.testing.assert_close(raw, raw.round(), atol=1e-5, rtol=0)  # back to the integers 0..16
    shift, mult = ds.scaling
    assert (shift, mult) == (8.0, 2.0 / 17.0)
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(0)).clamp(1e-6, 1 - 1e-6)
    xd = ds.dequantize(x, u)
    half_bin = 0.5 * 1.0 * mult  # half a raw bin, in model units
    assert ((xd - x).abs() <= half_bin + 1e-6).all() and not torch.equal(xd, x)
    assert torch.equal(ds.to_raw(xd).round(), raw.round())  # every value stays in its own bin
    assert float(xd.min()) >= -1 and float(xd.max()) <= 1  # and the data in [-1, 1]
    # the noise fills the bin: (xd - x) / bin is ~ U(-1/2, 1/2)
    assert abs(float(((xd - x) / (2 * half_bin)).var()) - 1 / 12) < 0.005
    assert torch.equal(Digits(scale="minus_one_one").dequantize(x, u), x)  # dequantize off: identity


def test_digits_without_scikit_learn_says_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import now raises ImportError
    ds = Digits()  # the plugin and the component load without scikit-learn
    with pytest.raises(UsageError, match="pip install scikit-learn"):
        ds.arrays()


# -- user arrays -----------------------------------------------------------------------------------


def _data(n: int = 20) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 3, 2)).astype(np.float32)


def test_array_npy_round_trip(tmp_path: Path) -> None:
    a = _data()
    np.save(tmp_path / "d.npy", a)
    ds = get_registry().build("dataset", "array", path=str(tmp_path / "d.npy"))
    x, y = ds.arrays()  # type: ignore[attr-defined]
    assert y is None and ds.num_classes is None  # type: ignore[attr-defined]
    assert x.dtype == torch.float32 and torch.equal(x, torch.from_numpy(a))
    np.save(tmp_path / "u8.npy", np.arange(12, dtype=np.uint8))  # 1-D: N scalars
    ds8 = ArrayDataset(path=str(tmp_path / "u8.npy"), bin_width=1.0, dequantize=True)
    x8, _ = ds8.arrays()
    assert x8.shape == (12, 1) and torch.equal(x8[:, 0], torch.arange(12.0)) and ds8.bin_width == 1.0


def test_array_npz_with_labels(tmp_path: Path) -> None:
    a, labels = _data(), np.arange(20) % 4
    np.savez(tmp_path / "d.npz", images=a, classes=labels)
    ds = ArrayDataset(path=str(tmp_path / "d.npz"), key="images", labels_key="classes", holdout=0.25)
    x, y = ds.arrays()
    assert torch.equal(x, torch.from_numpy(a)) and y is not None and y.dtype == torch.int64
    assert torch.equal(y, torch.from_numpy(labels).long()) and ds.num_classes == 4
    xtr, ytr = ds.split("train")
    assert xtr.shape == (15, 3, 2) and ytr is not None and ytr.shape == (15,)
    np.savez(tmp_path / "f.npz", x=a, y=labels.astype(np.float32))  # whole-valued float labels are fine
    assert torch.equal(ArrayDataset(path=str(tmp_path / "f.npz"), labels_key="y").arrays()[1],  # type: ignore[arg-type]
                       torch.from_numpy(labels).long())


def test_array_safetensors_round_trip(tmp_path: Path) -> None:
    x0 = torch.randn(16, 4, dtype=torch.float64)
    y0 = torch.arange(16) % 3
    save_file({"x": x0, "y": y0, "other": torch.zeros(1)}, str(tmp_path / "d.safetensors"))
    ds = ArrayDataset(path=str(tmp_path / "d.safetensors"), labels_key="y")
    x, y = ds.arrays()
    assert x.dtype == torch.float32 and torch.equal(x, x0.float())
    assert y is not None and torch.equal(y, y0) and ds.num_classes == 3


class Exploit:
    """Unpickling this creates ``marker`` (what an attacker would do with ``os.system``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("how", ["raw_pickle_npy", "object_npy", "object_npz", "pickle_npz", "pkl"])
def test_array_never_unpickles(tmp_path: Path, how: str) -> None:
    marker = tmp_path / "pwned"
    payload = Exploit(marker)
    if how == "raw_pickle_npy":
        path = tmp_path / "d.npy"
        path.write_bytes(pickle.dumps(payload))
    elif how == "object_npy":
        path = tmp_path / "d.npy"
        np.save(path, np.array([payload, 1], dtype=object), allow_pickle=True)
    elif how == "object_npz":
        path = tmp_path / "d.npz"
        np.savez(path, x=np.array([payload, 1], dtype=object))
    elif how == "pickle_npz":
        path = tmp_path / "d.npz"
        path.write_bytes(pickle.dumps(payload))
    else:
        path = tmp_path / "d.pkl"
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(UsageError) as info:
        ArrayDataset(path=str(path))
    assert not marker.exists()
    assert "pickle" in str(info.value).lower() or "unsupported" in str(info.value)
    pickle.loads(pickle.dumps(payload))
    assert marker.exists()  # the exploit is real: unpickling it does create the marker


def _raises(match: str, **params: Any) -> str:
    with pytest.raises(UsageError, match=match) as info:
        ArrayDataset(**params)
    return str(info.value)


def test_array_errors(tmp_path: Path) -> None:
    a = _data()
    _raises("no such file", path=str(tmp_path / "missing.npy"))
    (tmp_path / "d.csv").write_text("1,2\n")
    assert ".npy, .npz, .safetensors" in _raises("unsupported file type '.csv'", path=str(tmp_path / "d.csv"))
    np.savez(tmp_path / "d.npz", images=a, classes=np.arange(20))
    msg = _raises("no key 'x'", path=str(tmp_path / "d.npz"))
    assert "classes, images" in msg
    assert "classes, images" in _raises("no key 'lab'", path=str(tmp_path / "d.npz"), key="images",
                                        labels_key="lab")
    save_file({"data": torch.zeros(3)}, str(tmp_path / "d.safetensors"))
    assert "data" in _raises("no key 'x'", path=str(tmp_path / "d.safetensors"))
    np.save(tmp_path / "d.npy", a)
    _raises("labels_key", path=str(tmp_path / "d.npy"), labels_key="y")
    np.save(tmp_path / "s.npy", np.array(["a", "b"]))
    _raises("holds <U1 values, which are not plain numbers", path=str(tmp_path / "s.npy"))
    np.save(tmp_path / "c.npy", np.ones(3, dtype=np.complex64))
    _raises("holds complex64 values, which are not plain numbers", path=str(tmp_path / "c.npy"))
    bad = a.copy()
    bad[2, 0, 0], bad[5, 1, 1] = np.nan, np.inf
    np.save(tmp_path / "nan.npy", bad)
    _raises("2 NaN or infinite", path=str(tmp_path / "nan.npy"))
    np.save(tmp_path / "big.npy", np.array([1e300, 0.0]))
    _raises("float32", path=str(tmp_path / "big.npy"))
    np.save(tmp_path / "empty.npy", np.zeros((0, 2)))
    _raises("N >= 1", path=str(tmp_path / "empty.npy"))
    np.savez(tmp_path / "short.npz", x=a, y=np.arange(19))
    _raises(r"shape \(19,\); expected \(20,\)", path=str(tmp_path / "short.npz"), labels_key="y")
    np.savez(tmp_path / "frac.npz", x=a, y=np.linspace(0, 1, 20))
    _raises("not integers", path=str(tmp_path / "frac.npz"), labels_key="y")
    np.savez(tmp_path / "str.npz", x=a, y=np.array(["a"] * 20))
    _raises("which are not plain numbers", path=str(tmp_path / "str.npz"), labels_key="y")
    np.savez(tmp_path / "neg.npz", x=a, y=np.arange(20) - 1)
    _raises(">= 0", path=str(tmp_path / "neg.npz"), labels_key="y")
    save_file({"x": torch.zeros(20, 2), "y": torch.full((20,), 0.5)}, str(tmp_path / "f.safetensors"))
    _raises("not integers", path=str(tmp_path / "f.safetensors"), labels_key="y")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00garbage" * 4)
    _raises("cannot read", path=str(tmp_path / "junk.safetensors"))
    np.save(tmp_path / "renamed.npy", a)
    (tmp_path / "renamed.npy").rename(tmp_path / "renamed.npz")
    _raises("not a .npz archive", path=str(tmp_path / "renamed.npz"))
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04garbage")
    _raises(r"is not a \.npz archive \(File is not a zip file\)", path=str(tmp_path / "junk.npz"))
