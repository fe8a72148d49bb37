"""Noise-conditional classifiers ``p_t(y | x_t)``: the component kind that classifier guidance uses
(Song et al. 2021, Sec. 5 and Appendix I.4; Dhariwal & Nichol 2021, Sec. 4).

A classifier is trained like a score model, by ``diffcore train`` on labelled data, with the
cross-entropy of its prediction at perturbed data ``x_t`` (``t`` uniform on ``[t_min, T]``): see
:class:`CrossEntropy`.
"""

from __future__ import annotations

import abc
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffcore.component import Component
from diffcore.errors import UsageError
from diffcore.noise import NoiseSource
from diffcore.objective import Objective
from diffcore.process import LINEAR_GAUSSIAN, ForwardProcess, require_linear_gaussian
from diffcore.utils import bcast


class NoiseClassifier(Component, nn.Module):
    """``forward(x, t)`` with ``x`` ``(B, *event)`` and ``t`` ``(B,)`` returns class logits
    ``(B, num_classes)`` of ``p_t(y | x_t = x)``.

    Analytic classifiers that need the process receive it through :meth:`bind`, as models do.
    ``event_shape`` may be set by classifiers that know their data shape.
    """

    requires = frozenset({LINEAR_GAUSSIAN})  # the training loss perturbs data with alpha and sigma
    event_shape: tuple[int, ...] | None = None

    @property
    @abc.abstractmethod
    def num_classes(self) -> int:
        """The number of classes ``C``; labels lie in ``[0, C)``."""

    def bind(self, process: ForwardProcess) -> None:
        """Called with the process when the classifier is assembled."""

    @abc.abstractmethod
    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Class logits ``(B, num_classes)`` at ``(x, t)``."""

    def log_prob(self, x: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        """``log p_t(labels | x)`` ``(B,)`` for integer ``labels`` ``(B,)``."""
        log_p = torch.log_softmax(self(x, t), dim=-1)
        return log_p.gather(1, labels.long()[:, None])[:, 0]



class CrossEntropy(Objective):
    """The training loss of a noise-conditional classifier (Song et al. 2021, Appendix I.4):
    ``E_t E_eps -log p_t(y | alpha x0 + sigma eps)`` with ``t ~ U[t_min, T]``, for data ``x0``
    ``(B, *event)`` with labels ``(B,)``, times and noise drawn from ``noise``. ``diffcore train``
    uses it for a classifier spec; it is not a registered objective (score models have their own)."""

    name = "cross_entropy"
    requires = frozenset({LINEAR_GAUSSIAN})

    def loss(self, model: Any, process: ForwardProcess, x0: Tensor, noise: NoiseSource,
             cond: Tensor | None = None) -> Tensor:
        if cond is None:
            raise UsageError("training a classifier needs labelled data")
        lg = require_linear_gaussian(process, "training a noise-conditional classifier")
        u = noise.uniform((), step=0, stream="t", dtype=torch.float64)
        t = (lg.t_min + (lg.T - lg.t_min) * u).to(x0.dtype)
        eps = noise.normal(tuple(x0.shape[1:]), step=0, stream="eps", dtype=x0.dtype)
        x_t = bcast(lg.alpha(t), x0) * x0 + bcast(lg.sigma(t), x0) * eps
        return F.cross_entropy(model(x_t, t), cond.long())
