"""Time and class embeddings shared by the backbones."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn


class TimeEmbedding(nn.Module):
    """``t`` ``(B,)`` -> ``(B, dim)``: ``features`` sinusoidal features of ``1000 t`` (DDPM, Vaswani et
    al.) or random Fourier features ``[sin, cos](2 pi w t)`` with fixed ``w ~ N(0, scale^2)`` drawn
    from a generator seeded with 0 (Tancik et al. 2020; NCSN++), then a two-layer SiLU MLP."""

    freqs: Tensor

    def __init__(self, dim: int, kind: Literal["sinusoidal", "fourier"] = "fourier", scale: float = 16.0,
                 features: int | None = None) -> None:
        super().__init__()
        half = max(1, (features or dim) // 2)
        if kind == "fourier":
            w = torch.randn(half, generator=torch.Generator().manual_seed(0)) * scale
        else:
            w = torch.exp(-math.log(10_000.0) * torch.arange(half) / half) * 1000.0 / (2 * math.pi)
        self.register_buffer("freqs", w)
        self.mlp = nn.Sequential(nn.Linear(2 * half, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        angles = 2 * math.pi * torch.outer(t.to(self.freqs.dtype), self.freqs)
        return self.mlp(torch.cat([torch.sin(angles), torch.cos(angles)], dim=1))


_INTEGER = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


class ClassEmbedding(nn.Module):
    """Labels ``(B,)`` in ``[0, num_classes]`` -> ``(B, dim)``; label ``num_classes`` is the null
    label (no condition), used for classifier-free guidance; ``None`` means all null."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, cond: Tensor | None, batch: int, device: torch.device) -> Tensor:
        n = self.num_classes
        if cond is None:
            cond = torch.full((batch,), n, dtype=torch.long, device=device)
        if cond.dtype not in _INTEGER:
            raise ValueError(f"cond must hold integer class labels, got dtype {cond.dtype}")
        if cond.shape != (batch,):
            raise ValueError(f"cond must have shape ({batch},) (one label per sample), got {tuple(cond.shape)}")
        if bool(((cond < 0) | (cond > n)).any()):
            raise ValueError(f"class labels must be in [0, {n}] ({n} is the null label), "
                             f"got values in [{int(cond.min())}, {int(cond.max())}]")
        return self.table(cond.long())


def embed(time: TimeEmbedding, classes: ClassEmbedding | None, t: Tensor, cond: Tensor | None,
          batch: int, device: torch.device) -> Tensor:
    """The time embedding plus the class embedding; an unconditional model rejects a ``cond``."""
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"t must have shape ({batch},) (one time per sample), got {tuple(t.shape)}")
    emb = time(t)
    if classes is None:
        if cond is not None:
            raise ValueError("this model is unconditional (num_classes is not set) but a cond was given")
        return emb
    return emb + classes(cond, batch, device)


def linear_parameters(fan_in: int, fan_out: int) -> int:
    """Weights and biases of ``nn.Linear(fan_in, fan_out)``."""
    return fan_in * fan_out + fan_out


def embedding_parameters(dim: int, features: int | None, num_classes: int | None) -> int:
    """Parameters of :class:`TimeEmbedding` ``(dim, features=features)`` plus, when ``num_classes`` is
    set, :class:`ClassEmbedding` ``(num_classes, dim)``: what :func:`embed` uses."""
    half = max(1, (features or dim) // 2)
    count = linear_parameters(2 * half, dim) + linear_parameters(dim, dim)
    return count + ((num_classes + 1) * dim if num_classes else 0)

