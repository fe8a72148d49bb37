"""What every pluggable component shares: a registered ``name``, a pydantic ``Params`` model and
declared capabilities.

A component is built the same way from Python and from a spec::

    VPSDE(beta_min=0.1, beta_max=20.0)          # keyword arguments, validated by VPSDE.Params
    VPSDE(VPSDE.Params(beta_min=0.1))           # or an already validated Params instance

Both routes validate through ``Params`` (``extra="forbid"``, no NaN/Inf), so a typo in Python fails
exactly like a typo in a YAML spec.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from diffcore.entry_points import DEBUG_ENV, PLUGIN_FAILURES, describe_exception
from diffcore.errors import CompatibilityError, DiffcoreError, PluginError, SpecError
from diffcore.messages import describe_errors, format_problems


class Params(BaseModel):
    """Base of every component's parameter model.

    Validation is strict: unknown fields, NaN and Inf are rejected, and nothing is silently
    converted (``steps: true`` or ``steps: "10"`` is an error, not ``steps: 1``; ``rtol: 1`` is
    fine, an integer is a valid float). Lists are lists: pass ``[0.5, 0.5]``, not a tuple.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True, strict=True)


_ParamsBase = Params


class Component(metaclass=abc.ABCMeta):
    """Base of every pluggable component (processes, models, objectives, samplers, guidance).

    Subclasses set the class attributes:

    - ``name``: the registered name used as ``type`` in specs (lowercase, ``[a-z0-9_]``);
    - ``Params``: a :class:`Params` subclass with the component's parameters and defaults;
    - ``requires``: capabilities the *process* it is assembled with must declare
      (e.g. ``{"linear_gaussian"}``); checked once when a pipeline is assembled
      (:func:`check_compatible`). A component whose needs depend on its params overrides
      :meth:`requirements` instead.
    """

    name: ClassVar[str]
    Params: ClassVar[type[_ParamsBase]] = _ParamsBase
    requires: ClassVar[frozenset[str]] = frozenset()

    params: _ParamsBase

    def __init__(self, params: _ParamsBase | None = None, /, **kwargs: Any) -> None:
        super().__init__()
        self.params = _validate(type(self), params, kwargs)

    @classmethod
    def capabilities(cls) -> frozenset[str]:
        """Capabilities this component declares (used for compatibility checks and ``list``)."""
        return frozenset()

    def requirements(self) -> dict[str, str]:
        """The capabilities the process must declare for this component with these params, each
        mapped to what needs it (named in the error). Default: the class's ``requires``, needed by the
        component itself; a ``pc`` sampler, say, adds what its predictor needs."""
        return dict.fromkeys(sorted(self.requires), describe(self))

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.params.model_dump().items())
        return f"{type(self).__name__}({fields})"


def describe(component: Component) -> str:
    """``DDIM ('ddim')``: a component's class and registered name, for messages."""
    return f"{type(component).__name__} ({getattr(component, 'name', '?')!r})"


@contextmanager
def component_errors(component: Component | type[Component], action: str) -> Iterator[None]:
    """Report a component's failure as a :class:`~diffcore.errors.PluginError` naming it, what it
    was doing and where it raised, instead of a traceback: wrap every call core makes into
    component code (building, sampling, training steps). A :class:`~diffcore.errors.DiffcoreError`
    (already a clear message) passes through unchanged, as does a ``KeyboardInterrupt`` (Ctrl-C)."""
    try:
        yield
    except DiffcoreError:
        raise
    except PLUGIN_FAILURES as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        cls = component if isinstance(component, type) else type(component)
        raise PluginError(f"{kind_name(cls)} {getattr(cls, 'name', '?')!r} ({cls.__module__}.{cls.__qualname__}) "
                          f"failed while {action}: {describe_exception(exc)}; this is an error in that component "
                          f"(set {DEBUG_ENV}=1 for the traceback)") from exc


def kind_name(cls: type) -> str:
    """``sampler``, ``model``...: the interface ``cls`` implements, by its base class names."""
    for base in cls.__mro__:
        name = _KIND_BY_BASE.get(base.__name__)
        if name is not None and base.__module__.startswith("diffcore."):
            return name
    return "component"


_KIND_BY_BASE = {"ForwardProcess": "process", "ScoreModel": "model", "Objective": "objective", "Sampler": "sampler",
                 "Guidance": "guidance", "Dataset": "dataset", "NoiseClassifier": "classifier"}


def check_compatible(component: Component, process: Component) -> None:
    """Raise :class:`~diffcore.errors.CompatibilityError` if ``process`` lacks a capability that
    ``component`` requires (:meth:`Component.requirements`). Called once, when components are
    assembled (a pipeline, a trainer, a sampler run), never inside a step."""
    declared = process.capabilities()
    missing: dict[str, list[str]] = {}
    for capability, who in component.requirements().items():
        if capability not in declared:
            missing.setdefault(who, []).append(capability)
    if missing:
        needs = "; ".join(f"{who} requires a process with {', '.join(sorted(caps))}" for who, caps in missing.items())
        raise CompatibilityError(
            f"{needs}, but process {getattr(process, 'name', '?')!r} declares "
            f"{sorted(declared) or 'no capabilities'}; choose another component or process"
        )


def _validate(cls: type[Component], params: _ParamsBase | None, kwargs: dict[str, Any]) -> _ParamsBase:
    if params is not None and kwargs:
        raise TypeError(f"{cls.__name__}: pass either a Params instance or keyword arguments")
    if isinstance(params, cls.Params):
        return params
    if params is not None:
        kwargs = params.model_dump()
    try:
        return cls.Params(**kwargs)
    except ValidationError as exc:
        problems = describe_errors(exc, allowed_fields=list(cls.Params.model_fields))
        raise SpecError(format_problems(problems, getattr(cls, "name", cls.__name__), "parameters"), problems) from None
