"""Declarative specs: YAML or JSON documents naming registered components.

A pipeline spec::

    process: {type: vp, beta_min: 0.1, beta_max: 20.0}
    model:   {type: gmm, weights: [0.5, 0.5], means: [[-2, 0], [2, 0]], variances: [[1, 1], [1, 1]]}
    sampler: {type: euler_maruyama, steps: 1000}

Each component is ``{type: <registered name>, ...params}``; the params are validated by the
component's own pydantic ``Params`` (unknown fields, NaN/Inf and wrong types are errors that carry
the field path). The spec model is built from the live registry (a discriminated union per kind),
cached per registry generation, so third-party components validate and appear in the JSON Schema
exactly like the standard ones. A spec never names an import path, and YAML is read with a safe
loader: a ``!!python/...`` tag is an error, never code.
"""

from __future__ import annotations

import copy
import json
import re
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model

from diffcore.errors import RegistryError, SpecError
from diffcore.inputs import read_bytes
from diffcore.likelihood import LikelihoodConfig
from diffcore.limits import MAX_INT_DIGITS, MAX_SPEC_BYTES, MAX_SPEC_DEPTH, MAX_SPEC_VALUES, OptionalEventShape
from diffcore.messages import describe_errors, format_problems, type_name
from diffcore.registry import Entry, Registry, get_registry
from diffcore.training.config import TrainConfig

COMPONENT_FIELDS: dict[str, str] = {"process": "process", "model": "model", "sampler": "sampler",
                                    "objective": "objective", "data": "dataset"}
"""Spec fields holding exactly one component, and the kind of each (a classifier spec's
``classifier`` field: :func:`classifier_spec_model`)."""
OPTIONAL_FIELDS = frozenset({"objective", "data"})
"""Component fields only training needs."""
LIST_FIELDS: dict[str, str] = {"guidance": "guidance"}
"""Spec fields holding a list of components, and the kind of each."""
_FIELD_KIND = {**COMPONENT_FIELDS, **LIST_FIELDS, "classifier": "classifier"}


class PipelineSpecBase(BaseModel):
    """Base of the registry-built pipeline spec model (see :func:`pipeline_spec_model`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def component(self, field: str) -> tuple[str, dict[str, Any]]:
        """``(type, params)`` of a single-component field such as ``"sampler"``."""
        data = dict(getattr(self, field).model_dump())
        return data.pop("type"), data


# ---------------------------------------------------------------------------------------------
# Building the spec model from the registry
# ---------------------------------------------------------------------------------------------


def component_spec_model(entry: Entry) -> type[BaseModel]:
    """``{type: <name>, ...Params}`` for one registered component."""
    doc = (entry.cls.__doc__ or "").strip().split("\n\n")[0]
    model: type[BaseModel] = create_model(
        f"{entry.kind.capitalize()}_{entry.name}",
        __base__=entry.cls.Params,
        __doc__=f"{entry.kind} {entry.name!r} (plugin {entry.plugin!r}). {doc}".strip(),
        type=(Literal[entry.name], Field(description=f"Registered {entry.kind} name.")),  # type: ignore[arg-type,valid-type]
    )
    return model


def kind_type(registry: Registry, kind: str) -> Any:
    """The pydantic type accepting any registered component of ``kind``."""
    models = [component_spec_model(e) for e in registry.entries(kind)]
    if not models:
        def none_registered(value: Any) -> Any:
            raise ValueError(f"no {kind} is registered; install a plugin that provides one "
                             "(`diffcore plugins` lists what is loaded)")
        return Annotated[dict[str, Any], BeforeValidator(none_registered)]
    if len(models) == 1:
        return models[0]
    return Annotated[Union[tuple(models)], Field(discriminator="type")]  # noqa: UP007


_cache: weakref.WeakKeyDictionary[Registry, tuple[int, type[PipelineSpecBase]]] = weakref.WeakKeyDictionary()


def pipeline_spec_model(registry: Registry | None = None) -> type[PipelineSpecBase]:
    """The pipeline spec model for ``registry`` (default: the process-wide one), rebuilt only when
    the registry changed."""
    registry = registry or get_registry()
    cached = _cache.get(registry)
    if cached is not None and cached[0] == registry.generation:
        return cached[1]
    fields: dict[str, Any] = {}
    for field, kind in COMPONENT_FIELDS.items():
        description = f"The {kind}: {{type: <name>, ...params}}."
        if field in OPTIONAL_FIELDS:
            fields[field] = (kind_type(registry, kind) | None, Field(None, description=description + " For training."))
        else:
            fields[field] = (kind_type(registry, kind), Field(description=description))
    fields["train"] = (TrainConfig | None, Field(None, description="Optimisation settings, for training."))
    fields["likelihood"] = (LikelihoodConfig | None, Field(
        None, description="How `diffcore likelihood` computes log p(x): trace, probes, solver, dequantisation."))
    for field, kind in LIST_FIELDS.items():
        none = not registry.names(kind)  # then the schema, like validation, admits only []
        fields[field] = (list[kind_type(registry, kind)], Field(  # type: ignore[misc]
            default_factory=list, max_length=0 if none else None,
            description=f"{kind.capitalize()} components, applied in order."))
    fields["shape"] = (OptionalEventShape, Field(
        default_factory=list, description="Shape of one sample; empty: the model's own event shape."))
    model = create_model(
        "PipelineSpec", __base__=PipelineSpecBase,
        __doc__="A diffcore pipeline: a forward process, a score model and a sampler.", **fields,
    )
    _cache[registry] = (registry.generation, model)
    return model


CLASSIFIER_FIELD = "classifier"
"""The field that makes a document a classifier spec (:func:`classifier_spec_model`)."""

_classifier_cache: weakref.WeakKeyDictionary[Registry, tuple[int, type[PipelineSpecBase]]] = weakref.WeakKeyDictionary()


def classifier_spec_model(registry: Registry | None = None) -> type[PipelineSpecBase]:
    """The spec of a noise-conditional classifier trained by ``diffcore train``: ``process``,
    ``classifier``, ``data`` and ``train`` (no model, sampler or objective: the classifier's loss is
    the cross-entropy at perturbed data). A document with a top-level ``classifier`` is validated
    against it."""
    registry = registry or get_registry()
    cached = _classifier_cache.get(registry)
    if cached is not None and cached[0] == registry.generation:
        return cached[1]
    model = create_model(
        "ClassifierSpec", __base__=PipelineSpecBase,
        __doc__="A noise-conditional classifier p_t(y | x_t) to train for classifier guidance.",
        process=(kind_type(registry, "process"), Field(description="The process whose perturbed data it classifies.")),
        classifier=(kind_type(registry, "classifier"), Field(description="The classifier: {type: <name>, ...params}.")),
        data=(kind_type(registry, "dataset"), Field(description="Labelled training data.")),
        train=(TrainConfig | None, Field(None, description="Optimisation settings.")),
        shape=(OptionalEventShape, Field(default_factory=list, description="Shape of one sample; empty: the "
                                         "classifier's own.")),
    )
    _classifier_cache[registry] = (registry.generation, model)
    return model


def is_classifier_spec(spec: PipelineSpecBase) -> bool:
    """Whether ``spec`` is a classifier spec (:func:`classifier_spec_model`)."""
    return CLASSIFIER_FIELD in type(spec).model_fields


def json_schema(registry: Registry | None = None) -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of specs, third-party components included: a pipeline spec or a
    classifier spec (:func:`classifier_spec_model`), whose component definitions are shared."""
    pipeline = pipeline_spec_model(registry).model_json_schema()
    classifier = classifier_spec_model(registry).model_json_schema()
    defs = {**classifier.pop("$defs", {}), **pipeline.pop("$defs", {})}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "diffcore spec",
            "description": "A pipeline spec (process, model, sampler, ...) or a classifier spec (process, "
                           "classifier, data, train).",
            "anyOf": [pipeline, classifier], "$defs": defs}


# ---------------------------------------------------------------------------------------------
# Reading documents
# ---------------------------------------------------------------------------------------------


class _SafeLoader(yaml.SafeLoader):
    """A safe loader (no tags that build Python objects) reading the YAML 1.2 core schema, rejecting
    duplicate keys (plain PyYAML keeps the last silently) and overlong integers.

    PyYAML implements YAML 1.1; the differences that matter in a spec: ``017`` is 17, not 15
    (octal is ``0o17``); ``1:30`` is a string, not 90; ``yes``/``no``/``on``/``off`` are strings,
    only ``true``/``false`` are booleans; ``1_000`` and dates are strings; ``1e-5`` is a float
    (YAML 1.1 needs a dot: ``1.0e-5``).
    """

    yaml_implicit_resolvers: dict[Any, Any] = {}  # noqa: RUF012 - filled below, not inherited from YAML 1.1


def _resolve(tag: str, pattern: str, first: list[str]) -> None:
    _SafeLoader.add_implicit_resolver(f"tag:yaml.org,2002:{tag}", re.compile(pattern), first)


_DIGITS = list("-+0123456789")
_resolve("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", list("tTfF"))
_resolve("null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""])
_resolve("int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", _DIGITS)
_resolve("float", r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)"
         r"|\.(?:nan|NaN|NAN))$", [*_DIGITS, "."])
_resolve("merge", r"^(?:<<)$", ["<"])


def _line(node: yaml.Node) -> str:
    return f"line {node.start_mark.line + 1}"


def _construct_mapping(loader: _SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
        if not isinstance(key, str | int | float | bool) and key is not None:
            raise SpecError(f"{_line(key_node)}: a mapping key must be a plain value, got {type(key).__name__}")
        if key in mapping:
            raise SpecError(f"{_line(key_node)}: duplicate key {key!r}; keep one of the two entries")
        mapping[key] = loader.construct_object(value_node, deep=deep)  # type: ignore[no-untyped-call]
    return mapping


def parse_int(text: str, where: str = "") -> int:
    """A YAML 1.2 / JSON integer (``17``, ``-3``, ``0o17``, ``0x1f``) of at most
    :data:`~diffcore.limits.MAX_INT_DIGITS` digits: a longer one is refused, not converted (Python
    refuses 4300+ digits with a ValueError, and a 4000-digit number is a typo or an attack)."""
    body = text.lstrip("+-")
    if len(body) > MAX_INT_DIGITS:
        raise SpecError(f"{where}the integer {text[:12]}... has {len(body)} digits; spec numbers have at most "
                        f"{MAX_INT_DIGITS} (write large values as floats, e.g. 1e40)")
    if body.startswith("0x"):
        return int(text.replace("0x", "", 1), 16)
    if body.startswith("0o"):
        return int(text.replace("0o", "", 1), 8)
    return int(text, 10)


def _construct_int(loader: _SafeLoader, node: yaml.ScalarNode) -> int:
    return parse_int(str(loader.construct_scalar(node)), f"{_line(node)}: ")


def _construct_float(loader: _SafeLoader, node: yaml.ScalarNode) -> float:
    text = str(loader.construct_scalar(node)).lower()
    if text.lstrip("+-") in (".inf", ".nan"):
        return float(text.replace(".", ""))
    return float(text)


_SafeLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_SafeLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_SafeLoader.add_constructor("tag:yaml.org,2002:float", _construct_float)


def parse_text(text: str, *, source: str = "<spec>", fmt: Literal["yaml", "json"] = "yaml") -> Any:
    """Parse spec text safely (YAML 1.2; JSON is also valid YAML, and ``fmt="json"`` uses the strict
    JSON parser) and check its size (:func:`check_document`)."""
    if len(text.encode()) > MAX_SPEC_BYTES:
        raise SpecError(f"{source}: the spec is larger than {MAX_SPEC_BYTES} bytes; specs are small "
                        "documents, pass data through a dataset component instead")
    try:
        data = (json.loads(text, object_pairs_hook=_json_pairs, parse_int=parse_int) if fmt == "json"
                else yaml.load(text, Loader=_SafeLoader))  # noqa: S506 - a safe loader (SafeConstructor)
    except SpecError as exc:
        raise SpecError(f"{source}: {exc}") from None
    except yaml.constructor.ConstructorError as exc:
        raise SpecError(f"{source}: {_yaml_where(exc)}unsupported YAML tag or value ({exc.problem}); "
                        "specs hold plain mappings, lists, strings and numbers only") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{source}: not valid YAML: {_yaml_where(exc)}"
                        f"{getattr(exc, 'problem', None) or exc}") from None
    except json.JSONDecodeError as exc:
        raise SpecError(f"{source}: not valid JSON: {exc}") from None
    except (RecursionError, MemoryError):
        raise SpecError(f"{source}: the document is nested too deeply to be a spec") from None
    except ValueError as exc:  # a number the parser cannot convert
        raise SpecError(f"{source}: {exc}") from None
    check_document(data, source)
    return data


def check_document(data: Any, source: str) -> None:
    """Refuse documents nested deeper than :data:`~diffcore.limits.MAX_SPEC_DEPTH` or expanding to
    more than :data:`~diffcore.limits.MAX_SPEC_VALUES` values (YAML aliases can make a few hundred
    bytes stand for billions of values: an "alias bomb"). The walk is iterative and stops at the
    first limit, so no document can exhaust the stack or the memory here."""
    count, stack = 0, [(data, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_SPEC_VALUES:
            raise SpecError(f"{source}: the spec expands to more than {MAX_SPEC_VALUES} values (YAML "
                            "aliases repeating large parts?); specs are small documents")
        if depth > MAX_SPEC_DEPTH:
            raise SpecError(f"{source}: the spec is nested more than {MAX_SPEC_DEPTH} levels deep; specs are "
                            "shallow mappings of components")
        if isinstance(node, dict):
            stack.extend((value, depth + 1) for value in node.values())
        elif isinstance(node, list | tuple | set):
            stack.extend((value, depth + 1) for value in node)


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise SpecError(f"duplicate key {key!r}; keep one of the two entries")
        out[key] = value
    return out


def _yaml_where(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    return f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""


def read_spec(path: str | Path) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``/other) or JSON (``.json``) spec file into a mapping."""
    path = Path(path)
    raw = read_bytes(path, what="spec", limit=MAX_SPEC_BYTES, error=SpecError)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not UTF-8 text; a spec is a YAML or JSON file") from None
    fmt: Literal["yaml", "json"] = "json" if path.suffix.lower() == ".json" else "yaml"
    return as_mapping(parse_text(text, source=str(path), fmt=fmt), source=str(path))


def as_mapping(data: Any, *, source: str = "<spec>") -> dict[str, Any]:
    """Check that a parsed document is a non-empty mapping."""
    expected = ", ".join(list(COMPONENT_FIELDS) + list(LIST_FIELDS) + ["shape"])
    check_document(data, source)
    if data is None or data == {}:
        raise SpecError(f"{source}: the spec is empty; it must be a mapping with the keys {expected}")
    if not isinstance(data, Mapping):
        raise SpecError(f"{source}: the spec must be a mapping with the keys {expected}, "
                        f"got {type_name(data)}")
    return dict(data)


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``dotted.path=value`` overrides (values parsed as YAML: ``3``, ``0.5``, ``[1, 2]``).

    List items are addressed by index (``guidance.0.scale=2``). Returns a new mapping.
    """
    check_document(data, "the spec")
    out = copy.deepcopy(dict(data))
    for item in overrides:
        path, sep, raw = item.partition("=")
        keys = path.strip().split(".")
        if not sep or not all(keys):
            raise SpecError(f"--set {item!r}: expected dotted.path=value, e.g. --set sampler.steps=500")
        value = parse_text(raw, source=f"--set {path}") if raw.strip() else ""
        node: Any = out
        for depth, key in enumerate(keys):
            last = depth == len(keys) - 1
            where = ".".join(keys[:depth]) or "the spec"
            if isinstance(node, dict):
                if last:
                    node[key] = value
                else:
                    if node.get(key) is None:  # absent, or an optional section left unset (null)
                        node[key] = {}
                    node = node[key]
            elif isinstance(node, list):
                if not key.isdigit() or int(key) >= len(node):
                    raise SpecError(f"--set {item!r}: {where} is a list of {len(node)} items; "
                                    f"use an index from 0 to {len(node) - 1}, not {key!r}")
                if last:
                    node[int(key)] = value
                else:
                    node = node[int(key)]
            else:
                raise SpecError(f"--set {item!r}: {where} is {type_name(node)}, not a mapping; "
                                f"set {where} itself")
    return dict(out)


def validate_spec(data: Any, *, registry: Registry | None = None, source: str = "<spec>") -> PipelineSpecBase:
    """Validate a parsed spec against the registry's spec model; errors name the field and the fix."""
    registry = registry or get_registry()
    data = as_mapping(data, source=source)
    model = classifier_spec_model(registry) if CLASSIFIER_FIELD in data else pipeline_spec_model(registry)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = describe_errors(exc, data=data, context=_SpecContext(registry, model))
        raise SpecError(format_problems(problems, source), problems) from None
    except RecursionError:
        raise SpecError(f"{source}: the spec is nested too deeply") from None


def load_spec(source: str | Path | Mapping[str, Any], overrides: Sequence[str] = (),
              *, registry: Registry | None = None) -> PipelineSpecBase:
    """Read (if a path), apply ``--set`` overrides and validate a pipeline spec."""
    if isinstance(source, Mapping):
        data, name = dict(source), "<spec>"
    else:
        data, name = read_spec(source), str(source)
    return validate_spec(apply_overrides(data, overrides), registry=registry, source=name)


# ---------------------------------------------------------------------------------------------
# Error messages: what the spec's structure tells diffcore.messages
# ---------------------------------------------------------------------------------------------


class _SpecContext:
    """The pipeline spec's structure for :func:`~diffcore.messages.describe_errors`."""

    def __init__(self, registry: Registry, model: type[PipelineSpecBase]) -> None:
        self.registry, self.model = registry, model

    def kind_at(self, loc: list[int | str]) -> str | None:
        if len(loc) == 1 and loc[0] in self.model.model_fields and loc[0] in _FIELD_KIND and loc[0] not in LIST_FIELDS:
            return _FIELD_KIND[str(loc[0])]
        if len(loc) == 2 and loc[0] in LIST_FIELDS and isinstance(loc[1], int):
            return LIST_FIELDS[str(loc[0])]
        return None

    def list_kind(self, field: str) -> str | None:
        return LIST_FIELDS.get(field)

    def names(self, kind: str) -> list[str]:
        return self.registry.names(kind) if kind in _FIELD_KIND.values() else []

    def allowed_fields(self, loc: list[int | str], node: Any) -> list[str] | None:
        if not loc:
            return list(self.model.model_fields)
        kind = self.kind_at(loc)
        if kind is None or not isinstance(node, dict):
            return None
        try:
            cls = self.registry.get(kind, str(node.get("type")))
        except RegistryError:
            return None
        return ["type", *cls.Params.model_fields]
