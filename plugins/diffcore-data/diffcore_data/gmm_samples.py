"""Draws from a diagonal Gaussian mixture given exactly as the ``gmm`` model's parameters.

The params subclass :class:`diffcore_models.gmm.GMMParams` (and :class:`DataParams`) rather than
re-declaring the fields: a ``gmm`` model block's ``weights``/``means``/``variances`` can be pasted as
is, and both validate the same way (one shape check, not two that could drift apart). The cost is a
dependency on ``diffcore-models``, declared in this distribution.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from diffcore.data import DataParams
from diffcore_data._cached import CachedDataset, generator
from diffcore_models.gmm import GMMParams


class GMMSamplesParams(GMMParams, DataParams):
    num: int = Field(10000, ge=1, description="Number of draws.")
    seed: int = Field(0, ge=0, description="Seed of the draw.")



class GMMSamples(CachedDataset):
    """``num`` draws of ``sum_k w_k N(mu_k, diag(v_k))`` (weights normalised), data ``(num, D)``,
    labels the component each draw came from."""

    name = "gmm_samples"
    Params = GMMSamplesParams
    params: GMMSamplesParams

    def __init__(self, params: GMMSamplesParams | None = None, /, **kwargs: object) -> None:
        super().__init__(params, **kwargs)
        self.num_classes = len(self.params.weights)

    def load(self) -> tuple[Tensor, Tensor]:
        p, g = self.params, generator(self.params.seed)
        w = torch.tensor(p.weights, dtype=torch.float64)
        means = torch.tensor(p.means, dtype=torch.float64)
        std = torch.tensor(p.variances, dtype=torch.float64).sqrt()
        labels = torch.multinomial(w / w.sum(), p.num, replacement=True, generator=g)
        z = torch.randn(p.num, means.shape[1], generator=g, dtype=torch.float64)
        return (means[labels] + std[labels] * z).float(), labels.to(torch.int64)
