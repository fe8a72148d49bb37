"""User arrays from a file: ``.npy``, ``.npz`` or ``.safetensors``. Nothing is ever unpickled:
numpy files load with ``allow_pickle=False`` and safetensors holds plain tensors only.

The file is read when the dataset is built, so a bad file fails at once (and ``num_classes`` is
known: ``max(label) + 1``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field, PositiveFloat
from torch import Tensor

from diffcore.data import DataParams
from diffcore.errors import UsageError
from diffcore.inputs import load_npy, load_npz, read_bytes
from diffcore.limits import MAX_ARRAY_BYTES
from diffcore_data._cached import CachedDataset

SUFFIXES = (".npy", ".npz", ".safetensors")


class ArrayParams(DataParams):
    path: str = Field(min_length=1, description="File holding the data: .npy, .npz or .safetensors.")
    key: str = Field("x", min_length=1, description="Key of the data in a .npz or .safetensors file (a .npy file "
                     "holds one array: no key).")
    labels_key: str | None = Field(None, description="Key of integer labels (N,) in a .npz or .safetensors file.")
    bin_width: PositiveFloat | None = Field(None, description="Spacing of the values of discrete data, in raw "
                                            "units (e.g. 1 for 8-bit pixels); needed by dequantize.")


class ArrayDataset(CachedDataset):
    """Your own data from a ``.npy`` file (any shape), with optional labels.

    Data ``(N, *event)`` as stored (a 1-D array is ``N`` scalars: ``(N, 1)``), converted to float32;
    optional labels ``(N,)`` int64."""

    name = "array"
    Params = ArrayParams
    params: ArrayParams

    def __init__(self, params: ArrayParams | None = None, /, **kwargs: object) -> None:
        super().__init__(params, **kwargs)
        self.bin_width = self.params.bin_width
        _, y = self._arrays = self.load()
        self.num_classes = int(y.max()) + 1 if y is not None else None

    def load(self) -> tuple[Tensor, Tensor | None]:
        p = self.params
        path = Path(p.path).expanduser()
        if not path.exists():
            where = f" (resolved to {path.resolve()})" if not path.is_absolute() else ""
            raise UsageError(f"dataset 'array': no such file {p.path!r}{where}")
        suffix = path.suffix.lower()
        if suffix not in SUFFIXES:
            raise UsageError(f"dataset 'array': unsupported file type {suffix or '(none)'!r} of {p.path!r}; "
                             f"expected one of {', '.join(SUFFIXES)} (pickle files are never loaded: convert "
                             "with numpy.save / numpy.savez / safetensors.torch.save_file)")
        if suffix == ".npy" and p.labels_key is not None:
            raise UsageError(f"dataset 'array': {p.path!r} is a .npy file, which holds one array, so labels_key "
                             f"{p.labels_key!r} cannot be read; store data and labels together in a .npz or "
                             ".safetensors file")
        raw_x, raw_y = _read(path, suffix, p.key, p.labels_key)
        x = _data(raw_x, p.path)
        y = _labels(raw_y, x.shape[0], p.path, p.labels_key) if raw_y is not None else None
        return x, y


def _read(path: Path, suffix: str, key: str, labels_key: str | None) -> tuple[Any, Any]:
    """The raw data and labels (numpy arrays or tensors) of the file, read through diffcore's bounded
    readers: a regular file only, headers checked before any data is read, nothing unpickled."""
    keys = [key] + ([labels_key] if labels_key is not None else [])
    what = "dataset 'array':"
    if suffix == ".npy":
        return load_npy(path, what=what, kinds="biuf"), None
    got: list[Any]
    if suffix == ".npz":
        got = list(load_npz(path, keys, what=what))
    else:
        from safetensors.torch import load

        raw = read_bytes(path, what=what, limit=MAX_ARRAY_BYTES)
        try:
            tensors = load(raw)
        except Exception as exc:  # noqa: BLE001 - a damaged file raises the library's own errors
            raise UsageError(f"dataset 'array': cannot read {str(path)!r} as .safetensors: "
                             f"{type(exc).__name__}: {exc}") from None
        _check_keys(path, keys, list(tensors))
        got = [tensors[k] for k in keys]
    return got[0], (got[1] if labels_key is not None else None)


def _check_keys(path: Path, wanted: list[str], present: list[str]) -> None:
    for k in wanted:
        if k not in present:
            raise UsageError(f"dataset 'array': no key {k!r} in {str(path)!r}; keys present: "
                             f"{', '.join(sorted(present)) or 'none'}")


def _data(raw: Any, path: str) -> Tensor:
    if isinstance(raw, np.ndarray):
        if raw.dtype.kind not in "biuf":
            raise UsageError(f"dataset 'array': the data in {path!r} has dtype {raw.dtype}, which is not numeric; "
                             "store numbers (bool, integer or float)")
        x = torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float64))
    else:
        t = raw
        if t.is_complex():
            raise UsageError(f"dataset 'array': the data in {path!r} has dtype {t.dtype}, which is not real; "
                             "store bool, integer or float numbers")
        x = t.to(torch.float64)
    if x.ndim == 0 or x.shape[0] == 0:
        raise UsageError(f"dataset 'array': the data in {path!r} has shape {tuple(x.shape)}; expected (N, ...) "
                         "with N >= 1 samples")
    if x.ndim == 1:
        x = x[:, None]
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise UsageError(f"dataset 'array': the data in {path!r} has {bad} NaN or infinite values; remove them")
    x32 = x.float()
    if not bool(torch.isfinite(x32).all()):
        raise UsageError(f"dataset 'array': the data in {path!r} has values beyond float32's range "
                         f"(max |x| = {float(x.abs().max()):.3g}); rescale them")
    return x32


def _labels(raw: Any, n: int, path: str, key: str | None) -> Tensor:
    y = torch.from_numpy(np.ascontiguousarray(raw)) if isinstance(raw, np.ndarray) and raw.dtype.kind in "biuf" \
        else raw
    if not isinstance(y, Tensor) or y.is_complex() or y.dtype == torch.bool:
        dtype = raw.dtype if hasattr(raw, "dtype") else type(raw).__name__
        raise UsageError(f"dataset 'array': labels {key!r} in {path!r} have dtype {dtype}; expected integers")
    if tuple(y.shape) != (n,):
        raise UsageError(f"dataset 'array': labels {key!r} in {path!r} have shape {tuple(y.shape)}; expected "
                         f"({n},), one per data row")
    if y.is_floating_point() and not (bool(torch.isfinite(y).all()) and bool((y == y.round()).all())):
        raise UsageError(f"dataset 'array': labels {key!r} in {path!r} are not integers (dtype {y.dtype} "
                         "with fractional or non-finite values); store class indices 0, 1, ...")
    y64 = y.to(torch.int64)
    if int(y64.min()) < 0:
        raise UsageError(f"dataset 'array': labels {key!r} in {path!r} include {int(y64.min())}; class "
                         "indices must be >= 0")
    return y64
