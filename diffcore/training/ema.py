"""Exponential moving average of a model's weights, with the usual decay warm-up.

After ``n`` earlier updates the average moves as ``ema <- d ema + (1 - d) w`` with
``d = min(decay, (1 + n) / (10 + n))``, so it does not remember the initial weights; the first
update copies ``w``. Parameters and floating-point buffers are averaged, other buffers copied.

The state dict has the layout of :class:`torch.optim.swa_utils.AveragedModel` (``module.<name>``
and ``n_averaged``), so checkpoints read the same either way; the update itself is one
``torch._foreach_lerp_`` over cached tensor lists instead of a Python loop over parameters.
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import Tensor, nn


class ExponentialMovingAverage(nn.Module):
    """A copy of ``model`` (``.module``) whose weights follow the EMA of ``model``'s."""

    n_averaged: Tensor

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__()
        self.module = copy.deepcopy(model)
        self.decay = decay
        self.register_buffer("n_averaged", torch.tensor(0, dtype=torch.long))
        self._source: int | None = None
        self._lists: tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]] = ([], [], [], [])

    def _tensors(self, model: nn.Module) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """(averaged floats, source floats, averaged others, source others), cached per source model
        (its tensors are updated in place by the optimiser, so the lists stay valid)."""
        if self._source != id(model):
            pairs = list(zip(itertools.chain(self.module.parameters(), self.module.buffers()),
                             itertools.chain(model.parameters(), model.buffers()), strict=True))
            floats = [(a.detach(), b.detach()) for a, b in pairs if a.is_floating_point()]
            others = [(a.detach(), b.detach()) for a, b in pairs if not a.is_floating_point()]
            self._lists = ([a for a, _ in floats], [b for _, b in floats],
                           [a for a, _ in others], [b for _, b in others])
            self._source = id(model)
        return self._lists

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        self._source = None  # moving or casting the copy replaces its tensors
        return super()._apply(fn, recurse)

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        """Move the average one step towards ``model``'s current weights."""
        averaged, current, averaged_other, current_other = self._tensors(model)
        n = int(self.n_averaged)
        if n == 0:
            torch._foreach_copy_(averaged, current)
        else:
            d = min(self.decay, (1.0 + n) / (10.0 + n))
            torch._foreach_lerp_(averaged, current, 1.0 - d)
        for a, b in zip(averaged_other, current_other, strict=True):
            a.copy_(b)
        self.n_averaged += 1
