"""Time and class embeddings shared by the backbones."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn


class TimeEmbedding(nn.Module):
    """``t`` ``(B,)`` -> ``(B, dim)``: sinusoidal features of ``1000 t`` (DDPM, Vaswani et al.) or
    random Fourier features ``[sin, cos](2 pi w t)`` with fixed ``w ~ N(0, scale^2)`` (Tancik et al.
    2020; NCSN++), followed by a two-layer SiLU MLP."""

    def __init__(self, dim: int, kind: Literal["sinusoidal", "fourier"] = "fourier", scale: float = 16.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dimension must be even, got {dim}")
        self.kind = kind
        half = dim // 2
        if kind == "fourier":
            w = torch.randn(half, generator=torch.Generator().manual_seed(0)) * scale
        else:
            w = torch.exp(-math.log(10_000.0) * torch.arange(half) / half) * 1000.0 / (2 * math.pi)
        self.register_buffer("freqs", w)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    freqs: Tensor

    def forward(self, t: Tensor) -> Tensor:
        angles = 2 * math.pi * t.to(self.freqs.dtype)[:, None] * self.freqs[None, :]
        return self.mlp(torch.cat([torch.sin(angles), torch.cos(angles)], dim=1))


class ClassEmbedding(nn.Module):
    """Labels ``(B,)`` in ``[0, num_classes]`` -> ``(B, dim)``; label ``num_classes`` is the null
    label (no condition), used for classifier-free guidance; ``None`` means all null."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, cond: Tensor | None, batch: int, device: torch.device) -> Tensor:
        if cond is None:
            cond = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        if cond.dtype not in (torch.int32, torch.int64) or bool(((cond < 0) | (cond > self.num_classes)).any()):
            raise ValueError(f"class labels must be integers in [0, {self.num_classes}] "
                             f"({self.num_classes} is the null label)")
        return self.table(cond.long())
