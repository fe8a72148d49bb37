"""Classifier guidance with a noise-conditional classifier (Song et al. 2021, Sec. 5 and eq. 14;
Dhariwal & Nichol 2021, Sec. 4)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from torch import Tensor, nn

from diffcore.classifier import NoiseClassifier
from diffcore.component import check_compatible, describe
from diffcore.condition import Condition
from diffcore.errors import CompatibilityError, DiffcoreError, SpecError, UsageError
from diffcore.guidance import Guidance, in_interval, input_gradient
from diffcore.model import ConditionalScoreFn, ScoreModel
from diffcore.process import ForwardProcess
from diffcore.utils import bcast
from diffcore_guidance.common import IntervalParams

MAX_SCALE = 1e4
"""The largest guidance scale accepted."""


class ClassifierGuidanceParams(IntervalParams):
    """Parameters of ``classifier``: the classifier as a component spec, or a trained run."""

    scale: float = Field(1.0, ge=0.0, le=MAX_SCALE, description="The scale gamma: s(x) + gamma grad_x log p_t(y | x). "
                         "1: the exact conditional score when the classifier is exact; larger: sharper classes.")
    classifier: dict[str, Any] | None = Field(None, description="The noise-conditional classifier, {type: <registered "
                                              "classifier>, ...params}, e.g. the analytic gmm with labels.")
    run: str | None = Field(None, description="Or: the run directory (or checkpoint) of a classifier trained with "
                            "`diffcore train`; its EMA weights are loaded.")

    @model_validator(mode="after")
    def _one_source(self) -> ClassifierGuidanceParams:
        if (self.classifier is None) == (self.run is None):
            raise ValueError("give exactly one of `classifier` (a {type: ..., ...} classifier spec) and `run` (a "
                             "trained classifier's run directory)")
        if self.classifier is not None and not isinstance(self.classifier.get("type"), str):
            raise ValueError("`classifier` needs `type`: a registered classifier (`diffcore list classifier`)")
        return self


class ClassifierGuidance(Guidance):
    """Classifier guidance (Song et al. 2021; Dhariwal & Nichol 2021): add the gradient of a noise-conditional
    classifier's log-probability of the wanted class.

    Classifier guidance: ``s(x, t) + scale * grad_x log p_t(y | x)`` with a noise-conditional
    classifier ``p_t(y | x_t)`` (a registered ``classifier`` component, trained on perturbed data by
    ``diffcore train``). By Bayes' rule ``grad log p_t(x | y) = grad log p_t(x) + grad log p_t(y | x)``,
    so at ``scale = 1`` with an exact classifier over an exact unconditional score this is the exact
    conditional score (the tests check it with the analytic ``gmm`` classifier). The gradient is
    taken by autograd through the classifier: one more forward pass per score evaluation (counted in
    ``forward_passes``) plus its backward pass. Needs the condition's ``labels`` ``(B,)``.
    """

    name = "classifier"
    Params = ClassifierGuidanceParams
    params: ClassifierGuidanceParams
    needs = frozenset({"labels"})

    def __init__(self, params: ClassifierGuidanceParams | None = None, /, **kwargs: object) -> None:
        super().__init__(params, **kwargs)
        self.classifier = _build(self.params)

    def networks(self) -> list[nn.Module]:
        return [self.classifier]

    def check(self, model: ScoreModel, process: ForwardProcess, shape: tuple[int, ...]) -> None:
        self.params.check_interval(self.name, process)
        check_compatible(self.classifier, process)
        self.classifier.bind(process)
        own = self.classifier.event_shape
        if own is not None and tuple(own) != tuple(shape) and _numel(own) != _numel(shape):
            raise CompatibilityError(f"guidance 'classifier': classifier {describe(self.classifier)} classifies "
                                     f"samples of shape {list(own)} but the pipeline draws samples of shape "
                                     f"{list(shape)}")

    def check_condition(self, cond: Condition) -> None:
        labels, n = cond.labels, self.classifier.num_classes
        if labels is not None and bool(((labels < 0) | (labels >= n)).any()):
            raise UsageError(f"guidance 'classifier': the classifier knows classes 0 to {n - 1}, but labels such as "
                             f"{int(labels[(labels < 0) | (labels >= n)][0])} were given")

    def guide(self, score_fn: ConditionalScoreFn, process: ForwardProcess) -> ConditionalScoreFn:
        scale, interval, classifier = self.params.scale, self.params.interval, self.classifier

        def guided(x: Tensor, t: Tensor, cond: Condition) -> Tensor:
            score = score_fn(x, t, cond)
            active = in_interval(t, interval)
            labels = cond.labels
            if scale == 0.0 or labels is None or not bool(active.any()):
                return score
            grad = input_gradient(lambda z: classifier.log_prob(z, t, labels), x)
            return score + bcast(scale * active.to(x.dtype), x) * grad

        return guided


def _numel(shape: tuple[int, ...] | list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _build(params: ClassifierGuidanceParams) -> NoiseClassifier:
    """The classifier of ``params``: built from its spec through the registry, or loaded from a run."""
    from diffcore.registry import get_registry

    if params.run is not None:
        return _load_run(Path(params.run))
    spec = dict(params.classifier or {})
    kind = spec.pop("type")
    try:
        built = get_registry().build("classifier", kind, **spec)
    except SpecError as exc:
        raise SpecError(f"guidance 'classifier', field `classifier`: {exc}", exc.problems) from None
    assert isinstance(built, NoiseClassifier)
    return built


def _load_run(path: Path) -> NoiseClassifier:
    """A classifier trained by ``diffcore train``: the spec saved in the run's newest checkpoint, and
    its EMA weights."""
    from diffcore.registry import get_registry
    from diffcore.training.checkpoint import load_ema_weights, saved_spec_source, spec_or_checkpoint

    if not path.is_dir():
        raise UsageError(f"guidance 'classifier', field `run`: {path} is not a run directory or checkpoint of "
                         "`diffcore train`")
    try:
        data, checkpoint, _ = spec_or_checkpoint(path)
    except DiffcoreError as exc:
        raise UsageError(f"guidance 'classifier', field `run`: {path} holds no trained classifier: {exc}") from None
    spec = data.get("classifier")
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str) or checkpoint is None:
        raise UsageError(f"guidance 'classifier', field `run`: {path} holds no trained classifier (its spec "
                         f"{saved_spec_source(checkpoint) if checkpoint else path} has no `classifier` section)")
    spec = dict(spec)
    built = get_registry().build("classifier", spec.pop("type"), **spec)
    assert isinstance(built, NoiseClassifier)
    load_ema_weights(built, checkpoint)
    return built
