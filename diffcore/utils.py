"""Small tensor helpers shared by core and plugins."""

from __future__ import annotations

from torch import Tensor


def bcast(coef: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample coefficient ``(B,)`` to ``(B, 1, ..., 1)`` so it broadcasts against ``x``
    of shape ``(B, *event)`` whatever the number of event dimensions; cast to ``x``'s dtype."""
    return coef.to(x.dtype).reshape(coef.shape[0], *([1] * (x.ndim - 1)))
