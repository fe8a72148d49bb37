"""An MLP score network for vector data, with a time embedding and optional class conditioning."""

from __future__ import annotations

import math
from typing import Literal

import torch
from einops import rearrange
from pydantic import Field, model_validator
from torch import Tensor, nn

from diffcore.component import Params
from diffcore.limits import MAX_PARAMETERS, Classes, Depth, EventShape, Width, check_total
from diffcore.model import ScoreModel
from diffcore_backbones.embedding import ClassEmbedding, TimeEmbedding, embed, embedding_parameters, linear_parameters


class MLPParams(Params):
    shape: EventShape = Field(description="Shape of one sample, e.g. [2].")
    hidden: Width = Field(256, description="Width of the hidden layers.")
    depth: Depth = Field(3, description="Number of hidden layers.")
    embedding_dim: Width = Field(128, multiple_of=2, description="Width of the time (and class) embedding.")
    time_embedding: Literal["fourier", "sinusoidal"] = Field("fourier", description="Time features.")
    fourier_scale: float = Field(16.0, gt=0, description="Std of the random Fourier frequencies.")
    num_classes: Classes | None = Field(None, description="Classes for conditioning (plus a null label).")
    output: Literal["score", "eps", "x0", "v"] = Field("eps", description="What the network predicts.")

    @model_validator(mode="after")
    def _size(self) -> MLPParams:
        check_total("the number of parameters", parameter_count(self), MAX_PARAMETERS,
                    "lower hidden, depth, embedding_dim or num_classes")
        return self


def parameter_count(p: MLPParams) -> int:
    """Trainable parameters of :class:`MLP` with ``p``, from the layer sizes (nothing is allocated)."""
    dim = math.prod(p.shape)
    layers = linear_parameters(dim + p.embedding_dim, p.hidden) + linear_parameters(p.hidden, dim)
    layers += (p.depth - 1) * linear_parameters(p.hidden, p.hidden)
    return layers + embedding_parameters(p.embedding_dim, None, p.num_classes)


class MLP(ScoreModel):
    """``x`` ``(B, *shape)`` is flattened, concatenated with the embedding of ``t`` (plus the class
    embedding when ``num_classes`` is set) and mapped through ``depth`` SiLU layers back to
    ``(B, *shape)``."""

    name = "mlp"
    Params = MLPParams
    params: MLPParams

    def __init__(self, params: MLPParams | None = None, /, **kwargs: object) -> None:
        super().__init__(params, **kwargs)
        p = self.params
        self.output = p.output
        self.event_shape = tuple(p.shape)
        dim = 1
        for n in p.shape:
            dim *= n
        self.time = TimeEmbedding(p.embedding_dim, p.time_embedding, p.fourier_scale)
        self.classes = ClassEmbedding(p.num_classes, p.embedding_dim) if p.num_classes else None
        layers: list[nn.Module] = [nn.Linear(dim + p.embedding_dim, p.hidden), nn.SiLU()]
        for _ in range(p.depth - 1):
            layers += [nn.Linear(p.hidden, p.hidden), nn.SiLU()]
        layers.append(nn.Linear(p.hidden, dim))
        self.net = nn.Sequential(*layers)

    @property
    def null_label(self) -> int | None:
        return self.params.num_classes

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        emb = embed(self.time, self.classes, t, cond, x.shape[0], x.device)
        h = self.net(torch.cat([rearrange(x, "b ... -> b (...)"), emb.to(x.dtype)], dim=1))
        return h.reshape(x.shape)
