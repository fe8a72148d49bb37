"""MLPs for vector data: a score network and a noise-conditional classifier, both with a time
embedding at the input."""

from __future__ import annotations

import math
from typing import Literal

import torch
from einops import rearrange
from pydantic import Field, model_validator
from torch import Tensor, nn

from diffcore.classifier import NoiseClassifier
from diffcore.component import Params
from diffcore.limits import MAX_PARAMETERS, Classes, Depth, EventShape, Width, check_total
from diffcore.model import ScoreModel
from diffcore_backbones.embedding import ClassEmbedding, TimeEmbedding, embed, embedding_parameters, linear_parameters


class MLPLayoutParams(Params):
    """The fields :class:`MLPParams` and :class:`MLPClassifierParams` share."""

    shape: EventShape = Field(description="Shape of one sample, e.g. [2].")
    hidden: Width = Field(256, description="Width of the hidden layers.")
    depth: Depth = Field(3, description="Number of hidden layers.")
    embedding_dim: Width = Field(128, multiple_of=2, description="Width of the time (and class) embedding.")
    time_embedding: Literal["fourier", "sinusoidal"] = Field("fourier", description="Time features.")
    fourier_scale: float = Field(16.0, gt=0, description="Std of the random Fourier frequencies.")


class MLPParams(MLPLayoutParams):
    num_classes: Classes | None = Field(None, description="Classes for conditioning (plus a null label).")
    output: Literal["score", "eps", "x0", "v"] = Field("eps", description="What the network predicts.")

    @model_validator(mode="after")
    def _size(self) -> MLPParams:
        check_total("the number of parameters", parameter_count(self), MAX_PARAMETERS,
                    "lower hidden, depth, embedding_dim or num_classes")
        return self


def _layers(fan_in: int, p: MLPLayoutParams, fan_out: int) -> nn.Sequential:
    """``Linear(fan_in, hidden)``, SiLU, ``depth - 1`` times (``Linear(hidden, hidden)``, SiLU), then
    ``Linear(hidden, fan_out)``."""
    layers: list[nn.Module] = [nn.Linear(fan_in, p.hidden), nn.SiLU()]
    for _ in range(p.depth - 1):
        layers += [nn.Linear(p.hidden, p.hidden), nn.SiLU()]
    layers.append(nn.Linear(p.hidden, fan_out))
    return nn.Sequential(*layers)


def _layer_parameters(fan_in: int, p: MLPLayoutParams, fan_out: int) -> int:
    """Parameters of :func:`_layers` ``(fan_in, p, fan_out)``."""
    return (linear_parameters(fan_in, p.hidden) + (p.depth - 1) * linear_parameters(p.hidden, p.hidden)
            + linear_parameters(p.hidden, fan_out))


def parameter_count(p: MLPParams) -> int:
    """Trainable parameters of :class:`MLP` with ``p``, from the layer sizes (nothing is allocated)."""
    dim = math.prod(p.shape)
    return _layer_parameters(dim + p.embedding_dim, p, dim) + embedding_parameters(p.embedding_dim, None, p.num_classes)


class MLP(ScoreModel):
    """A multilayer-perceptron score network for low-dimensional vector data (2-D toys, tabular data), conditioned on
    time and optionally on a class.

    ``x`` ``(B, *shape)`` is flattened, concatenated with the embedding of ``t`` (plus the class
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
        dim = math.prod(p.shape)
        self.time = TimeEmbedding(p.embedding_dim, p.time_embedding, p.fourier_scale)
        self.classes = ClassEmbedding(p.num_classes, p.embedding_dim) if p.num_classes else None
        self.net = _layers(dim + p.embedding_dim, p, dim)

    @property
    def null_label(self) -> int | None:
        return self.params.num_classes

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        emb = embed(self.time, self.classes, t, cond, x.shape[0], x.device)
        h = self.net(torch.cat([rearrange(x, "b ... -> b (...)"), emb.to(x.dtype)], dim=1))
        return h.reshape(x.shape)


class MLPClassifierParams(MLPLayoutParams):
    num_classes: Classes = Field(description="Number of classes C; labels lie in [0, C).")

    @model_validator(mode="after")
    def _size(self) -> MLPClassifierParams:
        check_total("the number of parameters", classifier_parameter_count(self), MAX_PARAMETERS,
                    "lower hidden, depth, embedding_dim or num_classes")
        return self


def classifier_parameter_count(p: MLPClassifierParams) -> int:
    """Trainable parameters of :class:`MLPClassifier` with ``p``, from the layer sizes."""
    return (_layer_parameters(math.prod(p.shape) + p.embedding_dim, p, p.num_classes)
            + embedding_parameters(p.embedding_dim, None, None))


class MLPClassifier(NoiseClassifier):
    """A noise-conditional classifier for vector data, trained by ``diffcore train`` on noised data, for classifier
    guidance (Song et al. 2021; Dhariwal & Nichol 2021).

    A noise-conditional classifier ``p_t(y | x_t)`` for vector data (Song et al. 2021, Sec. 5 and
    Appendix I.4, train one on perturbed data for class-conditional sampling; Dhariwal & Nichol 2021,
    Sec. 4, guide with its gradient).

    ``x`` ``(B, *shape)`` (or any shape with as many values per sample) is flattened, concatenated
    with the time embedding of ``t`` ``(B,)`` (the :class:`TimeEmbedding` of :class:`MLP`) and mapped
    through ``depth`` SiLU layers of width ``hidden`` to logits ``(B, num_classes)``. Train it with
    :class:`~diffcore.classifier.CrossEntropy` (``diffcore train`` on a classifier spec).
    """

    name = "mlp"
    Params = MLPClassifierParams
    params: MLPClassifierParams

    def __init__(self, params: MLPClassifierParams | None = None, /, **kwargs: object) -> None:
        super().__init__(params, **kwargs)
        p = self.params
        self.event_shape = tuple(p.shape)
        self.time = TimeEmbedding(p.embedding_dim, p.time_embedding, p.fourier_scale)
        self.net = _layers(math.prod(p.shape) + p.embedding_dim, p, p.num_classes)

    @property
    def num_classes(self) -> int:
        return self.params.num_classes

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        flat = rearrange(x, "b ... -> b (...)")
        if flat.shape[1] != math.prod(self.params.shape):
            raise ValueError(f"the mlp classifier expects x of shape (B, {', '.join(map(str, self.params.shape))}) "
                             f"or (B, ...) with {math.prod(self.params.shape)} values per sample, "
                             f"got {tuple(x.shape)}")
        emb = embed(self.time, None, t, None, x.shape[0], x.device)
        logits: Tensor = self.net(torch.cat([flat, emb.to(x.dtype)], dim=1))
        return logits
