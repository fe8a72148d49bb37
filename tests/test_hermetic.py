"""The suite is hermetic: other diffcore plugins installed beside the standard ones (the plugin guide's
complete plugin, a component plugin that fails to import, a command plugin that raises) change no
test's result, because the suite loads exactly the standard plugins (conftest.STANDARD_PLUGINS)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, write_distribution
from test_docs import write_plugin
from test_thirdparty import write_entry_points

from diffcore.entry_points import COMMAND_GROUP, LOAD_ENV

LISTING_TESTS = [
    "tests/test_cli.py::test_list_speaks_to_users",
    "tests/test_cli.py::test_plugins_json",
    "tests/test_registry.py::test_standard_plugins_come_through_entry_points",
    "tests/test_docs.py::test_the_generated_references_cover_the_registry_and_the_parser",
]
"""Tests that list or count what the registry holds: the ones a foreign plugin used to turn red."""

COMMAND_SOURCE = "raise RuntimeError('this command plugin is broken')\n"


def test_listing_tests_pass_with_other_plugins_installed(tmp_path: Path, broken_site: Path) -> None:
    guide = write_plugin(tmp_path / "src")
    site = tmp_path / "site"
    write_distribution(site, "diffcore-simple-ddim", "0.1.0", {"simple_ddim": "diffcore_simple_ddim"})
    write_entry_points(site, "diffcore-broken-cmd", "1.0", {COMMAND_GROUP: {"broken_cmd": "broken_cmd"}},
                       {"broken_cmd": COMMAND_SOURCE})
    env = {k: v for k, v in os.environ.items() if k != LOAD_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(guide / "src"), str(broken_site)])
    env["PYTEST_ADDOPTS"] = ""

    # the plugins are installed as far as diffcore can tell: a user's `diffcore plugins` sees them all
    seen = subprocess.run([sys.executable, "-m", "diffcore", "plugins", "--json"], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)
    report = json.loads(seen.stdout)
    assert "simple_ddim" in {p["name"] for p in report["plugins"]}
    assert {"broken", "raiser", "zz_dup", "broken_cmd"} <= {n for e in report["errors"]
                                                            for n in re.findall(r"plugin '(\w+)'", e)}

    # and the suite's listing tests still pass beside them
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *LISTING_TESTS],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert re.search(rf"\b{len(LISTING_TESTS)} passed\b", proc.stdout), proc.stdout[-2000:]
