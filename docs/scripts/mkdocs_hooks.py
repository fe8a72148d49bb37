"""mkdocs hooks: generate the spec and CLI references from the live code at build time, and serve
the maths renderer from the site itself.

``docs/reference/spec.md`` and ``docs/reference/cli.md`` hold a marker line (``<!-- generated: spec -->``,
``<!-- generated: cli -->``) that :func:`on_page_markdown` replaces with Markdown built from
``diffcore.spec.json_schema()`` (the registry as installed: third-party components included) and
``diffcore.cli.build_parser()``. Nothing generated is committed, so the pages cannot go stale.

MathJax 3 (the files of PyPI's ``django-static-mathjax``, MathJax's own build repackaged; the
``docs`` extra installs it) is copied into ``assets/mathjax/`` by :func:`on_files`, so formulas render
with no network: a CDN script left every formula as raw TeX offline.

Run ``python docs/scripts/mkdocs_hooks.py spec|cli`` to print a page's generated part.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from importlib import util
from pathlib import Path
from typing import Any

MARKER = re.compile(r"^<!-- generated: (\w+) -->$", re.MULTILINE)

KIND_TITLES = {
    "Process": "Processes (`process`)",
    "Model": "Score models (`model`)",
    "Sampler": "Samplers (`sampler`)",
    "Objective": "Objectives (`objective`)",
    "Guidance": "Guidance (`guidance`)",
    "Dataset": "Data sets (`data`)",
    "Classifier": "Classifiers (`classifier`)",
}


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _escape_html(text: str) -> str:
    """``<`` and ``>`` outside code spans as entities, so ``{type: <name>}`` is not read as a tag."""
    parts = re.split(r"(`+[^`]*`+)", text)
    return "".join(p if p.startswith("`") else p.replace("<", "&lt;").replace(">", "&gt;") for p in parts)


def _cell(text: Any) -> str:
    """Text fit for one Markdown table cell."""
    s = _escape_html(" ".join(str(text).split()))
    return s.replace("|", "\\|")


def _anchor(name: str) -> str:
    return name.lower().replace("_", "-")


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _type(prop: dict[str, Any]) -> str:
    """A short type expression of a JSON Schema property."""
    if "$ref" in prop:
        name = _ref_name(prop["$ref"])
        return f"[{name}](#{_anchor(name)})"
    if "const" in prop:
        return f"`{json.dumps(prop['const'])}`"
    if "enum" in prop:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in prop["enum"])
    if "discriminator" in prop:
        names = sorted(prop["discriminator"]["mapping"].items())
        return "one of " + ", ".join(f"[`{n}`](#{_anchor(_ref_name(r))})" for n, r in names)
    for key in ("anyOf", "oneOf"):
        if key in prop:
            return " \\| ".join(_type(p) for p in prop[key])
    kind = prop.get("type")
    if kind == "array":
        if "prefixItems" in prop:
            return "[" + ", ".join(_type(p) for p in prop["prefixItems"]) + "]"
        return f"list of {_type(prop.get('items', {}))}" if prop.get("items") else "list"
    if kind == "object" and isinstance(prop.get("additionalProperties"), dict):
        return f"map to {_type(prop['additionalProperties'])}"
    if isinstance(kind, list):
        return " \\| ".join(kind)
    return str(kind) if kind else "any"


def _constraints(prop: dict[str, Any]) -> str:
    parts = []
    for key, sym in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<"),
                     ("minItems", "items >="), ("maxItems", "items <="), ("minLength", "length >="),
                     ("maxLength", "length <=")):
        if key in prop:
            parts.append(f"{sym} {prop[key]:g}" if isinstance(prop[key], float) else f"{sym} {prop[key]}")
    if "pattern" in prop:
        parts.append(f"matches `{prop['pattern']}`")
    for key in ("anyOf", "oneOf"):
        for sub in prop.get(key, []):
            inner = _constraints(sub)
            if inner:
                parts.append(inner)
    if prop.get("type") == "array" and isinstance(prop.get("items"), dict):
        inner = _constraints(prop["items"])
        if inner:
            parts.append(f"each {inner}")
    return ", ".join(parts)


def _default(prop: dict[str, Any], required: bool) -> str:
    if required:
        return "required"
    if "default" not in prop:
        return ""
    return f"`{json.dumps(prop['default'])}`"


def _fields_table(model: dict[str, Any], *, skip: tuple[str, ...] = ()) -> list[str]:
    props = model.get("properties", {})
    required = set(model.get("required", []))
    rows = [(name, p) for name, p in props.items() if name not in skip]
    if not rows:
        return ["No parameters.", ""]
    out = ["| field | type | default | constraints | description |", "|---|---|---|---|---|"]
    for name, prop in rows:
        out.append(f"| `{name}` | {_type(prop)} | {_default(prop, name in required)} | {_cell(_constraints(prop))} "
                   f"| {_cell(prop.get('description', ''))} |")
    return [*out, ""]


def _description(text: str) -> list[str]:
    return [_escape_html(" ".join(line.strip() for line in text.splitlines())), ""]


# ---------------------------------------------------------------------------------------------
# the spec reference
# ---------------------------------------------------------------------------------------------


def spec_markdown() -> str:
    from diffcore.spec import json_schema

    schema = json_schema()
    defs: dict[str, Any] = schema["$defs"]
    out: list[str] = []
    for top in schema["anyOf"]:
        title = top.get("title", "spec")
        heading = "Pipeline spec" if "classifier" not in top.get("properties", {}) else "Classifier spec"
        out += [f"## {heading}", "", f"JSON Schema title `{title}`. " + " ".join(top.get("description", "").split()),
                "", *_fields_table(top)]
    groups: dict[str, list[str]] = {}
    for name in defs:
        prefix = name.split("_", 1)[0] if "_" in name else ""
        groups.setdefault(prefix if prefix in KIND_TITLES else "", []).append(name)
    for prefix, title in KIND_TITLES.items():
        names = groups.get(prefix, [])
        if not names:
            continue
        out += [f"## {title}", ""]
        for name in sorted(names):
            model = defs[name]
            component = model["properties"].get("type", {}).get("const", name)
            out += [f"### {prefix.lower()}: `{component}` {{#{_anchor(name)}}}", ""]
            out += _description(model.get("description", ""))
            out += _fields_table(model, skip=("type",))
    others = sorted(groups.get("", []))
    if others:
        out += ["## Sections", ""]
        for name in others:
            model = defs[name]
            out += [f"### `{name}` {{#{_anchor(name)}}}", "", *_description(model.get("description", "")),
                    *_fields_table(model)]
    text = json.dumps(schema, indent=2)
    out += ["## The whole schema", "",
            f"What `diffcore schema` prints for the plugins installed when this site was built ({len(text):,} "
            "characters):", "",
            '??? note "JSON Schema"', "", "    ```json"]
    out += ["    " + line for line in text.splitlines()]
    out += ["    ```", ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# the CLI reference
# ---------------------------------------------------------------------------------------------


def _option_name(action: argparse.Action) -> str:
    if action.option_strings:
        names = ", ".join(f"`{s}`" for s in action.option_strings)
        if action.nargs == 0:
            return names
        metavar = action.metavar or (("{" + ",".join(map(str, action.choices)) + "}") if action.choices
                                     else action.dest.upper())
        return f"{names} `{metavar}`"
    return f"`{action.metavar or action.dest}`"


def _actions_table(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
            continue
        default = action.default
        shown = "" if default in (None, False, [], argparse.SUPPRESS) or action.nargs == 0 else f"`{default}`"
        if action.required:
            shown = "required"
        if action.choices and action.option_strings:
            shown = (shown + "; " if shown else "") + "one of " + ", ".join(f"`{c}`" for c in action.choices)
        rows.append(f"| {_option_name(action)} | {_cell(shown)} | {_cell(action.help or '')} |")
    if not rows:
        return []
    return ["| argument | default | description |", "|---|---|---|", *rows, ""]


def cli_markdown() -> str:
    from diffcore.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in sub._choices_actions}
    builtin = {"plugins", "list", "schema", "validate", "train", "sample", "likelihood"}
    out = ["## `diffcore`", "", *_description(parser.description or ""),
           "```text", parser.format_usage().strip(), "```", "", *_actions_table(parser),
           "| command | what it does |", "|---|---|"]
    out += [f"| [`{name}`](#{_anchor('diffcore-' + name)}) | {_cell(helps.get(name, ''))} |" for name in sub.choices]
    out.append("")
    for name, command in sub.choices.items():
        out += [f"## `diffcore {name}` {{#{_anchor('diffcore-' + name)}}}", ""]
        if name not in builtin:
            out += ["*Added by a command plugin (entry-point group `diffcore.commands`).*", ""]
        out += _description(command.description or helps.get(name) or "")
        out += ["```text", command.format_usage().strip(), "```", "", *_actions_table(command)]
        if command.epilog:
            examples = [line.strip() for line in command.epilog.splitlines()[1:] if line.strip()]
            out += ["Examples:", "", "```bash", *examples, "```", ""]
    return "\n".join(out)


GENERATORS = {"spec": spec_markdown, "cli": cli_markdown}


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace each ``<!-- generated: NAME -->`` line by the output of ``GENERATORS[NAME]``."""

    def generate(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise KeyError(f"{page.file.src_path}: unknown generated section {name!r}; known: {sorted(GENERATORS)}")
        return GENERATORS[name]()

    return MARKER.sub(generate, markdown)


MATHJAX_DEST = "assets/mathjax"
"""Where the site serves MathJax (``mkdocs.yml``'s ``extra_javascript`` names its script there)."""


def mathjax_files() -> list[tuple[Path, str]]:
    """``(installed file, path within the site)`` of MathJax's CommonHTML component and its fonts."""
    spec = util.find_spec("mathjax")
    if spec is None or spec.origin is None:
        raise RuntimeError("the docs need MathJax from the package django-static-mathjax: pip install -e .[docs]")
    es5 = Path(spec.origin).parent / "static" / "mathjax" / "es5"
    chosen = [es5 / "tex-mml-chtml.js", *sorted((es5 / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))]
    return [(path, f"{MATHJAX_DEST}/{path.relative_to(es5).as_posix()}") for path in chosen]


def on_files(files: Any, config: Any) -> Any:
    """Add MathJax's files to the site (:func:`mathjax_files`)."""
    from mkdocs.structure.files import File

    for path, dest in mathjax_files():
        files.append(File.generated(config, dest, abs_src_path=str(path)))
    return files


if __name__ == "__main__":
    print(GENERATORS[sys.argv[1]]())
