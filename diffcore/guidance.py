"""Guidance: transformations of a conditional score function (classifier and classifier-free
guidance, inverse problems; Song et al. 2021, Sec. 5; Dhariwal & Nichol 2021; Ho & Salimans 2022;
Chung et al. 2023).

A pipeline applies its guidance components in order, each wrapping the score function that the
previous one returned (the first wraps the model's score), then binds the
:class:`~diffcore.condition.Condition` of each batch for the sampler. Every sampler therefore
accepts any guidance: it only ever sees a score.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor, nn

from diffcore.component import Component
from diffcore.condition import Condition
from diffcore.model import ConditionalScoreFn, ScoreModel
from diffcore.process import ForwardProcess


class Guidance(Component, abc.ABC):
    """Wraps a conditional score function ``(x, t, cond) -> score`` into a guided one.

    Implementers write :meth:`guide` and may override:

    - :attr:`needs`: the :class:`~diffcore.condition.Condition` fields read (``labels``, ``mask``,
      ``observed``); sampling without one of them is refused before the first step;
    - :attr:`reads`: the fields read when given, ``needs`` and the optional ones (default: ``needs``);
      a field that neither the model nor any guidance reads is refused, not silently ignored;
    - :meth:`check`: refuse, when the pipeline is assembled, a model or data shape this guidance
      cannot work with (raise :class:`~diffcore.errors.CompatibilityError` saying what to change);
      process capabilities go in ``requires``, as for every component;
    - :meth:`check_condition`: refuse a condition's values (labels out of range, say) before sampling;
    - :meth:`finalize`: change the final samples (inpainting restores the observed values);
    - :meth:`networks`: networks it evaluates besides the model (a classifier): the pipeline moves
      them with the model and counts their forward passes.

    Sampling runs without autograd; guidance that needs a gradient takes it with :func:`input_gradient`.
    """

    needs: ClassVar[frozenset[str]] = frozenset()
    reads: ClassVar[frozenset[str] | None] = None  # None: the same as needs

    def check(self, model: ScoreModel, process: ForwardProcess, shape: tuple[int, ...]) -> None:
        """Called once when a pipeline is assembled with ``model``, ``process`` and the sample ``shape``."""

    def check_condition(self, cond: Condition) -> None:
        """Called with the whole condition ``(num, ...)`` before sampling; raise
        :class:`~diffcore.errors.UsageError` naming the bad values."""

    @abc.abstractmethod
    def guide(self, score_fn: ConditionalScoreFn, process: ForwardProcess) -> ConditionalScoreFn:
        """Return the guided score function."""

    def finalize(self, x: Tensor, cond: Condition, process: ForwardProcess) -> Tensor:
        """The final samples ``x`` ``(B, *event)`` of a batch with condition ``cond``; default unchanged."""
        return x

    def networks(self) -> list[nn.Module]:
        """Networks this guidance evaluates besides the score model; default none."""
        return []


def input_gradient(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``grad_x sum(fn(x))`` for ``fn`` mapping ``x`` ``(B, *event)`` to per-sample values ``(B,)``,
    taken with autograd enabled (sampling otherwise runs without it); shape of ``x``, detached."""
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(fn(leaf).sum(), leaf)
    return grad.detach()


def in_interval(t: Tensor, interval: tuple[float, float] | list[float] | None) -> Tensor:
    """Per-sample ``(B,)`` bool: whether ``t`` ``(B,)`` lies in the closed ``interval`` (``None``: always)."""
    if interval is None:
        return torch.ones_like(t, dtype=torch.bool)
    lo, hi = interval
    return (t >= lo) & (t <= hi)
