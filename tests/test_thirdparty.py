"""A third-party plugin distribution, discovered end to end through its entry points (a component
and a subcommand); broken and duplicate plugins that leave the CLI working."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLE_PLUGIN, ROOT, load_plugins, run_cli, write_distribution

from diffcore import Registry
from diffcore.pipeline import Pipeline
from diffcore.testing.conformance import (
    REFERENCE_MIXTURE,
    check_linear_gaussian_consistency,
    check_process_marginals,
    check_sampler,
)

COSINE_SPEC = """
process: {type: cosine, s: 0.008}
model:
  type: gmm
  weights: [0.3, 0.7]
  means: [[-3.0, 0.0], [3.0, 1.0]]
  variances: [[0.5, 0.5], [1.0, 0.3]]
sampler: {type: euler_maruyama, steps: 200}
"""


@pytest.fixture
def example_registry(example_plugin_paths: list[Path], monkeypatch: pytest.MonkeyPatch) -> Registry:
    load_plugins(monkeypatch, *example_plugin_paths)
    registry = Registry()
    registry.load_entry_points()
    return registry


def test_discovered_with_its_distribution(example_plugin_paths: list[Path]) -> None:
    proc = run_cli("plugins", "--json", extra_paths=example_plugin_paths)
    assert proc.returncode == 0, proc.stderr
    plugins = {p["name"]: p for p in json.loads(proc.stdout)["plugins"]}
    assert plugins["example"]["distribution"] == "diffcore-example"
    assert plugins["example"]["version"] == "0.3.1"
    assert plugins["example"]["components"] == ["process:cosine"]


def test_validates_appears_in_schema_and_samples(example_plugin_paths: list[Path], tmp_path: Path) -> None:
    spec = tmp_path / "cosine.yaml"
    spec.write_text(COSINE_SPEC)
    proc = run_cli("validate", str(spec), extra_paths=example_plugin_paths)
    assert proc.returncode == 0 and "process cosine" in proc.stdout, proc.stderr
    proc = run_cli("schema", extra_paths=example_plugin_paths)
    schema = json.loads(proc.stdout)
    assert "Process_cosine" in schema["$defs"]
    assert schema["$defs"]["Process_cosine"]["properties"]["s"]["default"] == 0.008
    out = tmp_path / "x.npy"
    proc = run_cli("sample", str(spec), "--num", "4000", "--out", str(out), "--json", extra_paths=example_plugin_paths)
    assert proc.returncode == 0, proc.stderr
    x = np.load(out)
    assert abs((x[:, 0] > 0).mean() - 0.7) < 0.03  # the heavier mode on the right
    # without the plugin the same spec is an error that names the field
    proc = run_cli("validate", str(spec))
    assert proc.returncode == 2 and "`process.type`" in proc.stderr and "Traceback" not in proc.stderr


def conformance(registry: Registry, *, num: int, weight_tol: float) -> None:
    """The plugin wrote only alpha and sigma; the derived SDE must still be right: the coefficients
    agree with alpha and sigma, the simulated forward SDE (2000 steps) has the closed-form marginals
    at ``num`` samples, and two samplers reproduce the mixture at ``num`` samples."""
    process = registry.build("process", "cosine")
    check_linear_gaussian_consistency(process)  # type: ignore[arg-type]
    print(check_process_marginals(process, num=num))  # type: ignore[arg-type]
    reference = registry.build("model", "gmm", **REFERENCE_MIXTURE)
    for sampler in ("euler_maruyama", "probability_flow"):
        report = check_sampler(registry.build("sampler", sampler), process, reference,  # type: ignore[arg-type]
                               num=num, weight_tol=weight_tol)
        print(report)


@pytest.mark.slow
def test_passes_the_conformance_suites(example_registry: Registry) -> None:
    """At the suites' default size, 20k samples."""
    conformance(example_registry, num=20_000, weight_tol=0.02)


def test_passes_the_conformance_suites_at_small_size(example_registry: Registry) -> None:
    """At 2000 samples, mode weights within four binomial standard deviations (0.045)."""
    conformance(example_registry, num=2000, weight_tol=0.045)


def test_spec_model_is_rebuilt_when_the_registry_changes(example_registry: Registry) -> None:
    spec = {"process": {"type": "cosine"}, "model": {"type": "gmm", **REFERENCE_MIXTURE},
            "sampler": {"type": "euler_maruyama", "steps": 10}}
    assert Pipeline.from_spec(spec, registry=example_registry).process.name == "cosine"
    example_registry.unregister_plugin("example")
    from diffcore.errors import SpecError
    with pytest.raises(SpecError, match="no process named 'cosine'"):
        Pipeline.from_spec(spec, registry=example_registry)


def test_broken_plugins_are_reported_and_the_cli_keeps_working(broken_site: Path, tmp_path: Path) -> None:
    proc = run_cli("plugins", extra_paths=[broken_site])
    assert proc.returncode == 0, proc.stderr
    for needle in ("plugin 'broken' (diffcore-broken 1.0): failed to import",
                   "No module named 'frobnicate_not_installed'",
                   "plugin 'raiser' (diffcore-raiser 0.2): its diffcore_register hook raised RuntimeError",
                   "hook exploded",
                   "registered by both plugin 'processes' and plugin 'zz_dup'"):
        assert needle in proc.stdout, proc.stdout
    out = tmp_path / "x.npy"
    proc = run_cli("sample", str(ROOT / "examples" / "gmm2d.yaml"), "--num", "10", "--steps", "5",
                   "--out", str(out), extra_paths=[broken_site])
    assert proc.returncode == 0 and out.exists(), proc.stderr


def test_strict_mode_fails_with_the_same_message(broken_site: Path) -> None:
    lenient = run_cli("plugins", "--json", extra_paths=[broken_site])
    first_error = json.loads(lenient.stdout)["errors"][0]
    strict = run_cli("plugins", extra_paths=[broken_site], env={"DIFFCORE_STRICT_PLUGINS": "1"})
    assert strict.returncode == 2 and "Traceback" not in strict.stderr
    assert first_error in strict.stderr and "DIFFCORE_STRICT_PLUGINS" in strict.stderr


def test_load_plugins_env_var_through_the_cli(broken_site: Path) -> None:
    proc = run_cli("plugins", "--json", extra_paths=[broken_site], env={"DIFFCORE_LOAD_PLUGINS": "processes,zz_dup"})
    data = json.loads(proc.stdout)
    assert sorted(p["name"] for p in data["plugins"]) == ["processes", "zz_dup"]
    proc = run_cli("list", "--json", env={"DIFFCORE_LOAD_PLUGINS": ""})
    assert proc.returncode == 0 and json.loads(proc.stdout) == []


# -- command plugins --------------------------------------------------------------------------

RAISING_COMMANDS_SOURCE = """
from diffcore import hookimpl

@hookimpl
def diffcore_add_commands(subparsers):
    subparsers.add_parser("ghost", help="added, then the hook fails")
    raise RuntimeError("command hook exploded")
"""
"""A command plugin whose hook raises after adding a command."""

CLASHING_COMMANDS_SOURCE = """
from diffcore import hookimpl

@hookimpl
def diffcore_add_commands(subparsers):
    subparsers.add_parser("sample", help="a second `sample`")
"""
"""A command plugin taking the name of a built-in command."""


def write_entry_points(site: Path, name: str, version: str, groups: dict[str, dict[str, str]],
                       modules: dict[str, str] | None = None) -> Path:
    """:func:`conftest.write_distribution`, with the entry points of every group in ``groups``."""
    write_distribution(site, name, version, {}, modules)
    lines = [f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) for group, eps in groups.items()]
    (site / f"{name.replace('-', '_')}-{version}.dist-info" / "entry_points.txt").write_text("\n".join(lines))
    return site


@pytest.fixture(scope="module")
def example_with_commands(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """tests/plugins/diffcore-example on the path as an installed distribution with all its entry
    points (the component and the command plugin), read from its pyproject.toml."""
    project = tomllib.loads((EXAMPLE_PLUGIN / "pyproject.toml").read_text())["project"]
    site = write_entry_points(tmp_path_factory.mktemp("example-cmd-dist"), project["name"], project["version"],
                              project["entry-points"])
    return [site, EXAMPLE_PLUGIN]  # its metadata first: a stray diffcore_example.egg-info would shadow it


@pytest.fixture(scope="module")
def broken_commands_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three bad command plugins: one fails to import, one raises in its hook, one takes `sample`."""
    site = tmp_path_factory.mktemp("broken-commands")
    group = "diffcore.commands"
    write_entry_points(site, "diffcore-cmd-broken", "1.0", {group: {"cmd_broken": "cmd_broken_mod"}},
                       {"cmd_broken_mod": "import frobnicate_not_installed\n"})
    write_entry_points(site, "diffcore-cmd-raiser", "0.2", {group: {"cmd_raiser": "cmd_raiser_mod"}},
                       {"cmd_raiser_mod": RAISING_COMMANDS_SOURCE})
    write_entry_points(site, "diffcore-cmd-clash", "0.1", {group: {"cmd_clash": "cmd_clash_mod"}},
                       {"cmd_clash_mod": CLASHING_COMMANDS_SOURCE})
    return site


def test_example_command_appears_in_help_and_runs(example_with_commands: list[Path]) -> None:
    proc = run_cli("--help", extra_paths=example_with_commands)
    assert proc.returncode == 0 and "cosine-schedule" in proc.stdout and "demo" in proc.stdout, proc.stderr
    proc = run_cli("cosine-schedule", "--points", "3", "--json", extra_paths=example_with_commands)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["t"] for r in rows] == pytest.approx([0.0, 0.4973, 0.9946])
    assert rows[0]["alpha"] == pytest.approx(1.0) and rows[-1]["alpha"] < 0.1
    assert all(abs(r["alpha"] ** 2 + r["sigma"] ** 2 - 1) < 1e-9 for r in rows)
    assert rows[0]["alpha"] > rows[1]["alpha"] > rows[2]["alpha"]
    proc = run_cli("plugins", "--json", extra_paths=example_with_commands)
    data = json.loads(proc.stdout)
    commands = {p["name"]: p for p in data["commands"]}
    assert commands["example"] == {"name": "example", "distribution": "diffcore-example", "version": "0.3.1",
                                   "commands": ["cosine-schedule"], "errors": []}
    assert {p["name"]: p for p in data["plugins"]}["example"]["components"] == ["process:cosine"]
    assert data["errors"] == []


def test_example_command_errors_exit_2_in_one_paragraph(example_with_commands: list[Path]) -> None:
    for args, expected in ((["--points", "1"], "--points must be at least 2"), (["--s", "-1"], "`s`")):
        proc = run_cli("cosine-schedule", *args, extra_paths=example_with_commands)
        assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_help_with_the_example_command_plugin_does_not_import_torch(example_with_commands: list[Path]) -> None:
    code = textwrap.dedent("""
        import contextlib, io, sys
        from diffcore.cli import main
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            main(["--help"])
        assert "cosine-schedule" in out.getvalue()
        assert "torch" not in sys.modules
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFCORE_")}
    env["PYTHONPATH"] = os.pathsep.join([*map(str, example_with_commands), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr


def test_broken_command_plugins_are_reported_and_the_cli_keeps_working(broken_commands_site: Path,
                                                                        tmp_path: Path) -> None:
    proc = run_cli("plugins", extra_paths=[broken_commands_site])
    assert proc.returncode == 0, proc.stderr
    for needle in ("command plugin 'cmd_broken' (diffcore-cmd-broken 1.0): failed to import",
                   "No module named 'frobnicate_not_installed'",
                   "command plugin 'cmd_raiser' (diffcore-cmd-raiser 0.2): its diffcore_add_commands hook raised "
                   "RuntimeError: command hook exploded",
                   "command plugin 'cmd_clash' (diffcore-cmd-clash 0.1): its diffcore_add_commands hook raised",
                   "conflicting subparser: sample",
                   "demo (diffcore-demo"):
        assert needle in proc.stdout, proc.stdout
    data = json.loads(run_cli("plugins", "--json", extra_paths=[broken_commands_site]).stdout)
    assert len(data["errors"]) == 3 and {p["name"]: p["commands"] for p in data["commands"]}["cmd_raiser"] == []
    proc = run_cli("--help", extra_paths=[broken_commands_site])
    assert proc.returncode == 0 and "demo" in proc.stdout and "ghost" not in proc.stdout, proc.stderr
    proc = run_cli("ghost", extra_paths=[broken_commands_site])
    assert proc.returncode == 2 and "invalid choice: 'ghost'" in proc.stderr
    out = tmp_path / "x.npy"
    proc = run_cli("sample", str(ROOT / "examples" / "gmm2d.yaml"), "--num", "10", "--steps", "5",
                   "--out", str(out), extra_paths=[broken_commands_site])
    assert proc.returncode == 0 and out.exists(), proc.stderr  # the built-in `sample`, not the clash


def test_strict_mode_makes_a_broken_command_plugin_fatal(broken_commands_site: Path) -> None:
    lenient = json.loads(run_cli("plugins", "--json", extra_paths=[broken_commands_site]).stdout)
    strict = run_cli("--help", extra_paths=[broken_commands_site], env={"DIFFCORE_STRICT_PLUGINS": "1"})
    assert strict.returncode == 2 and "Traceback" not in strict.stderr
    assert lenient["errors"][0] in strict.stderr and "DIFFCORE_STRICT_PLUGINS" in strict.stderr
