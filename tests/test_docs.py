"""The plugin-author guide's code runs: docs/plugins.md's complete plugin is written out as the guide
lays it out, registered in-process as the guide says, used in a spec, and its conformance template
run with pytest as the guide says (about 15 s on a CPU core; ``DOCS_CONFORMANCE_SCALE`` sets its
``CONFORMANCE_SCALE``, default 1)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "plugins.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
FILE = re.compile(r"^# file: (\S+)")


def code_blocks(path: Path = GUIDE) -> list[tuple[str, str]]:
    """``(language, code)`` of every fenced block of ``path``, in order."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(path.read_text())]


def file_blocks() -> dict[str, str]:
    """The blocks that start with ``# file: PATH``, by path."""
    files: dict[str, str] = {}
    for _, code in code_blocks():
        match = FILE.match(code)
        if match:
            assert match.group(1) not in files, f"{match.group(1)} appears twice in {GUIDE.name}"
            files[match.group(1)] = code
    return files


def write_plugin(root: Path) -> Path:
    """Write the guide's ``diffcore-simple-ddim`` distribution under ``root``; return its folder."""
    files = {p: c for p, c in file_blocks().items() if p.startswith("diffcore-simple-ddim/")}
    tree = next(code for lang, code in code_blocks() if lang == "text" and code.startswith("diffcore-simple-ddim/"))
    listed = {line.strip() for line in tree.splitlines()[1:] if line.strip()}
    assert {p.removeprefix("diffcore-simple-ddim/") for p in files} == listed, "the layout and the files differ"
    for rel, code in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(code)
    return root / "diffcore-simple-ddim"


def in_process_blocks() -> list[str]:
    """The guide's complete Python examples that register a plugin in-process."""
    return [code for lang, code in code_blocks() if lang == "python" and "with plugin_registered(" in code]


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = write_plugin(tmp_path)
    monkeypatch.syspath_prepend(str(folder / "src"))
    yield folder
    for name in [m for m in sys.modules if m.startswith("diffcore_simple_ddim")]:
        del sys.modules[name]


def test_the_guide_has_the_plugin_its_layout_and_examples() -> None:
    assert {"diffcore-simple-ddim/pyproject.toml", "diffcore-simple-ddim/src/diffcore_simple_ddim/__init__.py",
            "diffcore-simple-ddim/tests/test_conformance.py"} <= set(file_blocks())
    assert len(in_process_blocks()) == 2
    assert "diffcore-cosine/src/diffcore_cosine/commands.py" in file_blocks()


def test_the_plugins_pyproject_declares_the_entry_point(plugin_dir: Path) -> None:
    import tomllib

    meta = tomllib.loads((plugin_dir / "pyproject.toml").read_text())
    assert meta["project"]["entry-points"]["diffcore"] == {"simple_ddim": "diffcore_simple_ddim"}
    assert meta["tool"]["setuptools"]["packages"]["find"]["where"] == ["src"]


@pytest.mark.parametrize("index", [0, 1], ids=["simple_ddim_in_process", "model_and_guidance"])
def test_the_in_process_examples_run_and_print_what_they_say(plugin_dir: Path, index: int) -> None:
    from diffcore.registry import get_registry

    code = in_process_blocks()[index]
    before = {(k, n) for k in ("process", "sampler", "model", "guidance") for n in get_registry().names(k)}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"{GUIDE.name}[in-process example {index}]", "exec"), {"__name__": "guide_example"})
    lines = out.getvalue().splitlines()
    if index == 0:
        assert lines[0] == "[('process', 'cosine'), ('sampler', 'simple_ddim')]"
        assert abs(float(lines[1]) - 0.7) < 0.04          # "about 0.7, the heavier mode's weight"
    else:
        variances = [float(v) for v in re.findall(r"[-+]?\d+\.\d+", lines[0])]
        assert len(variances) == 2 and all(abs(v - 4.0) < 0.4 for v in variances)   # "close to 4"
    after = {(k, n) for k in ("process", "sampler", "model", "guidance") for n in get_registry().names(k)}
    assert after == before                                # unregistered on exit


def test_the_plugin_samples_from_a_spec(plugin_dir: Path) -> None:
    import diffcore_simple_ddim
    import torch

    from diffcore import Pipeline
    from diffcore.testing import plugin_registered

    spec = {"process": {"type": "vp"},
            "model": {"type": "gmm", "weights": [1.0], "means": [[1.0, -2.0]], "variances": [[0.25, 1.0]]},
            "sampler": {"type": "simple_ddim", "steps": 200, "eta": 1.0}}
    with plugin_registered(diffcore_simple_ddim, "simple_ddim"):
        x = Pipeline.from_spec(spec).sample(4000, seed=0).x
    assert torch.allclose(x.mean(0), torch.tensor([1.0, -2.0]), atol=0.06)
    assert torch.allclose(x.var(0), torch.tensor([0.25, 1.0]), rtol=0.1)


def test_the_conformance_template_passes(plugin_dir: Path) -> None:
    """Run as the guide says: ``python -m pytest tests`` in the plugin's folder with ``src`` on
    ``PYTHONPATH``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_dir / "src"), os.environ.get("PYTHONPATH", "")]),
           "CONFORMANCE_SCALE": os.environ.get("DOCS_CONFORMANCE_SCALE", "1"), "PYTEST_ADDOPTS": ""}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                          cwd=plugin_dir, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert re.search(r"\b10 passed\b", proc.stdout), proc.stdout[-2000:]


def test_the_subcommand_example_adds_a_working_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The guide's ``diffcore-cosine`` command module: its hook adds ``cosine-schedule``, importing it
    imports no torch, and ``run`` prints alpha(t) or raises ``UsageError`` (exit 2)."""
    import argparse
    import ast
    import json

    from diffcore.errors import UsageError

    rel = "diffcore-cosine/src/diffcore_cosine/commands.py"
    code = file_blocks()[rel]
    top_imports = set()
    for node in ast.parse(code).body:                     # module level only: run() imports torch itself
        if isinstance(node, ast.Import):
            top_imports |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            top_imports.add((node.module or "").split(".")[0])
    assert "torch" not in top_imports
    package = tmp_path / "diffcore-cosine" / "src" / "diffcore_cosine"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "commands.py").write_text(code)
    ddim = write_plugin(tmp_path) / "src" / "diffcore_simple_ddim" / "__init__.py"   # the guide's CosineVP
    (package / "process.py").write_text(ddim.read_text())
    monkeypatch.syspath_prepend(str(package.parent))
    try:
        import diffcore_cosine.commands as commands

        parser = argparse.ArgumentParser(prog="diffcore")
        commands.diffcore_add_commands(parser.add_subparsers(dest="command"))
        args = parser.parse_args(["cosine-schedule", "--points", "3"])
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert args.func(args) == 0
        result = json.loads(out.getvalue())
        assert len(result["t"]) == 3 and abs(result["alpha"][0] - 1.0) < 1e-12 and result["alpha"][2] < 0.1
        with pytest.raises(UsageError, match="--points must be at least 2"):
            args.func(parser.parse_args(["cosine-schedule", "--points", "1"]))
    finally:
        for name in [m for m in sys.modules if m.startswith("diffcore_cosine")]:
            del sys.modules[name]


def test_the_generated_references_cover_the_registry_and_the_parser() -> None:
    """The mkdocs hook's spec page names every registered component, its CLI page every command."""
    import argparse
    import importlib.util

    from diffcore.cli import build_parser
    from diffcore.registry import get_registry

    spec = importlib.util.spec_from_file_location("mkdocs_hooks", ROOT / "docs" / "scripts" / "mkdocs_hooks.py")
    assert spec is not None and spec.loader is not None
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    page = hooks.on_page_markdown("# Spec\n\n<!-- generated: spec -->\n", None, None, None)
    registry = get_registry()
    for kind, prefix in [("process", "process"), ("model", "model"), ("sampler", "sampler"),
                         ("objective", "objective"), ("guidance", "guidance"), ("dataset", "dataset")]:
        for name in registry.names(kind):
            assert f"### {prefix}: `{name}`" in page, (kind, name)
    cli = hooks.cli_markdown()
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name in sub.choices:
        assert f"## `diffcore {name}`" in cli
    assert "<!-- generated" not in page
