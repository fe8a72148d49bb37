"""What ``diffcore list`` shows: the registered components, their capabilities and parameters."""

from __future__ import annotations

from typing import Any, Literal, get_args, get_origin

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
            "summary": " ".join((entry.cls.__doc__ or "").strip().split("\n\n")[0].split()),
            "capabilities": sorted(entry.cls.capabilities()), "requires": sorted(entry.cls.requires),
            "params": params,
        })
    return rows


def format_components(rows: list[dict[str, Any]]) -> str:
    """The human-readable listing of :func:`describe_components` rows."""
    lines = []
    for row in rows:
        caps = f" [capabilities: {', '.join(row['capabilities'])}]" if row["capabilities"] else ""
        reqs = f" [requires: {', '.join(row['requires'])}]" if row["requires"] else ""
        lines.append(f"{row['kind']} {row['name']} (plugin {row['plugin']}){caps}{reqs}: {row['summary']}")
        for pname, p in row["params"].items():
            default = "required" if p["required"] else f"default {p['default']!r}"
            described = f" - {p['description']}" if p["description"] else ""
            lines.append(f"    {pname}: {p['type']}, {default}{described}")
    return "".join(line + "\n" for line in lines)


def _annotation_name(annotation: Any) -> str:
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(annotation))
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
