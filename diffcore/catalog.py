"""What ``diffcore list`` shows: the registered components, their capabilities and parameters."""

from __future__ import annotations

import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic_core import PydanticUndefined

from diffcore.errors import UsageError
from diffcore.messages import unknown_name_message
from diffcore.registry import KINDS, Registry, get_registry


def describe_components(kind: str | None = None, registry: Registry | None = None) -> list[dict[str, Any]]:
    """Rows for ``diffcore list``: name, kind, plugin, capabilities, requirements, parameters (of
    ``kind`` only, when given)."""
    registry = registry or get_registry()
    if kind is not None and kind not in KINDS:
        raise UsageError(unknown_name_message("kind", kind, list(KINDS)))
    processes = [entry for entry in registry if entry.kind == "process"]
    rows = []
    for entry in registry:
        if kind is not None and entry.kind != kind:
            continue
        params = {}
        for fname, info in entry.cls.Params.model_fields.items():
            default = None if info.default is PydanticUndefined else info.default
            params[fname] = {"default": default, "required": info.is_required(),
                             "type": _annotation_name(info.annotation), "description": info.description}
        rows.append({
            "kind": entry.kind, "name": entry.name, "plugin": entry.plugin,
            "class": f"{entry.cls.__module__}.{entry.cls.__qualname__}",
            "summary": " ".join((entry.cls.__doc__ or "").strip().split("\n\n")[0].split()).replace("``", "`"),
            "capabilities": sorted(entry.cls.capabilities()), "requires": sorted(entry.cls.requires),
            "processes": sorted(p.name for p in processes if entry.cls.requires <= p.cls.capabilities()),
            "params": params,
        })
    return rows


def format_components(rows: list[dict[str, Any]]) -> str:
    """The human-readable listing of :func:`describe_components` rows."""
    lines = []
    for row in rows:
        caps = f" [capabilities: {', '.join(row['capabilities'])}]" if row["capabilities"] else ""
        works_with = ", ".join(row["processes"]) or "no installed process"
        reqs = f" [requires: {', '.join(row['requires'])}; works with: {works_with}]" if row["requires"] else ""
        lines.append(f"{row['kind']} {row['name']} (plugin {row['plugin']}){caps}{reqs}: {row['summary']}")
        for pname, p in row["params"].items():
            default = "required" if p["required"] else f"default {p['default']!r}"
            described = f" - {p['description']}" if p["description"] else ""
            lines.append(f"    {pname}: {p['type']}, {default}{described}")
    return "".join(line + "\n" for line in lines)


def _annotation_name(annotation: Any) -> str:
    """A parameter's type as a user reads it: ``list of int``, ``float or none``, ``one of 'a', 'b'``
    (constraints are in the description and the schema, not here)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _annotation_name(args[0])
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        names = [_annotation_name(a) for a in args if a is not type(None)]
        return " or ".join(names + (["none"] if type(None) in args else []))
    if origin in (list, tuple, set, frozenset) and args:
        return f"{origin.__name__} of {_annotation_name(args[0])}"
    if origin is dict and args:
        return f"dict of {_annotation_name(args[0])} to {_annotation_name(args[1])}"
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
