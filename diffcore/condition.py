"""What samples are conditioned on: class labels and observations, one row per sample.

A :class:`Condition` travels with a batch from :meth:`diffcore.pipeline.Pipeline.sample` through
every guidance component to the model. Each field is optional; a guidance component declares the
fields it reads (:attr:`diffcore.guidance.Guidance.needs`), and the pipeline refuses to start
sampling when one is missing.

==========  =====================  ==================================================================
field       shape                  meaning
==========  =====================  ==================================================================
labels      ``(B,)`` int64         class labels (a conditional model's ``cond``; classifier guidance)
mask        ``(B, *event)`` bool   True where a coordinate is observed (inpainting; DPS with a mask)
observed    ``(B, *event)``        the observed values (read where ``mask`` is True), or
            or ``(B, m)``          the measurements ``y = A x + noise`` of a matrix operator ``A``
==========  =====================  ==================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from diffcore.errors import UsageError

FIELDS = ("labels", "mask", "observed")
"""The fields of a :class:`Condition`, as guidance components name them in ``needs``."""

_INTEGER = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


@dataclass(frozen=True)
class Condition:
    """Labels ``(B,)`` and observations ``(B, ...)`` for a batch of ``B`` samples (see the module
    docstring); fields left ``None`` are not given."""

    labels: Tensor | None = None
    mask: Tensor | None = None
    observed: Tensor | None = None

    @classmethod
    def of(cls, cond: Condition | Tensor | None) -> Condition:
        """A :class:`Condition` from one, from labels ``(B,)`` alone, or empty from ``None``."""
        if cond is None:
            return cls()
        if isinstance(cond, Condition):
            return cond
        return cls(labels=cond)

    def given(self) -> frozenset[str]:
        """The names of the fields that are set."""
        return frozenset(f.name for f in fields(self) if getattr(self, f.name) is not None)

    def rows(self, lo: int, hi: int) -> Condition:
        """Rows ``lo:hi`` of every field."""
        return Condition(**{name: None if value is None else value[lo:hi] for name, value in self._items()})

    def to(self, device: torch.device | str, dtype: torch.dtype) -> Condition:
        """On ``device``: labels as int64, the mask as bool, observations in ``dtype``."""
        kinds = {"labels": torch.long, "mask": torch.bool, "observed": dtype}
        return Condition(**{name: None if value is None else value.to(device=device, dtype=kinds[name])
                            for name, value in self._items()})

    def with_labels(self, labels: Tensor | None) -> Condition:
        """The same condition with other labels."""
        return replace(self, labels=labels)

    @staticmethod
    def concat(parts: list[Condition]) -> Condition:
        """The conditions of several batches, one after the other (a field set in every part or in none)."""
        joined: dict[str, Tensor | None] = {}
        for name in FIELDS:
            values = [getattr(p, name) for p in parts]
            if all(v is None for v in values):
                joined[name] = None
            elif any(v is None for v in values):
                raise ValueError(f"cannot join conditions where only some give {name!r}")
            else:
                joined[name] = torch.cat(values)  # type: ignore[arg-type]
        return Condition(**joined)

    def check(self, num: int, shape: tuple[int, ...]) -> None:
        """Refuse fields without one row per sample (``num``), non-integer labels, a mask whose
        shape is not ``(num, *shape)``, or NaN / Inf observations."""
        for name, value in self._items():
            if value is not None and (value.ndim == 0 or value.shape[0] != num):
                need = f"({num},)" if name == "labels" else f"({num}, ...)"
                raise UsageError(f"the condition's {name} have shape {tuple(value.shape)}; {num} samples need one "
                                 f"row each, {need}")
        if self.labels is not None and (self.labels.dtype not in _INTEGER or self.labels.ndim != 1):
            raise UsageError(f"class labels must be integers of shape ({num},), got {self.labels.dtype} of "
                             f"shape {tuple(self.labels.shape)}")
        if self.mask is not None and tuple(self.mask.shape) != (num, *shape):
            raise UsageError(f"the mask has shape {tuple(self.mask.shape)} but {num} samples of shape {shape} need "
                             f"{(num, *shape)} (True where a value is observed)")
        if self.observed is not None and not bool(torch.isfinite(self.observed.double()).all()):
            raise UsageError("the observed values hold NaN or Inf; mark unobserved coordinates in the mask "
                             "and give any finite value there")

    def _items(self) -> list[tuple[str, Tensor | None]]:
        return [(name, getattr(self, name)) for name in FIELDS]
