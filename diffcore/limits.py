"""Bounds on what users may ask for, in one place: spec sizes, solver steps, samples and shapes.

Every bound is far beyond any sensible run and far below what would exhaust memory or overflow a
64-bit integer, so a typo (``steps: 2000000000``, ``shape: [-2]``) is refused at once with the range
instead of hanging, crashing or allocating terabytes. Components use the annotated types
(``steps: Steps = Field(50, ...)``) so the bound shows in the JSON Schema and in ``diffcore list``.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field

MAX_SPEC_BYTES = 1 << 20
"""Largest spec file (1 MiB); checked before the file is read."""
MAX_SPEC_VALUES = 100_000
"""Most values a spec may expand to (YAML aliases can make a few bytes stand for billions)."""
MAX_SPEC_DEPTH = 32
"""Deepest nesting of mappings and lists in a spec."""
MAX_INT_DIGITS = 30
"""Most digits of an integer in a spec (int64 has 19): longer ones are typos or attacks."""
MAX_STEPS = 1_000_000
"""Most solver steps (or Langevin iterations) of a sampler, and optimiser steps of a training run."""
MAX_SAMPLES = 1 << 31
"""Most samples one ``diffcore sample`` run draws."""
MAX_EVENT_VALUES = 1 << 24
"""Most values in one sample (e.g. 4 x 2048 x 2048)."""
MAX_EVENT_DIMS = 8
"""Most dimensions of one sample's shape."""
MAX_ARRAY_BYTES = 1 << 36
"""Largest array file read (64 GiB), checked against the header before any data is read."""
MAX_CHECKPOINT_BYTES = 1 << 36
"""Largest checkpoint file read (64 GiB)."""
MAX_WIDTH = 1 << 16
"""Most channels or hidden units of one network layer."""
MAX_DEPTH = 1024
"""Most layers or blocks of a network."""
MAX_CLASSES = 1 << 20
"""Most classes of a conditional model."""


def _event_shape(shape: list[int]) -> list[int]:
    total = 1
    for size in shape:
        total *= size
    if total > MAX_EVENT_VALUES:
        raise ValueError(f"a sample of shape {shape} holds {total} values; at most {MAX_EVENT_VALUES} are supported")
    return shape


Steps = Annotated[int, Field(gt=0, le=MAX_STEPS)]
"""A number of solver steps or iterations: 1 to :data:`MAX_STEPS`."""
Width = Annotated[int, Field(gt=0, le=MAX_WIDTH)]
"""A layer width (hidden units, channels): 1 to :data:`MAX_WIDTH`."""
Depth = Annotated[int, Field(gt=0, le=MAX_DEPTH)]
"""A number of layers or blocks: 1 to :data:`MAX_DEPTH`."""
EventShape = Annotated[
    list[Annotated[int, Field(gt=0, le=MAX_EVENT_VALUES)]],
    Field(min_length=1, max_length=MAX_EVENT_DIMS),
    AfterValidator(_event_shape),
]
"""The shape of one sample: 1 to :data:`MAX_EVENT_DIMS` positive sizes, at most
:data:`MAX_EVENT_VALUES` values in all."""
