"""Draws from a diagonal Gaussian mixture given exactly as the ``gmm`` model's parameters.

The params subclass :class:`diffcore_models.gmm.GMMParams` (and :class:`DataParams`) rather than
re-declaring the fields: a ``gmm`` model block's ``weights``/``means``/``variances`` can be pasted as
is, and both validate the same way (one shape check, not two that could drift apart). The cost is a
dependency on ``diffcore-models``, declared in this distribution.
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import Tensor

from diffcore.data import DataParams
from diffcore.limits import MAX_DATASET_VALUES, Seed, check_total
from diffcore_data._cached import CachedDataset, generator
from diffcore_models.gmm import GMMParams


class GMMSamplesParams(GMMParams, DataParams):
    num: int = Field(10000, ge=1, le=MAX_DATASET_VALUES, description="Number of draws; num x D values in all, "
                     f"at most {MAX_DATASET_VALUES}.")
    seed: Seed = Field(0, description="Seed of the draw.")

    @model_validator(mode="after")
    def _size(self) -> GMMSamplesParams:
        check_total("num x D (the values of the dataset)", self.num * len(self.means[0]), MAX_DATASET_VALUES,
                    "lower num")
        return self



class GMMSamples(CachedDataset):
    """Draws from a Gaussian mixture you specify, labelled by component: training data whose exact score is known.

    ``num`` draws of ``sum_k w_k N(mu_k, diag(v_k))`` (weights normalised), data ``(num, D)``,
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
        probs = torch.softmax(w.log(), 0)  # not w / sum(w): the sum of large weights may overflow
        labels = torch.multinomial(probs, p.num, replacement=True, generator=g)
        z = torch.randn(p.num, means.shape[1], generator=g, dtype=torch.float64)
        return (means[labels] + std[labels] * z).float(), labels.to(torch.int64)
