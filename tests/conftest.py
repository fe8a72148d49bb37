"""Shared test helpers: fabricated plugin distributions, CLI runners, devices."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
import torch
from torch import Tensor

from diffcore.entry_points import COMMAND_GROUP, COMPONENT_GROUP, LOAD_ENV
from diffcore.model import ScoreModel
from diffcore.process import ForwardProcess
from diffcore.registry import reset_registry
from diffcore.threads import THREADS_ENV

TEST_THREADS = 1
"""The suite's CPU threads per test process, in this process (torch) and in every command it starts
(``DIFFCORE_THREADS``): one, so that no test's time depends on what else the machine runs. With
torch's default of one thread per core, one test took 383 s instead of 3.9 s while another process
kept a core busy (diffcore.threads)."""
os.environ[THREADS_ENV] = str(TEST_THREADS)
os.environ["OMP_NUM_THREADS"] = str(TEST_THREADS)  # torch in every subprocess (torchrun ranks, nested pytest)
torch.set_num_threads(TEST_THREADS)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_PLUGIN = ROOT / "tests" / "plugins" / "diffcore-example"


def _standard_plugins() -> list[str]:
    """The plugins of the standard distributions (``plugins/*``), components and commands, by entry-point name."""
    names: set[str] = set()
    for pyproject in sorted((ROOT / "plugins").glob("*/pyproject.toml")):
        declared = tomllib.loads(pyproject.read_text())["project"].get("entry-points", {})
        names.update(*(declared.get(group, {}) for group in (COMPONENT_GROUP, COMMAND_GROUP)))
    return sorted(names)


STANDARD_PLUGINS = _standard_plugins()
"""The suite loads exactly these plugins (``DIFFCORE_LOAD_PLUGINS``), in this process and in
the commands it runs, plus those a test brings (:func:`load_plugins`, ``run_cli(extra_paths=)``): what
a user installed beside diffcore (a third-party plugin, a broken one) cannot change a result."""
os.environ[LOAD_ENV] = ",".join(STANDARD_PLUGINS)


def plugins_in(*sites: Path) -> list[str]:
    """Entry-point names of the plugins of the distributions in the ``sites`` folders."""
    dists = metadata.distributions(path=[str(site) for site in sites])
    groups = (COMPONENT_GROUP, COMMAND_GROUP)
    return sorted({ep.name for dist in dists for ep in dist.entry_points if ep.group in groups})


def load_plugins(monkeypatch: pytest.MonkeyPatch, *sites: Path) -> None:
    """Put ``sites`` on ``sys.path`` as installed distributions and let diffcore load their plugins
    beside the standard ones."""
    for site in sites:
        monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv(LOAD_ENV, ",".join(STANDARD_PLUGINS + plugins_in(*sites)))


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class DoubleWell(ForwardProcess):
    """dx = (x - x^3) dt + dw: a process that is not linear-Gaussian."""

    name = "double_well"

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        return x - x**3

    def diffusion(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def prior_sample(self, noise, event_shape, *, dtype):  # type: ignore[no-untyped-def]
        return noise.normal(event_shape, step=-1, stream="prior", dtype=dtype)

    def prior_log_prob(self, x: Tensor) -> Tensor:
        return torch.zeros(x.shape[0])


class ZeroScore(ScoreModel):
    """A score model of 2-D data that returns zeros (works with any process)."""

    name = "zero"
    event_shape = (2,)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        return torch.zeros_like(x)


BROKEN_IMPORT_SOURCE = "import frobnicate_not_installed\n"
"""A plugin module that fails to import."""

DUPLICATE_VP_SOURCE = """
from diffcore import hookimpl
from diffcore_processes import VPSDE

class MyVP(VPSDE):
    name = "vp"

@hookimpl
def diffcore_register(register):
    register(MyVP)
"""
"""A plugin module registering a second process named `vp`."""

RAISING_HOOK_SOURCE = """
from diffcore import hookimpl

@hookimpl
def diffcore_register(register):
    raise RuntimeError("hook exploded")
"""
"""A plugin module whose hook raises."""


def write_distribution(root: Path, name: str, version: str, entry_points: dict[str, str],
                       modules: dict[str, str] | None = None) -> Path:
    """Make ``root`` look like site-packages holding distribution ``name``: a ``.dist-info`` with
    its entry points in the ``diffcore`` group, plus the given module sources. Returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = ["[diffcore]"] + [f"{k} = {v}" for k, v in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for module, source in (modules or {}).items():
        (root / f"{module}.py").write_text(source)
    return root


@pytest.fixture(scope="session")
def example_plugin_paths(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Paths that put tests/plugins/diffcore-example on sys.path as an installed distribution,
    metadata and entry points read from its own pyproject.toml."""
    project = tomllib.loads((EXAMPLE_PLUGIN / "pyproject.toml").read_text())["project"]
    meta = write_distribution(tmp_path_factory.mktemp("example-dist"), project["name"], project["version"],
                              project["entry-points"]["diffcore"])
    return [meta, EXAMPLE_PLUGIN]  # the metadata first: a stray egg-info beside the sources must not shadow it


@pytest.fixture(scope="session")
def broken_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site directory with three bad plugins: one fails to import, one raises in its hook, one
    registers a second `vp`."""
    root = tmp_path_factory.mktemp("broken-site")
    write_distribution(root, "diffcore-broken", "1.0", {"broken": "broken_mod"}, {"broken_mod": BROKEN_IMPORT_SOURCE})
    write_distribution(root, "diffcore-raiser", "0.2", {"raiser": "raiser_mod"}, {"raiser_mod": RAISING_HOOK_SOURCE})
    write_distribution(root, "diffcore-dup", "2.0", {"zz_dup": "dup_mod"}, {"dup_mod": DUPLICATE_VP_SOURCE})
    return root


@pytest.fixture
def fresh_global_registry() -> Iterator[None]:
    """Forget the process-wide registry before and after the test (env vars and sys.path changes
    made by the test then take effect on the next lookup)."""
    reset_registry()
    yield
    reset_registry()


def run_cli(*args: str, extra_paths: list[Path] = (), env: dict[str, str] | None = None,  # type: ignore[assignment]
            cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run ``python -m diffcore ARGS`` in a subprocess with extra ``PYTHONPATH`` entries, loading the
    standard plugins and those of the ``extra_paths`` distributions (``env`` may say otherwise)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFCORE_")}
    full_env[THREADS_ENV] = full_env["OMP_NUM_THREADS"] = str(TEST_THREADS)
    full_env[LOAD_ENV] = ",".join(STANDARD_PLUGINS + plugins_in(*extra_paths))
    paths = [str(p) for p in extra_paths] + ([full_env["PYTHONPATH"]] if full_env.get("PYTHONPATH") else [])
    if paths:
        full_env["PYTHONPATH"] = os.pathsep.join(paths)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "diffcore", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=600)


def run_main(*args: str) -> tuple[int, str, str]:
    """``diffcore.cli.main(args)`` in this process: ``(exit code, stdout, stderr)``."""
    from diffcore.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()
