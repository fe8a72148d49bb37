"""Classifier-free guidance (Ho & Salimans 2022)."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from diffcore.component import describe
from diffcore.condition import Condition
from diffcore.errors import CompatibilityError
from diffcore.guidance import Guidance, in_interval
from diffcore.model import ConditionalScoreFn, ScoreModel
from diffcore.process import ForwardProcess
from diffcore.utils import bcast
from diffcore_guidance.common import IntervalParams

MAX_SCALE = 1e4
"""The largest guidance weight accepted (peers' users rarely go beyond 20)."""


class CFGParams(IntervalParams):
    """Parameters of ``cfg``."""

    scale: float = Field(1.0, ge=-1.0, le=MAX_SCALE, description="The guidance weight w: s(x, y) + w (s(x, y) - "
                         "s(x, null)). 0: the plain conditional score; -1: the unconditional one; larger: "
                         "samples more typical of their class, less diverse.")


class ClassifierFree(Guidance):
    """Classifier-free guidance (Ho & Salimans 2022): push the score of a model trained with label dropout from
    unconditional towards class-conditional; ``scale`` trades diversity for fidelity.

    Classifier-free guidance (Ho & Salimans 2022, eq. 6, in score form) with the guidance weight
    ``w = scale``, the conditional and unconditional scores from one batched forward pass.

    ::

        s_w(x, y) = s(x, y) + w (s(x, y) - s(x, null)) = (1 + w) s(x, y) - w s(x, null)

    with one class-conditional network trained with label dropout (``train.label_dropout``), ``null``
    being its null label. Both scores come from one forward pass over the batch doubled, ``2 B`` rows
    (the result's ``forward_passes`` shows it); at ``w = 0``, or outside ``interval``, the plain
    conditional score is one pass over ``B`` rows. ``w (s(x, y) - s(x, null))`` is ``w`` times the score
    of an implicit classifier ``p_t(y | x)``, so ``w`` plays the part of classifier guidance's
    ``scale - 1``. Needs the condition's ``labels`` ``(B,)``.
    """

    name = "cfg"
    Params = CFGParams
    params: CFGParams
    needs = frozenset({"labels"})

    def __init__(self, params: CFGParams | None = None, /, **kwargs: object) -> None:
        super().__init__(params, **kwargs)
        self._null: int | None = None

    def check(self, model: ScoreModel, process: ForwardProcess, shape: tuple[int, ...]) -> None:
        self.params.check_interval(self.name, process)
        if model.null_label is None:
            raise CompatibilityError(
                f"guidance 'cfg' needs a class-conditional model, but model {describe(model)} is unconditional; "
                "train one with num_classes and train.label_dropout (the gmm model: give labels), or use "
                "guidance 'classifier' with a noise-conditional classifier")
        self._null = model.null_label

    def guide(self, score_fn: ConditionalScoreFn, process: ForwardProcess) -> ConditionalScoreFn:
        w, interval = self.params.scale, self.params.interval

        def guided(x: Tensor, t: Tensor, cond: Condition) -> Tensor:
            active = in_interval(t, interval)
            if w == 0.0 or not bool(active.any()) or cond.labels is None:
                return score_fn(x, t, cond)
            if self._null is None:
                raise CompatibilityError("guidance 'cfg' was not checked against a model; assemble it in a Pipeline")
            null = torch.full_like(cond.labels, self._null)
            both = score_fn(torch.cat([x, x]), torch.cat([t, t]), Condition.concat([cond, cond.with_labels(null)]))
            conditional, unconditional = both.chunk(2)
            weight = bcast(w * active.to(x.dtype), x)
            return conditional + weight * (conditional - unconditional)

        return guided
