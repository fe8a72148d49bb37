"""Error messages that say what was given, what was expected and the fix.

This module sits below every other diffcore module (it imports none of them), so the registry, the
specs and the components all word their errors the same way:

- :func:`similarity`, :func:`closest_first`, :func:`unknown_name_message`: "did you mean" for a
  mistyped name;
- :func:`describe_errors` and :func:`format_problems`: a pydantic validation failure as
  ``(dotted field path, message with the fix)`` pairs and as one paragraph. What a message knows of
  the document's structure (which node holds a component of which kind, the fields a node allows,
  the registered names of a kind) comes from a :class:`DocumentContext` that the caller passes.
"""

from __future__ import annotations

import difflib
import math
import reprlib
from typing import Any, Protocol

from pydantic import ValidationError

Problems = list[tuple[str, str]]
"""``(dotted field path, message)`` pairs; the path is empty for the whole document."""


def similarity(name: str, candidate: str) -> float:
    """How alike two names are, in ``[0, 1]``: the better of the whole-name match and the match
    with the candidate's prefix of the same length (so ``eulr`` is close to ``euler_maruyama``)."""
    whole = difflib.SequenceMatcher(None, name, candidate).ratio()
    prefix = difflib.SequenceMatcher(None, name, candidate[: len(name)]).ratio()
    return max(whole, prefix)


def closest_first(name: str, candidates: list[str]) -> list[str]:
    """``candidates`` sorted by :func:`similarity` to ``name``, most similar first."""
    return sorted(candidates, key=lambda c: (-similarity(name, c), c))


def unknown_name_message(kind: str, name: str, available: list[str]) -> str:
    """``no sampler named 'eular'; did you mean 'euler_maruyama'? available (closest first): ...``."""
    ranked = closest_first(name, available)
    close = ranked[0] if ranked and similarity(name, ranked[0]) >= 0.6 else None
    hint = f"; did you mean {close!r}?" if close else "."
    listing = ", ".join(ranked) if ranked else "none (is the plugin providing it installed?)"
    return f"no {kind} named {name!r}{hint} Available (closest first): {listing}"


class DocumentContext(Protocol):
    """What :func:`describe_errors` may ask of the document being validated (a pipeline spec)."""

    def kind_at(self, loc: list[int | str]) -> str | None:
        """The component kind held at ``loc`` (``["sampler"]`` -> ``"sampler"``), or ``None``."""

    def list_kind(self, field: str) -> str | None:
        """The component kind of a top-level list field (``"guidance"``), or ``None``."""

    def names(self, kind: str) -> list[str]:
        """The registered names of ``kind``."""

    def allowed_fields(self, loc: list[int | str], node: Any) -> list[str] | None:
        """The fields the node ``node`` at ``loc`` accepts (``None``: unknown)."""


def format_problems(problems: list[tuple[str, str]], source: str, what: str = "spec") -> str:
    """One paragraph: ``<source>: invalid <what>: `a.b`: message; `c`: message``."""
    parts = [f"`{path}`: {msg}" if path else msg for path, msg in problems]
    return f"{source}: invalid {what}: " + "; ".join(parts)


def describe_errors(exc: ValidationError, *, data: Any = None, context: DocumentContext | None = None,
                    allowed_fields: list[str] | None = None) -> Problems:
    """``(dotted path, message with the fix)`` for every error of a validation failure.

    ``data`` (the document validated) and ``context`` let messages about a whole spec name the
    registered components and the allowed fields of each; ``allowed_fields`` does it for a single
    component's parameters.
    """
    out: list[tuple[str, str]] = []
    errors = exc.errors(include_url=False)
    for err in errors:
        if err["type"] == "none_required" and len(errors) > 1:
            continue  # the `None` branch of an optional field; the other branch's error says more
        loc = _clean_loc(err["loc"], data)
        msg = _message(err, loc, data, context, allowed_fields)  # may extend loc, e.g. with "type"
        path = ".".join(str(p) for p in loc)
        if (path, msg) not in out:
            out.append((path, msg))
    return out


def _clean_loc(loc: tuple[int | str, ...], data: Any) -> list[int | str]:
    """Drop pydantic's union-branch labels (the tag of a discriminated union, ``list[int]``...)."""
    clean: list[int | str] = []
    node = data
    for item in loc:
        if data is not None:
            if isinstance(node, dict) and isinstance(item, str) and item not in node and (
                node.get("type") == item or _looks_like_branch(item)):
                continue
            if isinstance(node, list) and isinstance(item, str):
                continue
        clean.append(item)
        node = child(node, item)
    return clean


def _looks_like_branch(item: str) -> bool:
    return any(c in item for c in "[]-") or item in {"none", "int", "float", "str", "bool"}


def child(node: Any, item: int | str) -> Any:
    """``node[item]`` of a parsed document, ``None`` where there is none."""
    if isinstance(node, dict):
        return node.get(item)
    if isinstance(node, list) and isinstance(item, int) and 0 <= item < len(node):
        return node[item]
    return None


def _message(err: Any, loc: list[int | str], data: Any, context: DocumentContext | None,
             allowed_fields: list[str] | None = None) -> str:
    def kind_at(at: list[int | str]) -> str | None:
        return context.kind_at(at) if context is not None else None

    def names(kind: str) -> list[str]:
        return context.names(kind) if context is not None else []

    kind, given = err["type"], err.get("input")
    if kind == "union_tag_invalid" or (kind == "literal_error" and loc and loc[-1] == "type"):
        if kind == "union_tag_invalid":
            loc.append("type")
        comp_kind = kind_at(loc[:-1]) or "component"
        known = names(comp_kind)
        node = child(node_at(data, loc[:-1]), "type")
        if node is None or node == "":
            return f"`type` is empty; set it to one of: {', '.join(known)}"
        return unknown_name_message(comp_kind, str(node), known) + "; set `type` to one of them"
    if kind == "union_tag_not_found" or (kind == "missing" and loc and loc[-1] == "type" and kind_at(loc[:-1])):
        if kind == "union_tag_not_found":
            loc.append("type")
        known = names(kind_at(loc[:-1]) or "component")
        return f"missing `type`; add `type: <name>` with one of: {', '.join(known)}"
    if kind == "missing":
        return "required field is missing; add it"
    list_kind = context.list_kind(str(loc[0])) if context is not None and len(loc) == 1 else None
    if kind == "too_long" and list_kind and not names(list_kind):
        return (f"no {list_kind} is registered; remove `{loc[0]}` or install a plugin that "
                "provides one (`diffcore plugins` lists what is loaded)")
    if kind == "extra_forbidden":
        name = str(loc[-1]) if loc else "?"
        if allowed_fields is not None:
            allowed: list[str] | None = allowed_fields
        else:
            allowed = context.allowed_fields(loc[:-1], node_at(data, loc[:-1])) if context is not None else None
        if allowed is None:
            return "unknown field; remove it"
        best = closest_first(name, allowed)[0] if allowed else None
        hint = f"did you mean {best!r}? " if best and similarity(name, best) >= 0.6 else ""
        return f"unknown field {name!r}; {hint}allowed fields: {', '.join(allowed)}"
    if kind in {"model_type", "model_attributes_type", "dict_type"} and kind_at(loc):
        return (f"expected a mapping {{type: <name>, ...params}}, got {type_name(given)}; "
                f"write e.g. `{loc[0]}: {{type: ...}}`")
    if kind == "finite_number":
        return f"must be a finite number, got {given!r}; NaN and Inf are not allowed here"
    message = err["msg"]
    if kind == "value_error":
        message = message.removeprefix("Value error, ")
    return f"{message} (got {_short(given)})" if "input" in err and not isinstance(given, dict) else message


def node_at(data: Any, loc: list[int | str]) -> Any:
    """The node of a parsed document at the path ``loc`` (``None`` where there is none)."""
    for item in loc:
        data = child(data, item)
    return data


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 2, 4, 4, 40, 40


def _short(value: Any) -> str:
    """A bounded rendering of an input value (never walks more than a few elements)."""
    text = _REPR.repr(value) if not isinstance(value, float) or math.isfinite(value) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def type_name(value: Any) -> str:
    """What a parsed value is, in a user's words (``a list``, ``a mapping``)."""
    if value is None:
        return "nothing (null)"
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean",
            dict: "a mapping"}.get(type(value), type(value).__name__)
