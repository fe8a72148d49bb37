"""A residual MLP score network: pre-norm residual blocks, each modulated by the time (and class)
embedding, for vector data and small flattened images.

The plain :class:`~diffcore_backbones.mlp.MLP` sees the time only at its input; here every block
gets it through a per-block scale and shift of its normalised input (FiLM, as in the ResBlocks of
DDPM++ / NCSN++, Song et al. 2021, and of :class:`~diffcore_backbones.unet.UNet`):

    h <- h + W2 SiLU(W1 (LayerNorm(h) (1 + gamma(e)) + beta(e)))

so the network can change its function with the noise level at every depth. The last layer starts
at zero, so the untrained network outputs 0 (the eps of a standard normal, on average).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from einops import rearrange
from pydantic import Field, model_validator
from torch import Tensor, nn

from diffcore.component import Params
from diffcore.limits import MAX_PARAMETERS, MAX_WIDTH, Classes, Depth, EventShape, Width, check_total
from diffcore.model import ScoreModel
from diffcore_backbones.embedding import ClassEmbedding, TimeEmbedding, embed, embedding_parameters, linear_parameters


class ResMLPParams(Params):
    shape: EventShape = Field(description="Shape of one sample, e.g. [2] or [1, 8, 8].")
    hidden: Width = Field(512, description="Width of the residual stream.")
    blocks: Depth = Field(4, description="Number of residual blocks.")
    expansion: Width = Field(2, description="Inner width of a block as a multiple of hidden.")
    embedding_dim: Width = Field(128, multiple_of=2, description="Width of the time (and class) embedding.")
    time_embedding: Literal["fourier", "sinusoidal"] = Field("fourier", description="Time features.")
    fourier_scale: float = Field(16.0, gt=0, description="Std of the random Fourier frequencies.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout inside the blocks.")
    num_classes: Classes | None = Field(None, description="Classes for conditioning (plus a null label).")
    output: Literal["score", "eps", "x0", "v"] = Field("eps", description="What the network predicts.")

    @model_validator(mode="after")
    def _size(self) -> ResMLPParams:
        check_total("hidden x expansion (the inner width of a block)", self.hidden * self.expansion, MAX_WIDTH,
                    "lower hidden or expansion")
        check_total("the number of parameters", parameter_count(self), MAX_PARAMETERS,
                    "lower hidden, blocks, expansion, embedding_dim or num_classes")
        return self


def parameter_count(p: ResMLPParams) -> int:
    """Trainable parameters of :class:`ResMLP` with ``p``, from the layer sizes (nothing is allocated)."""
    dim, hidden, emb = math.prod(p.shape), p.hidden, p.embedding_dim
    inner = p.expansion * hidden
    block = linear_parameters(emb, 2 * hidden) + linear_parameters(hidden, inner) + linear_parameters(inner, hidden)
    head = 2 * hidden + linear_parameters(hidden, dim)  # LayerNorm (affine) and the output layer
    return (embedding_parameters(emb, None, p.num_classes) + linear_parameters(emb, emb)
            + linear_parameters(dim, hidden) + p.blocks * block + head)


class ResidualBlock(nn.Module):
    """``h + W2 SiLU(W1 (LN(h) (1 + gamma) + beta))`` with ``(gamma, beta)`` from the embedding;
    ``h`` ``(B, hidden)``, ``emb`` ``(B, embedding_dim)``."""

    def __init__(self, hidden: int, inner: int, embedding_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.film = nn.Linear(embedding_dim, 2 * hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, inner), nn.SiLU(), nn.Dropout(dropout), nn.Linear(inner, hidden))

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        gamma, beta = self.film(emb).chunk(2, dim=1)
        return h + self.mlp(self.norm(h) * (1.0 + gamma) + beta)


class ResMLP(ScoreModel):
    """A residual MLP score network with time-modulated blocks, for vector data where a plain MLP is too shallow;
    conditioned on time and optionally on a class.

    ``x`` ``(B, *shape)`` is flattened, lifted to ``hidden``, passed through ``blocks``
    time-modulated residual blocks and projected back to ``(B, *shape)``."""

    name = "resmlp"
    Params = ResMLPParams
    params: ResMLPParams

    def __init__(self, params: ResMLPParams | None = None, /, **kwargs: object) -> None:
        super().__init__(params, **kwargs)
        p = self.params
        self.output = p.output
        self.event_shape = tuple(p.shape)
        dim = 1
        for n in p.shape:
            dim *= n
        self.time = TimeEmbedding(p.embedding_dim, p.time_embedding, p.fourier_scale)
        self.classes = ClassEmbedding(p.num_classes, p.embedding_dim) if p.num_classes else None
        self.embedding = nn.Sequential(nn.Linear(p.embedding_dim, p.embedding_dim), nn.SiLU())
        self.lift = nn.Linear(dim, p.hidden)
        self.blocks = nn.ModuleList(ResidualBlock(p.hidden, p.expansion * p.hidden, p.embedding_dim, p.dropout)
                                    for _ in range(p.blocks))
        self.head = nn.Sequential(nn.LayerNorm(p.hidden), nn.SiLU(), nn.Linear(p.hidden, dim))
        head = self.head[-1]
        assert isinstance(head, nn.Linear)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)

    @property
    def null_label(self) -> int | None:
        return self.params.num_classes

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        emb = self.embedding(embed(self.time, self.classes, t, cond, x.shape[0], x.device).to(x.dtype))
        h = self.lift(rearrange(x, "b ... -> b (...)"))
        for block in self.blocks:
            h = block(h, emb)
        return torch.reshape(self.head(h), x.shape)
