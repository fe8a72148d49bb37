"""Counter-based noise: every random number is a pure function of (seed, sample index, step, stream,
element), computed with integer torch ops on any device.

This is what makes sampling reproducible whatever the batch size, the chunking or the number of
processes: sample ``i`` sees the same noise whether it is drawn alone, in a batch of 20 000, or on
rank 3 of a distributed run; and CPU and CUDA draw the same numbers (the integer hash is exact, the
Box-Muller transform runs in float64).

The hash is Chris Wellons' ``lowbias32`` mixer chained over the counter words (multiplications split
into 16-bit halves so no intermediate overflows int64); uniforms are ``(h + 0.5) / 2^32`` and
normals come from the Box-Muller transform of two independent uniforms.
"""

from __future__ import annotations

import math
import zlib

import torch
from torch import Tensor

_MASK32 = 0xFFFFFFFF


def _mul32(x: Tensor, c: int) -> Tensor:
    """``(x * c) mod 2^32`` for ``x`` in ``[0, 2^32)`` without int64 overflow."""
    lo = x * (c & 0xFFFF)
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & _MASK32


def _mix32(x: Tensor) -> Tensor:
    """The ``lowbias32`` integer hash on int64 tensors holding 32-bit values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _mix_int(h: int, word: int) -> int:
    return int(_mix32(torch.tensor((h ^ (word & _MASK32)) & _MASK32, dtype=torch.int64)))


class NoiseSource:
    """Noise for a batch of samples with known global indices.

    Args:
        seed: any non-negative integer below ``2**64``.
        indices: ``(B,)`` int64 tensor of global sample indices (row ``r`` of every drawn tensor
            belongs to sample ``indices[r]``); its device is where noise is drawn.
    """

    def __init__(self, seed: int, indices: Tensor) -> None:
        if not 0 <= seed < 2**64:
            raise ValueError(f"seed must be in [0, 2**64), got {seed}")
        if indices.ndim != 1:
            raise ValueError(f"indices must have shape (B,), got {tuple(indices.shape)}")
        self.seed = seed
        self.indices = indices.to(torch.int64)
        h = _mix_int(0x9E3779B9, seed)
        self._key = _mix_int(h, seed >> 32)
        lo = self.indices & _MASK32
        hi = (self.indices >> 32) & _MASK32
        self._row_keys = _mix32(_mix32(lo ^ self._key) ^ hi)

    @classmethod
    def range(cls, seed: int, start: int, stop: int, device: torch.device | str = "cpu") -> NoiseSource:
        """Noise for samples ``start, ..., stop - 1``."""
        return cls(seed, torch.arange(start, stop, dtype=torch.int64, device=device))

    @property
    def batch_size(self) -> int:
        return int(self.indices.shape[0])

    @property
    def device(self) -> torch.device:
        return self.indices.device

    def __getitem__(self, rows: Tensor | slice) -> NoiseSource:
        """Noise for a subset of the rows (the samples keep their global indices)."""
        return NoiseSource(self.seed, self.indices[rows])

    def _bits(self, event_shape: tuple[int, ...], step: int, stream: str, draws: int) -> list[Tensor]:
        numel = math.prod(event_shape)
        sid = zlib.crc32(stream.encode())
        key = _mix32(self._row_keys ^ _mix_int(_mix_int(0x85EBCA6B, sid), step))[:, None]  # (B, 1)
        counters = torch.arange(numel * draws, dtype=torch.int64, device=self.device)
        words = _mix32(counters ^ 0x27D4EB2F)[None, :]  # (1, numel * draws)
        bits = _mix32((_mix32(key ^ words) + key) & _MASK32)
        return [b.reshape(self.batch_size, *event_shape) for b in bits.chunk(draws, dim=1)]

    def uniform(self, event_shape: tuple[int, ...], *, step: int, stream: str = "step",
                dtype: torch.dtype = torch.float32) -> Tensor:
        """``(B, *event_shape)`` uniforms in the open interval ``(0, 1)``."""
        (bits,) = self._bits(tuple(event_shape), step, stream, 1)
        return ((bits.to(torch.float64) + 0.5) * 2.0**-32).to(dtype)

    def normal(self, event_shape: tuple[int, ...], *, step: int, stream: str = "step",
               dtype: torch.dtype = torch.float32) -> Tensor:
        """``(B, *event_shape)`` standard normal draws for ``step`` of ``stream``."""
        b1, b2 = self._bits(tuple(event_shape), step, stream, 2)
        u1 = (b1.to(torch.float64) + 0.5) * 2.0**-32
        u2 = (b2.to(torch.float64) + 0.5) * 2.0**-32
        z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)
        return z.to(dtype)
