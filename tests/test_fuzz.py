"""A fuzzer of the command line: Hypothesis generates hostile specs, ``--set`` overrides, ``.npy``
start states and checkpoint metadata, and every case must end in exactly one of two ways:

- exit 0 with a correct result (``validate`` says ok; ``sample`` wrote ``(num, *shape)`` finite
  float32 values, as its JSON summary says; ``train`` printed valid JSON and left a loadable
  checkpoint), or
- exit 2 with one paragraph on stderr (``diffcore: error: ...``);

never a traceback, a hang (each case has a deadline), a memory blow-up (the worker runs under an
address-space limit, so one raises ``MemoryError`` instead of taking the machine down), a file
written outside ``--out`` or an existing file replaced.

The cases run in a separate worker process (spawned once, diffcore imported once, restarted if a
case kills it). The default tier runs a fast slice (100 cases per fuzzer); ``-m slow`` runs 2000
per fuzzer. Run with ``-s`` to see the count of cases per command and exit status.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import json
import math
import multiprocessing as mp
import os
import resource
import signal
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
CASE_SECONDS = 120  # a case of a million sampler steps takes 23 s on an idle core, over 60 on a loaded one
MEMORY_LIMIT = 12 << 30  # address space of the worker: far above any sane case, far below the machine
FAST = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
SLOW = settings(max_examples=2000, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))

BASE_SPECS: list[dict[str, Any]] = [
    {"process": {"type": "vp", "beta_min": 0.1, "beta_max": 20.0},
     "model": {"type": "gmm", "weights": [0.3, 0.7], "means": [[-2.0, 0.0], [2.0, 1.0]],
               "variances": [[1.0, 0.5], [0.3, 1.0]]},
     "sampler": {"type": "ddim", "steps": 5}},
    {"process": {"type": "ve", "sigma_min": 0.01, "sigma_max": 10.0},
     "model": {"type": "gmm", "weights": [1.0], "means": [[0.0]], "variances": [[1.0]]},
     "sampler": {"type": "heun", "steps": 3}},
    {"process": {"type": "subvp"}, "model": {"type": "mlp", "shape": [2], "hidden": 16, "depth": 2},
     "sampler": {"type": "euler_maruyama", "steps": 4}, "objective": {"type": "dsm"},
     "data": {"type": "moons", "num": 200}, "train": {"steps": 3, "batch_size": 16}},
    {"process": {"type": "vp"}, "model": {"type": "gmm", "weights": [0.5, 0.5], "means": [[0.0, 0.0], [1.0, 1.0]],
                                          "variances": [[1.0, 1.0], [1.0, 1.0]]},
     "sampler": {"type": "dpm_solver", "steps": 4, "order": 2}, "guidance": []},
]

# ---------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------

NAMES = ["vp", "ve", "subvp", "gmm", "mlp", "resmlp", "unet", "ddim", "heun", "pc", "langevin", "unipc",
         "probability_flow", "reverse_sde", "dsm", "moons", "array", "digits", "nope", "", "__import__",
         "os.system", "!!python/object:os.system"]
FIELDS = ["type", "steps", "shape", "t_min", "T", "beta_min", "beta_max", "sigma_min", "sigma_max", "weights",
          "means", "variances", "hidden", "depth", "rtol", "atol", "order", "num", "path", "batch_size", "lr",
          "seed", "guidance", "process", "model", "sampler", "data", "train", "objective", "x", "0", "labels",
          "num_classes", "channels", "image_size", "predictor", "corrector", "adaptive", "method"]

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2**31, 2**63, 10**6, 10**6 + 1, 2 * 10**9, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e-300, 1e300, -0.0, 5e-324, 1e-7, 1e4, 0.5]),
    st.sampled_from(NAMES),
    st.text(max_size=20),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.sampled_from(FIELDS), inner, max_size=4)),
                      max_leaves=12)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*prefix, i))


def near(value: float) -> st.SearchStrategy[float]:
    """Numbers of the same type as ``value`` that stay plausible: scaled by powers of ten, negated,
    zero, one, the boundaries of float32 and of the documented limits."""
    if isinstance(value, int):
        return st.one_of(st.integers(-3, 3), st.sampled_from([value * 10**k for k in (1, 2, 3, 6)]),
                         st.sampled_from([2**24, 10**6, 10**6 + 1, 2**31, 2**63 - 1]), st.just(-value))
    return st.one_of(st.sampled_from([value * 10.0**k for k in (-300, -30, -8, -3, -1, 1, 3, 8, 30, 300)]),
                     st.sampled_from([0.0, 1.0, -value, 3.4e38, 1.2e-38, 1e-6, 0.999999]),
                     st.floats(min_value=-1e4, max_value=1e4))


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    node = doc
    for key in path:
        node = node[key]
    return node


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


def _delete(doc: Any, path: tuple[Any, ...]) -> Any:
    if not path:
        return {}
    node = doc
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return doc


@st.composite
def specs(draw: st.DrawFn) -> Any:
    """A base spec with a few mutations: a value replaced, a key deleted or added, a deep nest."""
    doc = json.loads(json.dumps(draw(st.sampled_from(BASE_SPECS))))
    for _ in range(draw(st.integers(0, 3))):
        paths = list(_paths(doc))
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["perturb", "perturb", "perturb", "replace", "delete", "add", "nest"]))
        leaf = _get(doc, path)
        if action == "perturb" and isinstance(leaf, int | float) and not isinstance(leaf, bool):
            doc = _set(doc, path, draw(near(leaf)))
        elif action in ("replace", "perturb"):
            doc = _set(doc, path, draw(values))
        elif action == "delete":
            doc = _delete(doc, path)
        elif action == "add":
            target = doc
            for key in path:
                target = target[key]
            if isinstance(target, dict):
                target[draw(st.sampled_from(FIELDS))] = draw(values)
            elif isinstance(target, list):
                target.append(draw(values))
        else:
            depth = draw(st.sampled_from([5, 40, 200]))
            nested: Any = draw(scalars)
            for _ in range(depth):
                nested = [nested]
            doc = _set(doc, path, nested)
        if not isinstance(doc, dict):
            break
    return doc


@st.composite
def spec_texts(draw: st.DrawFn) -> tuple[str, str]:
    """``(file name, text)``: a mutated spec as YAML or JSON, sometimes with its bytes damaged or
    YAML 1.1-only forms, tags and aliases."""
    doc = draw(specs())
    fmt = draw(st.sampled_from(["yaml", "yaml", "json", "raw"]))
    if fmt == "json":
        try:
            return "spec.json", json.dumps(doc)
        except ValueError:
            fmt = "yaml"
    text = yaml.safe_dump(doc, default_flow_style=draw(st.booleans()))
    if fmt == "raw":
        damage = draw(st.sampled_from([
            "truncate", "insert", "tag", "alias", "yaml11", "tabs"]))
        if damage == "truncate":
            text = text[:draw(st.integers(0, len(text)))]
        elif damage == "insert":
            at = draw(st.integers(0, len(text)))
            text = text[:at] + draw(st.text(max_size=10)) + text[at:]
        elif damage == "tag":
            text += draw(st.sampled_from(["x: !!python/object/apply:os.system ['true']\n", "y: !!binary aGk=\n",
                                          "z: !custom 1\n", "w: !!set {a, b}\n", "v: !!timestamp 2001-12-14\n"]))
        elif damage == "alias":
            text = "a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n" \
                   "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n" \
                   "e: [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n" + text
        elif damage == "yaml11":
            text = text.replace("steps: 5", "steps: 0o5").replace("steps: 4", "steps: 04") + "extra: 1:30\n"
        else:
            text = text.replace("  ", "\t")
    return "spec.yaml", text


override_paths = st.one_of(
    st.sampled_from(["sampler.steps", "process.t_min", "process.beta_max", "process.T", "model.weights",
                     "model.means.0", "model.means.9", "sampler.type", "guidance.0.scale", "shape", "shape.0",
                     "train.steps", "sampler", "", ".", "a..b", "model.means.-1", "x" * 300]),
    st.lists(st.sampled_from(FIELDS), min_size=1, max_size=6).map(".".join),
)
override_values = st.one_of(values.map(lambda v: json.dumps(v, allow_nan=True)), st.text(max_size=30),
                            st.sampled_from(["017", "1:30", "yes", "[" * 100, "{a: 1", "!!python/name:os.system",
                                             "1e999", "-1e-999", "0x" + "f" * 40, "'" + "x" * 200]))


@st.composite
def npy_files(draw: st.DrawFn) -> bytes:
    """Bytes of a ``.npy`` file: a real one of a random dtype and shape, a header that lies, or
    damaged bytes."""
    kind = draw(st.sampled_from(["real", "real", "header", "damaged", "junk"]))
    dtype = draw(st.sampled_from(["<f4", ">f8", "<f2", "<f8", "<i8", "|b1", "<c8", "<U3", "|O", "<f16", ">i2"]))
    shape = tuple(draw(st.lists(st.integers(0, 12), min_size=0, max_size=3)))
    if kind == "real" and dtype != "|O":
        array = np.zeros(shape, dtype=dtype)
        if array.size and dtype[1] == "f":
            array.flat[:] = draw(st.lists(st.floats(width=16, allow_nan=True), min_size=array.size,
                                          max_size=array.size))
        buffer = io.BytesIO()
        np.save(buffer, array)
        return buffer.getvalue()
    header = io.BytesIO()
    claimed = tuple(draw(st.lists(st.integers(-5, 2**45), min_size=0, max_size=3)))
    np.lib.format.write_array_header_1_0(header, {"descr": dtype if dtype != "|O" else "<f4", "fortran_order":
                                                  draw(st.booleans()), "shape": claimed})
    data = header.getvalue() + bytes(draw(st.integers(0, 200)))
    if kind == "damaged":
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([data[at] ^ (1 << draw(st.integers(0, 7)))]) + data[at + 1:]
    elif kind == "junk":
        data = draw(st.binary(max_size=200))
    return data


# ---------------------------------------------------------------------------------------------
# The worker: runs `diffcore.cli.main` on one case at a time, under a memory limit
# ---------------------------------------------------------------------------------------------


def _serve(conn: Any) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    os.environ.pop("DIFFCORE_DEBUG", None)
    import torch

    torch.set_num_threads(1)
    from diffcore.cli import main

    conn.send("ready")
    while True:
        args, cwd = conn.recv()
        os.chdir(cwd)
        if args and args[0] == "__hang__":  # the harness's own test
            signal.pause()
        out, err = io.StringIO(), io.StringIO()
        escaped = None
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                if args and args[0] == "__raise__":  # the harness's own test
                    raise RuntimeError("escaped")
                code = main(args)
            except BaseException as exc:
                code, escaped = -1, "".join(traceback.format_exception(exc))
        conn.send((code, out.getvalue(), err.getvalue(), escaped))


class Worker:
    """A spawned worker process with diffcore imported, restarted after a crash or a hang."""

    def __init__(self) -> None:
        self.proc: Any = None
        self.conn: Any = None

    def start(self) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child,), daemon=True)
        self.proc.start()
        assert self.conn.poll(300) and self.conn.recv() == "ready"

    def run(self, args: list[str], cwd: Path) -> tuple[int, str, str, str | None]:
        if self.proc is None or not self.proc.is_alive():
            self.start()
        self.conn.send((args, str(cwd)))
        if not self.conn.poll(CASE_SECONDS):
            self.stop()
            return -2, "", "", f"no answer within {CASE_SECONDS} s (a hang or a crash of the worker)"
        try:
            return self.conn.recv()  # type: ignore[no-any-return]
        except EOFError:
            self.stop()
            return -3, "", "", "the worker died (killed by the OS?)"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.join()
        self.proc = None


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    w = Worker()
    w.start()
    yield w
    w.stop()
    print(f"\nfuzz cases by (command, exit status): {dict(sorted(OUTCOMES.items()))}")

PROFILES = [pytest.param(FAST, id="fast"), pytest.param(SLOW, id="long", marks=pytest.mark.slow)]
"""Each fuzzer runs a fast slice in the default tier and twenty times more cases in the slow tier."""

# ---------------------------------------------------------------------------------------------
# The property
# ---------------------------------------------------------------------------------------------


def _state(folder: Path) -> dict[str, tuple[int, int, str]]:
    state = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() and not path.is_symlink() else ""
        state[str(path.relative_to(folder))] = (info.st_mode, info.st_size, digest)
    return state


def sandbox(tmp: Path) -> Path:
    """A fresh folder with files a case must never replace: a precious file, a symlink to it, a FIFO."""
    box = tmp / f"case-{len(list(tmp.iterdir()))}"
    box.mkdir()
    (box / "precious.txt").write_text("keep me")
    (box / "link.npy").symlink_to(box / "precious.txt")
    os.mkfifo(box / "fifo.npy")
    return box


OUTCOMES: collections.Counter[tuple[str, int]] = collections.Counter()
"""Cases run per (command, exit status), printed at the end of the module (``pytest -s``)."""


def check_case(worker: Worker, box: Path, args: list[str], outputs: tuple[str, ...] = (),
               named_once: str | None = None) -> tuple[int, str]:
    """Run one case and assert the property; ``outputs`` are the paths (relative to ``box``) it may
    create or change; an error message must name ``named_once`` at most once. Returns ``(exit status,
    stdout)``."""
    before = _state(box)
    code, out, err, escaped = worker.run(args, box)
    OUTCOMES[args[0], code] += 1
    assert escaped is None, f"{args}: {escaped}"
    assert code in (0, 2), (args, code, out, err)
    if code == 2:
        assert err.startswith("diffcore: error: ") and len(err.strip().splitlines()) == 1, (args, err)
        assert "Traceback" not in err
        assert named_once is None or err.count(named_once) <= 1, (args, err)
    after = _state(box)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    allowed = {k for k in changed if any(k == o or k.startswith(o + "/") for o in outputs)}
    assert changed == allowed, (args, sorted(changed - allowed))
    assert (box / "precious.txt").read_text() == "keep me"
    return code, out


def check_sample_output(box: Path, out: str, stdout: str) -> None:
    summary = json.loads(stdout)
    samples = np.load(box / out, allow_pickle=False)
    assert samples.dtype == np.float32 and samples.shape == (summary["num"], *summary["shape"])
    assert np.isfinite(samples).all()


def _fuzz_spec(worker: Worker, tmp_path: Path, name: str, text: str, command: str) -> None:
    """One spec case; an error names the spec file once (a message once printed it twice)."""
    box = sandbox(tmp_path)
    (box / name).write_text(text)
    before_sample = ["sample", name, "--num", "3", "--out", "x.npy", "--json"]
    if command == "validate":
        code, out = check_case(worker, box, ["validate", name], named_once=name)
        if code == 0:
            assert ": ok (" in out
    elif command == "sample":
        code, out = check_case(worker, box, [*before_sample, "--device", "cpu"], outputs=("x.npy",),
                               named_once=name)
        if code == 0:
            check_sample_output(box, "x.npy", out)
    else:
        code, out = check_case(worker, box, ["train", name, "--out", "run", "--device", "cpu", "--no-preview"],
                               outputs=("run",), named_once=name)
        if code == 0:
            summary = json.loads(out)
            assert summary["steps"] >= 1 and (box / "run" / "latest").is_file()


@pytest.mark.parametrize("profile", PROFILES)
def test_fuzz_specs(worker: Worker, tmp_path: Path, profile: settings) -> None:
    @profile
    @given(spec_texts(), st.sampled_from(["validate", "sample", "sample", "train"]))
    def case(named: tuple[str, str], command: str) -> None:
        _fuzz_spec(worker, tmp_path, *named, command)

    case()


@pytest.mark.parametrize("profile", PROFILES)
def test_fuzz_overrides(worker: Worker, tmp_path: Path, profile: settings) -> None:
    spec = ROOT / "examples" / "gmm2d.yaml"

    @profile
    @given(st.lists(st.tuples(override_paths, override_values), min_size=1, max_size=3))
    def case(pairs: list[tuple[str, str]]) -> None:
        box = sandbox(tmp_path)
        sets = [a for path, value in pairs for a in ("--set", f"{path}={value}")]
        code, out = check_case(worker, box, ["sample", str(spec), "--num", "2", "--steps", "3", "--out", "x.npy",
                                             "--json", *sets], outputs=("x.npy",))
        if code == 0:
            check_sample_output(box, "x.npy", out)

    case()


@pytest.mark.parametrize("profile", PROFILES)
def test_fuzz_latents(worker: Worker, tmp_path: Path, profile: settings) -> None:
    spec = ROOT / "examples" / "gmm2d.yaml"

    @profile
    @given(npy_files(), st.integers(1, 12))
    def case(data: bytes, num: int) -> None:
        box = sandbox(tmp_path)
        (box / "z.npy").write_bytes(data)
        code, out = check_case(worker, box, ["sample", str(spec), "--num", str(num), "--steps", "2", "--sampler",
                                             "ddim", "--latents", "z.npy", "--out", "x.npy", "--json"],
                               outputs=("x.npy",))
        if code == 0:
            check_sample_output(box, "x.npy", out)
            assert np.load(box / "z.npy").shape == (num, 2)

    case()


CONDITIONED_SPECS = {
    "plain.json": BASE_SPECS[0],
    "cfg.json": {**BASE_SPECS[3], "model": {**BASE_SPECS[3]["model"], "labels": [0, 1]},
                 "guidance": [{"type": "cfg", "scale": 2.0}]},
    "inpaint.json": {**BASE_SPECS[3], "guidance": [{"type": "inpaint"}]},
    "dps.json": {**BASE_SPECS[3], "guidance": [{"type": "dps", "scale": 0.1, "noise_std": 0.5}]},
}
"""Specs whose pipelines read no condition, labels, or a mask and observed values."""

condition_options = st.lists(st.sampled_from(["--label", "--labels", "--mask", "--observed"]), max_size=3, unique=True)
compare_options = st.lists(st.one_of(
    st.tuples(st.just("--samplers"), st.one_of(st.sampled_from(["ddim", "heun,ddim", "pc", "nope", ",", "ddim,ddim",
                                                                 "probability_flow", "langevin"]),
                                                st.text(max_size=10))),
    st.tuples(st.just("--budgets"), st.one_of(st.sampled_from(["1", "2,3", "0", "-1", "5,5", "1e3", "1000001", ""]),
                                               st.text(max_size=8))),
    st.tuples(st.just("--num"), st.sampled_from(["0", "1", "2", "7", "-3", "x", "2147483649"])),
    st.tuples(st.just("--seed"), st.sampled_from(["0", "-1", str(2**64), "1.5"])),
    st.tuples(st.just("--set"), st.tuples(override_paths, override_values).map("=".join))), max_size=3)


@st.composite
def plausible_npy(draw: st.DrawFn, kind: str) -> bytes:
    """A ``.npy`` of about the right shape and dtype for ``kind`` (``labels``, ``mask``, ``observed`` or
    ``data``), with hostile values: labels out of range, masks of 2, huge, tiny or non-finite floats."""
    rows = draw(st.sampled_from([3, 3, 2, 1]))
    if kind == "labels":
        array = np.array(draw(st.lists(st.sampled_from([0, 1, 2, -1, 2**40]), min_size=rows, max_size=rows)))
    elif kind == "mask":
        shape = draw(st.sampled_from([(rows, 2), (2,), (rows, 3)]))
        array = np.array(draw(st.lists(st.sampled_from([0, 1, 1, 2]), min_size=math.prod(shape),
                                       max_size=math.prod(shape)))).reshape(shape).astype(draw(st.sampled_from(
                                           [bool, np.int64, np.float32])))
    else:
        shape = draw(st.sampled_from([(rows, 2), (2,), (rows, 2, 1)]))
        values = st.one_of(st.floats(-5, 5), st.sampled_from([1e10, -1e30, 3e38, 1e-40, float("nan"), float("inf")]))
        array = np.array(draw(st.lists(values, min_size=math.prod(shape), max_size=math.prod(shape))),
                         dtype=np.float32).reshape(shape)
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize("profile", PROFILES)
def test_fuzz_conditions_likelihood_and_compare(worker: Worker, tmp_path: Path, profile: settings) -> None:
    """The newer surfaces: ``sample`` with labels, masks and observed values (hostile ``.npy`` files or
    ones nothing reads), ``likelihood`` of hostile data, and ``compare`` with hostile options."""

    files = st.one_of(npy_files().map(lambda data: {k: data for k in ("labels", "mask", "observed", "data")}),
                      st.fixed_dictionaries({k: plausible_npy(k) for k in ("labels", "mask", "observed", "data")}))

    @profile
    @given(st.sampled_from(sorted(CONDITIONED_SPECS)), st.sampled_from(["sample", "likelihood", "compare"]),
           condition_options, files, compare_options, st.sampled_from(["1", "-1", "99", "x"]))
    def case(name: str, command: str, conditions: list[str], data: dict[str, bytes], options: list[tuple[str, str]],
             label: str) -> None:
        box = sandbox(tmp_path)
        (box / name).write_text(json.dumps(CONDITIONED_SPECS[name]))
        for kind, content in data.items():
            (box / f"{kind}.npy").write_bytes(content)
        if command == "sample":
            extra = [a for option in conditions
                     for a in (option, label if option == "--label" else f"{option.removeprefix('--')}.npy")]
            code, out = check_case(worker, box, ["sample", name, "--num", "3", "--out", "x.npy", "--json", *extra],
                                   outputs=("x.npy",))
            if code == 0:
                check_sample_output(box, "x.npy", out)
        elif command == "likelihood":
            extra = ["--labels", "labels.npy"] if "--labels" in conditions else []
            code, out = check_case(worker, box, ["likelihood", name, "--data", "data.npy", "--out", "ll.npy", "--json",
                                                 *extra], outputs=("ll.npy",))
            if code == 0:
                summary, ll = json.loads(out), np.load(box / "ll.npy", allow_pickle=False)
                assert ll.shape == (summary["num"],) and np.isfinite(ll).all()
        else:
            args = [a for option in options for a in option]
            code, out = check_case(worker, box, ["compare", name, "--json", "--num", "20", "--budgets", "3",
                                                 "--samplers", "ddim", *args], outputs=())
            if code == 0:
                result = json.loads(out)
                assert any(row["nfe"] is not None for row in result["rows"])

    case()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from diffcore.cli import main

    run = tmp_path_factory.mktemp("fuzz-run") / "run"
    spec = {**BASE_SPECS[2], "train": {"steps": 2, "batch_size": 16}}
    path = run.parent / "spec.json"
    path.write_text(json.dumps(spec))
    assert main(["train", str(path), "--out", str(run), "--device", "cpu", "--no-preview"]) == 0
    return run


METADATA_KEYS = ["spec", "step", "scaling", "losses", "param_groups", "schedule", "train", "format", "scaler",
                 "rng", "skipped", "extra"]


@pytest.mark.parametrize("profile", PROFILES)
def test_fuzz_checkpoint_metadata(worker: Worker, tmp_path: Path, trained_run: Path, profile: settings) -> None:
    """Checkpoints whose metadata is rewritten (with valid checksums, so only the content checks can
    catch them) are sampled from and resumed."""
    import shutil

    from test_run_dirs import resave

    @profile
    @given(st.sampled_from(["model", "ema", "state"]), st.dictionaries(st.sampled_from(METADATA_KEYS),
                                                                         st.one_of(values.map(json.dumps),
                                                                                   st.text(max_size=12)),
                                                                         min_size=1, max_size=3),
           st.sampled_from(["sample", "resume"]))
    def case(name: str, metadata: dict[str, str], command: str) -> None:
        box = sandbox(tmp_path)
        shutil.copytree(trained_run, box / "run")
        checkpoint = box / "run" / (box / "run" / "latest").read_text().strip()
        resave(checkpoint, name, metadata=metadata)
        if command == "sample":
            code, out = check_case(worker, box, ["sample", "run", "--num", "2", "--steps", "2", "--out", "x.npy",
                                                 "--json"], outputs=("x.npy",))
            if code == 0:
                check_sample_output(box, "x.npy", out)
        else:
            check_case(worker, box, ["train", "run", "--resume", "run", "--device", "cpu", "--no-preview"],
                       outputs=("run",))

    case()


def test_the_worker_catches_escaped_exceptions_and_hangs(worker: Worker, tmp_path: Path) -> None:
    """The harness itself can fail: an exception escaping `main` and a case past its deadline are
    reported, not passed."""
    box = sandbox(tmp_path)
    code, _, err, escaped = worker.run(["sample", "spec.yaml", "--num", "1", "--out", "x.npy"], box)
    assert code == 2 and escaped is None and "cannot read spec" in err  # a missing spec: a clean error
    code, _, _, escaped = worker.run(["__raise__"], box)
    assert code == -1 and escaped is not None and "RuntimeError: escaped" in escaped
    global CASE_SECONDS
    saved, CASE_SECONDS = CASE_SECONDS, 3
    try:
        code, _, _, escaped = worker.run(["__hang__"], box)
    finally:
        CASE_SECONDS = saved
    assert code == -2 and escaped is not None and "no answer" in escaped
    code, _, _, escaped = worker.run(["validate", str(ROOT / "examples" / "gmm2d.yaml")], box)
    assert code == 0 and escaped is None  # restarted
