"""A third-party plugin distribution, discovered end to end through its entry point; broken and
duplicate plugins that leave the CLI working."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_cli

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
    for path in example_plugin_paths:
        monkeypatch.syspath_prepend(str(path))
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


def test_passes_the_conformance_suites(example_registry: Registry) -> None:
    """The plugin wrote only alpha and sigma; the derived SDE must still be right."""
    process = example_registry.build("process", "cosine")
    check_linear_gaussian_consistency(process)  # type: ignore[arg-type]
    print(check_process_marginals(process))  # type: ignore[arg-type]
    for sampler in ("euler_maruyama", "probability_flow"):
        reference = example_registry.build("model", "gmm", **REFERENCE_MIXTURE)
        report = check_sampler(example_registry.build("sampler", sampler), process, reference)  # type: ignore[arg-type]
        print(report)


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
