"""Small tensor helpers shared by core and plugins."""

from __future__ import annotations

import os
from pathlib import Path

from torch import Tensor


def bcast(coef: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample coefficient ``(B,)`` to ``(B, 1, ..., 1)`` so it broadcasts against ``x``
    of shape ``(B, *event)`` whatever the number of event dimensions; cast to ``x``'s dtype."""
    return coef.to(x.dtype).reshape(coef.shape[0], *([1] * (x.ndim - 1)))


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically: a temporary file in the same folder, then a rename, so a
    reader never sees a partial file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
