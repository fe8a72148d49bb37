"""Score models: networks or analytic models evaluated as ``(x, t, cond) -> output``.

A model declares what its output means (:data:`OutputKind`); :func:`to_score` converts any kind into
the score ``grad_x log p_t(x)`` for any linear-Gaussian process, so samplers only ever see scores.
With ``x_t = alpha x_0 + sigma eps`` (seed 003 for the eps form, Salimans & Ho 2022 for v):

==========  ===========================  ==========================================
kind        the model predicts           score
==========  ===========================  ==========================================
score       ``grad log p_t(x)``          itself
eps         the noise ``eps``            ``-eps / sigma``
x0          the clean data ``x_0``       ``(alpha x0 - x) / sigma^2`` (Tweedie)
v           ``alpha eps - sigma x_0``    via ``x0 = (alpha x - sigma v) / (alpha^2 + sigma^2)``
==========  ===========================  ==========================================
"""

from __future__ import annotations

import abc
from typing import Literal, Protocol, get_args

from torch import Tensor, nn

from diffcore.component import Component, component_errors, describe
from diffcore.condition import Condition
from diffcore.errors import CompatibilityError, PluginError
from diffcore.process import LINEAR_GAUSSIAN, ForwardProcess, require_linear_gaussian
from diffcore.utils import bcast

OutputKind = Literal["score", "eps", "x0", "v"]
OUTPUT_KINDS: tuple[str, ...] = get_args(OutputKind)


class ScoreModel(Component, nn.Module):
    """A score model: ``forward(x, t, cond=None)`` with ``x`` ``(B, *event)``, ``t`` ``(B,)`` and an
    optional ``cond`` ``(B, ...)`` returns ``(B, *event)`` of kind :attr:`output`.

    Analytic models that need the process (the Gaussian-mixture model computes the exact score of
    ``p_t``) receive it through :meth:`bind`, called once when a pipeline is assembled.
    ``event_shape`` may be set by models that know their data shape, so specs need not state it.

    A class-conditional model takes integer labels ``cond`` ``(B,)`` and declares the label that
    means "no condition" as :attr:`null_label` (classifier-free guidance, Ho & Salimans 2022); an
    unconditional model leaves it ``None``, and training then ignores the data's labels.
    """

    output: OutputKind = "score"
    event_shape: tuple[int, ...] | None = None

    @property
    def null_label(self) -> int | None:
        """The label meaning "no condition" for a class-conditional model, ``None`` for an
        unconditional one."""
        return None

    @property
    def conditional(self) -> bool:
        """Whether the model is class-conditional (declares a :attr:`null_label`)."""
        return self.null_label is not None

    def requirements(self) -> dict[str, str]:
        """A model predicting anything but the score needs ``alpha`` and ``sigma`` to be turned into
        one (:func:`to_score`): a linear-Gaussian process."""
        needs = super().requirements()
        if self.output != "score":
            needs.setdefault(LINEAR_GAUSSIAN, f"{describe(self)} predicting {self.output!r}")
        return needs

    def bind(self, process: ForwardProcess) -> None:
        """Called with the process when the model is assembled into a pipeline."""

    @abc.abstractmethod
    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """Model output of kind :attr:`output`, shape ``(B, *event)``."""


def to_score(output: Tensor, kind: str, x: Tensor, t: Tensor, process: ForwardProcess) -> Tensor:
    """Convert a model output of ``kind`` at ``(x, t)`` to the score; shapes ``(B, *event)``."""
    if kind == "score":
        return output
    lg = require_linear_gaussian(process, f"turning a model output {kind!r} into a score")
    alpha, sigma = bcast(lg.alpha(t), x), bcast(lg.sigma(t), x)
    if kind == "eps":
        return -output / sigma
    if kind == "x0":
        x0 = output
    elif kind == "v":
        x0 = (alpha * x - sigma * output) / (alpha**2 + sigma**2)
    else:
        raise CompatibilityError(f"unknown model output kind {kind!r}; expected one of {OUTPUT_KINDS}")
    return (alpha * x0 - x) / sigma**2


def convert(output: Tensor, kind: str, target: str, x: Tensor, t: Tensor, process: ForwardProcess) -> Tensor:
    """Convert a model output of ``kind`` at ``(x, t)`` into ``target`` (score, eps, x0 or v)."""
    score = to_score(output, kind, x, t, process)
    if target == "score":
        return score
    lg = require_linear_gaussian(process, f"converting a score to {target!r}")
    alpha, sigma = bcast(lg.alpha(t), x), bcast(lg.sigma(t), x)
    eps = -sigma * score
    x0 = (x - sigma * eps) / alpha
    if target == "eps":
        return eps
    if target == "x0":
        return x0
    if target == "v":
        return alpha * eps - sigma * x0
    raise CompatibilityError(f"unknown target kind {target!r}; expected one of {OUTPUT_KINDS}")


class ConditionalScoreFn(Protocol):
    """``(x, t, cond) -> score``: ``x`` ``(B, *event)``, ``t`` ``(B,)`` and a
    :class:`~diffcore.condition.Condition` of ``B`` rows to a score ``(B, *event)``."""

    def __call__(self, x: Tensor, t: Tensor, cond: Condition) -> Tensor: ...


def score_function(model: ScoreModel, process: ForwardProcess) -> ConditionalScoreFn:
    """The score ``(x, t, cond) -> (B, *event)`` of ``model`` under ``process``, whatever the model
    predicts: the one place a model's output becomes a score (samplers, guidance, objectives). A
    class-conditional model receives ``cond.labels`` (``None``: its null label); an unconditional
    model ignores the condition."""

    def score(x: Tensor, t: Tensor, cond: Condition) -> Tensor:
        labels = cond.labels if model.conditional else None
        with component_errors(model, "computing its output"):
            out = model(x, t, labels)
        if not isinstance(out, Tensor) or out.shape != x.shape:
            got = f"shape {tuple(out.shape)}" if isinstance(out, Tensor) else type(out).__name__
            raise PluginError(f"model {model.name!r} ({type(model).__module__}) returned {got} for input of shape "
                              f"{tuple(x.shape)}; a score model's output has its input's shape")
        return to_score(out, model.output, x, t, process)

    return score
