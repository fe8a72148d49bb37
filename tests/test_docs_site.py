"""The built documentation site as a reader sees it, in headless Chromium with no network: formulas are
typeset by the MathJax the site serves itself (a CDN script once left them as raw TeX offline), and
the quickstart's code and output blocks fit the page without a horizontal scroll bar.

Needs Chromium (Debian's ``chromium``; ``.ci/run`` installs it) and, to cut the network, a network
namespace (``unshare -n``, as root); skipped otherwise.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
UNSHARE = shutil.which("unshare")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt install chromium)"),
    pytest.mark.skipif(UNSHARE is None or os.geteuid() != 0, reason="needs `unshare -n` as root to cut the network"),
]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=20000", "--window-size=1280,1600"]
PORT = 8765

# Run inside a fresh network namespace (only loopback, brought up): a static server for the site and
# Chromium, which prints the page's DOM once MathJax has run (JavaScript's own measure of each block's
# overflow is appended to the body first).
SCRIPT = """
ip link set lo up
{python} -m http.server --bind 127.0.0.1 -d {site} {port} >/dev/null 2>&1 &
server=$!
for _ in $(seq 50); do
  {python} -c "import urllib.request as u; u.urlopen('http://127.0.0.1:{port}/')" 2>/dev/null && break
  sleep 0.1
done
{python} -c "import urllib.request as u; u.urlopen('https://pypi.org', timeout=3)" 2>/dev/null \
  && echo NETWORK-REACHABLE
"{chromium}" {flags} --user-data-dir={profile} --screenshot={png} "http://127.0.0.1:{port}/{page}" >/dev/null 2>&1
"{chromium}" {flags} --user-data-dir={profile} --dump-dom "http://127.0.0.1:{port}/{page}" 2>/dev/null
kill $server
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def offline_render(site: Path, page: str, tmp: Path, probe: str = "") -> str:
    """The DOM of ``page`` after its scripts ran, with no network; a screenshot goes to ``tmp``."""
    if probe:  # a script that writes what it measures into the DOM, run after the page's own
        target = site / page / "index.html"
        target.write_text(target.read_text().replace("</body>", f"<script>{probe}</script></body>"))
    script = SCRIPT.format(python=sys.executable, site=site, port=PORT, chromium=CHROMIUM, flags=" ".join(FLAGS),
                           profile=tmp / "profile", png=tmp / f"{page.strip('/').replace('/', '-')}.png", page=page)
    proc = subprocess.run([str(UNSHARE), "-n", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    assert "NETWORK-REACHABLE" not in proc.stdout, "the namespace did not cut the network"
    assert "<html" in proc.stdout, proc.stderr[-2000:]
    return proc.stdout


MATH_PROBE = """
window.addEventListener('load', () => setTimeout(() => {
  const all = [...document.querySelectorAll('.arithmatex')];
  const typeset = all.filter(e => e.querySelector('mjx-container') && !e.querySelector('mjx-merror')).length;
  document.body.insertAdjacentHTML('beforeend', `<p id="math">${typeset} of ${all.length}</p>`);
}, 2000));
"""


def test_formulas_render_with_no_network(site: Path, tmp_path: Path) -> None:
    """Every formula of the guidance page is typeset by the site's own MathJax (each ``arithmatex``
    span holds a rendered ``mjx-container``, none a MathJax error), with the network cut."""
    dom = offline_render(site, "concepts/guidance/", tmp_path, probe=MATH_PROBE)
    found = re.search(r'<p id="math">(\d+) of (\d+)</p>', dom)
    assert found, dom[-2000:]
    typeset, formulas = int(found.group(1)), int(found.group(2))
    assert formulas >= 10 and typeset == formulas
    assert "cdn.jsdelivr.net" not in dom
    assert (tmp_path / "concepts-guidance.png").stat().st_size > 10_000


OVERFLOW_PROBE = """
window.addEventListener('load', () => setTimeout(() => {
  const wide = [...document.querySelectorAll('.md-content pre, .md-content code')]
    .filter(e => e.scrollWidth > e.clientWidth + 1).length;
  document.body.insertAdjacentHTML('beforeend', `<p id="overflow-count">${wide}</p>`);
}, 500));
"""


def test_quickstart_blocks_need_no_horizontal_scroll(site: Path, tmp_path: Path) -> None:
    """At a 1280 px wide window no code or output block of the quickstart overflows its box."""
    dom = offline_render(site, "quickstart/", tmp_path, probe=OVERFLOW_PROBE)
    assert '<p id="overflow-count">0</p>' in dom, dom[dom.find('id="overflow-count"') - 20:][:80]
