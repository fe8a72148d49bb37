"""Guidance: transformations of a conditional score function (seed 003: classifier and
classifier-free guidance; inverse problems)."""

from __future__ import annotations

import abc

from diffcore.component import Component
from diffcore.model import ConditionalScoreFn
from diffcore.process import ForwardProcess


class Guidance(Component, abc.ABC):
    """Wraps a conditional score function into a guided one.

    Guidance composes: a pipeline applies its list of guidance components in order, each wrapping
    the result of the previous one, then binds the condition for the sampler.
    """

    @abc.abstractmethod
    def guide(self, score_fn: ConditionalScoreFn, process: ForwardProcess) -> ConditionalScoreFn:
        """Return the guided score function."""
