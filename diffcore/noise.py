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

import functools
import math
import zlib

import torch
from torch import Tensor

_MASK32 = 0xFFFFFFFF


def _mul32(x: Tensor, c: int) -> Tensor:
    """``(x * c) mod 2^32`` for ``x`` in ``[0, 2^32)`` without int64 overflow.

    With ``x = x_hi 2^16 + x_lo`` and ``c = c_hi 2^16 + c_lo``, ``x c = x c_lo + x_lo c_hi 2^16``
    modulo ``2^32``; both terms stay below ``2^48``.
    """
    return torch.add(x * (c & 0xFFFF), x & 0xFFFF, alpha=(c >> 16) << 16).bitwise_and_(_MASK32)


def _mix32(x: Tensor) -> Tensor:
    """The ``lowbias32`` integer hash on int64 tensors holding 32-bit values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _mix32_int(x: int) -> int:
    """:func:`_mix32` on one Python integer in ``[0, 2^32)``."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def _mix_int(h: int, word: int) -> int:
    return _mix32_int((h ^ (word & _MASK32)) & _MASK32)


@functools.lru_cache(maxsize=16)
def _words(count: int, device: torch.device) -> Tensor:
    """The hashed element counters ``(1, count)``: a pure function of ``count``, cached per device
    (never modified in place)."""
    counters = torch.arange(count, dtype=torch.int64, device=device)
    return _mix32(counters ^ 0x27D4EB2F)[None, :]


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
        subset = NoiseSource.__new__(NoiseSource)  # the rows' keys are already hashed
        subset.seed, subset._key = self.seed, self._key
        subset.indices, subset._row_keys = self.indices[rows], self._row_keys[rows]
        return subset

    def _bits(self, event_shape: tuple[int, ...], step: int, stream: str, draws: int) -> list[Tensor]:
        numel = math.prod(event_shape)
        sid = zlib.crc32(stream.encode())
        key = _mix32(self._row_keys ^ _mix_int(_mix_int(0x85EBCA6B, sid), step))[:, None]  # (B, 1)
        words = _words(numel * draws, self.device)  # (1, numel * draws)
        bits = _mix32(_mix32(key ^ words).add_(key).bitwise_and_(_MASK32))
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


_DrawKey = tuple[str, tuple[int, ...], int, str, torch.dtype]


class BatchNoise:
    """The noise of consecutive training batches, drawn ``block`` batches at a time.

    Batch ``step`` holds samples ``step * stride + offset + j`` for ``j < size`` (``stride``: the
    global batch size; ``offset`` and ``size``: this process's slice of it). :meth:`at` returns its
    :class:`NoiseSource`, which gives exactly the numbers of ``NoiseSource(seed, indices)`` for those
    indices, but each ``uniform`` or ``normal`` request is computed for all the batches of the
    block at once and kept, and later batches get their rows of it. The integer hashing (a few
    dozen small kernels per request) then runs once per block instead of once per step, which is
    most of its cost for small batches. Memory: every request is held for ``block`` batches.
    """

    def __init__(self, seed: int, stride: int, *, offset: int = 0, size: int | None = None,
                 device: torch.device | str = "cpu", block: int = 32) -> None:
        if block < 1:
            raise ValueError(f"block must be positive, got {block}")
        self.seed, self.stride, self.offset = seed, stride, offset
        self.size = stride - offset if size is None else size
        self.device, self.block = torch.device(device), block
        self._start = 0
        self._held: _Block | None = None

    def at(self, step: int) -> NoiseSource:
        """The noise of batch ``step``: ``size`` rows."""
        if self._held is None or not self._start <= step < self._start + self.block:
            steps = torch.arange(step, step + self.block, dtype=torch.int64, device=self.device)
            rows = torch.arange(self.offset, self.offset + self.size, dtype=torch.int64, device=self.device)
            self._start = step
            self._held = _Block(NoiseSource(self.seed, (steps[:, None] * self.stride + rows).reshape(-1)))
        lo = (step - self._start) * self.size
        return _BlockRows(self._held, slice(lo, lo + self.size))


class _Block:
    """A :class:`NoiseSource` over several batches and the draws requested from it so far."""

    def __init__(self, source: NoiseSource) -> None:
        self.source = source
        self.draws: dict[_DrawKey, Tensor] = {}

    def draw(self, key: _DrawKey) -> Tensor:
        if key not in self.draws:
            kind, event_shape, step, stream, dtype = key
            draw = self.source.uniform if kind == "uniform" else self.source.normal
            self.draws[key] = draw(event_shape, step=step, stream=stream, dtype=dtype)
        return self.draws[key]


class _BlockRows(NoiseSource):
    """Rows ``rows`` of a :class:`_Block`: its draws are (copies of) slices of the block's."""

    def __init__(self, block: _Block, rows: slice) -> None:
        source = block.source  # the rows' keys are already hashed
        self.seed, self._key = source.seed, source._key
        self.indices, self._row_keys = source.indices[rows], source._row_keys[rows]
        self._block, self._rows = block, rows

    def uniform(self, event_shape: tuple[int, ...], *, step: int, stream: str = "step",
                dtype: torch.dtype = torch.float32) -> Tensor:
        return self._block.draw(("uniform", tuple(event_shape), step, stream, dtype))[self._rows].clone()

    def normal(self, event_shape: tuple[int, ...], *, step: int, stream: str = "step",
               dtype: torch.dtype = torch.float32) -> Tensor:
        return self._block.draw(("normal", tuple(event_shape), step, stream, dtype))[self._rows].clone()
