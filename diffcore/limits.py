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
MAX_PARAMETERS = 1 << 30
"""Most trainable parameters of a network (4 GiB in float32, above Stable Diffusion's U-Net); counted
from the Params, before any weight is allocated, so ``hidden: 65536, depth: 1024`` is refused at
once instead of asking for 17 TB."""
MAX_COMPONENTS = 1 << 16
"""Most components of a Gaussian mixture (the ``gmm`` model, the ``gmm_samples`` dataset)."""
MAX_DATASET_VALUES = 1 << 26
"""Most values a generated dataset holds (points x values per point: 256 MiB in float32)."""
MAX_SEED = (1 << 63) - 1
"""Largest seed (a signed 64-bit integer; torch generators take no more)."""
MIN_HALF_LOG_SNR = -20.0
"""Smallest half log-SNR ``lambda(T) = log(alpha(T) / sigma(T))`` of a linear-Gaussian process: the
most noise at ``T``. At the defaults: vp and subvp ``beta_max`` up to 79.8 (``T = 1``), ``T`` up to
1.99 (``beta_max = 20``); ve ``sigma_max`` up to 4.85e8. Usual settings stay above -8 (vp -5.0, ve
with ``sigma_max`` 50 -3.9, EDM -4.4).

Measured (every sampler on the analytic mixture, 2000 samples, energy distance within 3 floor stds
and mode weights within 0.045, at up to 16 times its conformance steps): all correct down to -25 on
vp, subvp and ve; from -30 heun on its karras grid fails even at 400 steps (its rho = 7 grid leaves
a handful of steps where the modes form); at -40 (ve ``sigma_max`` 2.4e17) every sampler returns
NaN in float32, and at vp ``beta_max`` 1e4 ``alpha(T)`` underflows and six samplers divided by zero."""
MAX_PRIOR_HALF_LOG_SNR = 0.0
"""Largest half log-SNR ``lambda(T)``: at ``T`` a process must hold at least as much noise as signal
(``alpha(T) <= sigma(T)``), or its prior, which samplers start from, is not its marginal there and the
samples come out as (nearly) the prior's noise: vp with ``T = 1e-10`` (lambda 12.7) did that. Usual
settings are below -2 (vp -5.0, ve with ``sigma_max`` 50 -3.9, the digits spec's vp -2.5)."""
MAX_HALF_LOG_SNR = 20.0
"""Largest half log-SNR ``lambda(t_min)``: the least noise at ``t_min``. At the defaults: vp ``t_min``
down to 4.25e-17, subvp 2.07e-8 (its ``sigma`` is ``B``, not ``sqrt(B)``), ve 2.5e-15. Usual settings
stay below 10 (vp 4.6 at ``t_min`` 1e-3, ve 8.9 at 1e-5, EDM 6.2).

Measured as :data:`MIN_HALF_LOG_SNR`: all samplers correct up to 40 (at most 4 times their
conformance steps); at 47 (vp ``t_min`` 1e-40, below float32's smallest normal number) ddim and
dpm_solver, correct at 40 with the same steps, fail (3 and 10 floor stds); ``t_min: 1e-300`` (lambda
346) gave finite garbage (200 to 1000 floor stds) and unipc NaN."""
MIN_TOLERANCE = 1e-10
"""Smallest rtol/atol of an adaptive solver. Measured: dopri5 on the probability-flow ODE of the
reference mixture (vp, float32) takes 314 evaluations at 1e-8, 1370 at 1e-10, and at 1e-12 had not
finished after two minutes: below float32 resolution the error estimate cannot reach the tolerance
and the step size shrinks without end."""


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
OptionalEventShape = Annotated[
    list[Annotated[int, Field(gt=0, le=MAX_EVENT_VALUES, strict=True)]],
    Field(max_length=MAX_EVENT_DIMS),
    AfterValidator(_event_shape),
]
"""Like :data:`EventShape`, or empty (the spec's top-level ``shape``: empty means the model's own)."""
Levels = Annotated[int, Field(ge=2, le=MAX_STEPS)]
"""A number of noise levels (a ladder from ``T`` to ``t_min``): 2 to :data:`MAX_STEPS`."""
Classes = Annotated[int, Field(gt=0, le=MAX_CLASSES)]
"""A number of classes: 1 to :data:`MAX_CLASSES`."""
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
"""A seed: 0 to :data:`MAX_SEED`."""
Tolerance = Annotated[float, Field(ge=MIN_TOLERANCE, le=1.0)]
"""A relative or absolute tolerance of an adaptive solver: :data:`MIN_TOLERANCE` to 1."""


def check_total(what: str, total: int, limit: int, fix: str) -> None:
    """Raise ``ValueError`` (turned into a spec error naming the field by pydantic) when a product of
    bounded sizes, ``total``, exceeds ``limit``; ``what`` names it, ``fix`` says what to lower."""
    if total > limit:
        raise ValueError(f"{what} is {total}; at most {limit} is supported: {fix}")
