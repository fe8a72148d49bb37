"""Malformed specs through ``diffcore validate``: every one exits with status 2 and one line on stderr
naming the field (or the whole-document problem) and the fix, never a traceback.

The table ``CASES`` holds one spec per case (the text written to a file, its expected stderr
substrings); the special tests below cover ``--set`` overrides, YAML python tags, a missing file and
the ``python -m diffcore`` entry point.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from diffcore.cli import main
from diffcore.registry import reset_registry

ROOT = Path(__file__).resolve().parents[1]

PROCESS = "process: {type: vp, beta_min: 0.1, beta_max: 20.0}"
MODEL = "model: {type: gmm, weights: [0.5, 0.5], means: [[-2, 0], [2, 0]], variances: [[1, 1], [1, 1]]}"
SAMPLER = "sampler: {type: euler_maruyama, steps: 10}"
DEEP = "[" * 5000 + "]" * 5000
JSON_MODEL = '"model": {"type": "gmm", "weights": [1], "means": [[0]], "variances": [[1]]}'


def spec(*, process: str = PROCESS, model: str = MODEL, sampler: str = SAMPLER, extra: str = "") -> str:
    """A valid YAML spec with the given top-level lines replaced ("" drops a line)."""
    return "\n".join(line for line in (process, model, sampler, extra) if line) + "\n"


def gmm(weights: str = "[0.5, 0.5]", means: str = "[[-2, 0], [2, 0]]",
        variances: str = "[[1, 1], [1, 1]]") -> str:
    return f"model: {{type: gmm, weights: {weights}, means: {means}, variances: {variances}}}"


def case(id: str, text: str | bytes, *expected: str, filename: str = "spec.yaml",
         marks: Any = ()) -> Any:
    return pytest.param(text, expected, filename, id=id, marks=marks)


CASES = [
    # --- unknown / missing component type -------------------------------------------------------
    case("process-type-near-miss", spec(process="process: {type: vpp}"),
         "`process.type`", "no process named 'vpp'", "did you mean 'vp'"),
    case("model-type-near-miss", spec(model=gmm().replace("gmm", "gm", 1)),
         "`model.type`", "no model named 'gm'", "did you mean 'gmm'"),
    case("sampler-type-near-miss", spec(sampler="sampler: {type: eular_maruyama}"),
         "`sampler.type`", "no sampler named 'eular_maruyama'", "did you mean 'euler_maruyama'"),
    case("process-type-no-close-match", spec(process="process: {type: zzzzqq}"),
         "`process.type`", "no process named 'zzzzqq'", "Available (closest first): "),
    case("sampler-type-no-close-match", spec(sampler="sampler: {type: qqqq}"),
         "`sampler.type`", "no sampler named 'qqqq'", "ancestral, annealed_langevin, ddim, dpm_solver"),
    case("process-type-missing", spec(process="process: {beta_min: 0.1}"),
         "`process.type`", "missing `type`", "subvp, ve, vp"),
    case("model-type-missing", spec(model="model: {weights: [1], means: [[0]], variances: [[1]]}"),
         "`model.type`", "missing `type`; add `type: <name>` with one of: gmm"),
    # --- missing fields, wrong types ------------------------------------------------------------
    case("gmm-weights-missing", spec(model="model: {type: gmm, means: [[0]], variances: [[1]]}"),
         "`model.weights`", "required field is missing; add it"),
    case("process-missing", spec(process=""), "`process`", "required field is missing"),
    case("string-for-float", spec(process="process: {type: vp, beta_min: abc}"),
         "`process.beta_min`", "valid number", "'abc'"),
    case("string-in-float-list", spec(model=gmm(weights="[0.5, abc]")), "`model.weights.1`", "valid number"),
    case("list-for-int", spec(sampler="sampler: {type: euler_maruyama, steps: [1, 2]}"),
         "`sampler.steps`", "valid integer"),
    case("fraction-for-int", spec(sampler="sampler: {type: euler_maruyama, steps: 2.5}"),
         "`sampler.steps`", "valid integer", "(got 2.5)"),
    case("mapping-for-list", spec(model=gmm(weights="{a: 1}")), "`model.weights`", "valid list"),
    case("string-for-component", spec(sampler="sampler: euler_maruyama"),
         "`sampler`", "expected a mapping {type: <name>, ...params}, got a string"),
    case("null-for-component", spec(process="process:"), "`process`", "expected a mapping", "null"),
    case("string-for-bool", spec(sampler="sampler: {type: euler_maruyama, denoise_last: maybe}"),
         "`sampler.denoise_last`", "valid boolean"),
    case("unknown-method", spec(sampler="sampler: {type: probability_flow, method: dopri}"),
         "`sampler.method`", "'dopri5'", "(got 'dopri')"),
    # --- a boolean is never a number -----------------------------------------------------------
    case("bool-for-int-steps", spec(sampler="sampler: {type: euler_maruyama, steps: true}"),
         "`sampler.steps`", "(got True)"),
    case("bool-for-float-rtol", spec(sampler="sampler: {type: probability_flow, rtol: false}"),
         "`sampler.rtol`", "(got False)"),
    case("bool-for-optional-int",
         spec(sampler="sampler: {type: probability_flow, method: euler, steps: true}"),
         "`sampler.steps`", "(got True)"),
    case("bool-in-float-list", spec(model=gmm(weights="[true, 1]")),
         "`model.weights.0`", "(got True)"),
    case("bool-in-shape", spec(extra="shape: [true, 2]"), "`shape.0`", "(got True)"),
    # --- unknown fields -------------------------------------------------------------------------
    case("extra-field-component", spec(sampler="sampler: {type: euler_maruyama, stpes: 10}"),
         "`sampler.stpes`", "unknown field 'stpes'", "did you mean 'steps'", "allowed fields: type, steps"),
    case("extra-field-process", spec(process="process: {type: ve, sigma_mx: 10}"),
         "`process.sigma_mx`", "did you mean 'sigma_max'"),
    case("extra-field-top-level", spec(extra="shap: [2]"),
         "`shap`", "unknown field 'shap'", "did you mean 'shape'", "allowed fields: process, model"),
    case("extra-field-top-level-far", spec(extra="xyzzy: 1"), "`xyzzy`", "unknown field 'xyzzy'"),
    # --- NaN / Inf ------------------------------------------------------------------------------
    case("nan-float", spec(process="process: {type: vp, beta_min: .nan}"),
         "`process.beta_min`", "finite number", "nan"),
    case("inf-float", spec(process="process: {type: ve, sigma_max: .inf}"),
         "`process.sigma_max`", "finite number", "inf"),
    case("minus-inf-float", spec(process="process: {type: ve, sigma_min: -.inf}"),
         "`process.sigma_min`", "finite number", "-inf"),
    case("overflow-to-inf-int", spec(sampler="sampler: {type: euler_maruyama, steps: 1.0e+400}"),
         "`sampler.steps`", "inf"),  # 1.0e+400 reads as inf
    case("nan-in-means", spec(model=gmm(means="[[.nan, 0], [2, 0]]")), "`model.means.0.0`", "finite number"),
    # --- out of range ---------------------------------------------------------------------------
    case("negative-sigma-min", spec(process="process: {type: ve, sigma_min: -1}"),
         "`process.sigma_min`", "greater than 0", "(got -1)"),
    case("zero-beta-max", spec(process="process: {type: vp, beta_max: 0}"),
         "`process.beta_max`", "greater than 0", "(got 0)"),
    case("negative-steps", spec(sampler="sampler: {type: euler_maruyama, steps: -5}"),
         "`sampler.steps`", "greater than 0", "(got -5)"),
    case("zero-steps", spec(sampler="sampler: {type: euler_maruyama, steps: 0}"),
         "`sampler.steps`", "(got 0)"),
    case("zero-rtol", spec(sampler="sampler: {type: probability_flow, rtol: 0}"),
         "`sampler.rtol`", "(got 0)"),
    case("negative-t-min", spec(process="process: {type: vp, t_min: -0.1}"), "`process.t_min`", "(got -0.1)"),
    case("negative-variance", spec(model=gmm(variances="[[1, 1], [1, -1]]")),
         "`model.variances.1.1`", "greater than 0", "(got -1)"),
    case("zero-weight", spec(model=gmm(weights="[0.5, 0]")), "`model.weights.1`", "greater than 0"),
    case("empty-weights", spec(model=gmm(weights="[]", means="[]", variances="[]")),
         "`model.weights`", "at least 1 item"),
    case("shape-zero", spec(extra="shape: [2, 0]"), "`shape.1`", "greater than 0", "(got 0)"),
    case("shape-negative", spec(extra="shape: [-1]"), "`shape.0`", "(got -1)"),
    case("two-errors-reported", spec(process="process: {type: vp, beta_min: -1, beta_max: abc}"),
         "`process.beta_min`", "`process.beta_max`"),
    # --- cross-field ----------------------------------------------------------------------------
    case("sigma-max-equals-min", spec(process="process: {type: ve, sigma_min: 5, sigma_max: 5}"),
         "`process`", "sigma_max (5.0) must exceed sigma_min (5.0)"),
    case("beta-max-below-min", spec(process="process: {type: vp, beta_min: 5, beta_max: 1}"),
         "`process`", "beta_max (1.0) must be at least beta_min (5.0)"),
    case("t-min-not-below-T", spec(process="process: {type: subvp, t_min: 1.0, T: 1.0}"),
         "`process`", "t_min (1.0) must be smaller than T (1.0)"),
    case("gmm-dimension-mismatch", spec(model=gmm(variances="[[1, 1], [1]]")),
         "`model`", "component 1: mean has 2 and variance 1 entries"),
    case("gmm-count-mismatch", spec(model=gmm(weights="[0.5, 0.3, 0.2]")),
         "`model`", "got 3 weights, 2 means, 2 variances"),
    case("gmm-zero-dimension", spec(model=gmm(weights="[1]", means="[[]]", variances="[[]]")),
         "`model`", "at least one dimension"),
    case("steps-with-adaptive-method",
         spec(sampler="sampler: {type: probability_flow, method: dopri5, steps: 10}"),
         "`sampler`", "method 'dopri5' is adaptive", "Drop steps or pick a fixed-step method"),
    # --- guidance -------------------------------------------------------------------------------
    case("guidance-unknown", spec(extra="guidance: [{type: cgf, scale: 2}]"),
         "`guidance.0.type`", "did you mean 'cfg'"),
    case("guidance-misspelt-field", spec(extra="guidance: [{type: cfg, sclae: 2}]"),
         "`guidance.0.sclae`", "did you mean 'scale'"),
    case("guidance-scale-not-a-number", spec(extra="guidance: [{type: cfg, scale: high}]"),
         "`guidance.0.scale`", "valid number"),
    case("guidance-empty-interval", spec(extra="guidance: [{type: cfg, interval: [0.5, 0.1]}]"),
         "`guidance.0`", "interval [0.5, 0.1] is empty"),
    case("guidance-not-a-list", spec(extra="guidance: {type: cfg}"), "`guidance`", "valid list"),
    # --- whole-document problems ----------------------------------------------------------------
    case("empty-file", "", "the spec is empty", "mapping"),
    case("only-comments", "# a spec\n# with nothing in it\n", "the spec is empty"),
    case("top-level-list", "- process\n- model\n", "must be a mapping", "got a list"),
    case("top-level-scalar", "hello\n", "must be a mapping", "got a string"),
    case("yaml-bad-indent", "process:\n  type: vp\n   beta_min: 1\n", "not valid YAML", "line 3"),
    case("yaml-unclosed-flow", "process: {type: vp\nmodel: x\n", "not valid YAML", "line 2"),
    case("yaml-nul-byte", "process: {type: vp}\x00\n", "not valid YAML"),
    case("duplicate-top-level-key", spec(extra="process: {type: ve}"),
         "line 4", "duplicate key 'process'", "keep one of the two entries"),
    case("duplicate-nested-key", spec(sampler="sampler: {type: euler_maruyama, steps: 1, steps: 2}"),
         "line 3", "duplicate key 'steps'"),
    case("non-scalar-key", spec(extra="[1, 2]: 3"), "line 4", "mapping key must be a plain value"),
    case("deeply-nested-field", spec(sampler=f"sampler: {{type: euler_maruyama, steps: {DEEP}}}"),
         "nested too deeply"),
    case("deeply-nested-document", DEEP + "\n", "nested too deeply"),
    case("deeply-nested-mappings", "a: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n", "nested too deeply"),
    case("non-utf8", b"process: {type: v\xff\xfe}\n", "not UTF-8"),
    case("utf16", spec().encode("utf-16"), "not UTF-8"),
    case("yaml-date-for-float", spec(process="process: {type: vp, beta_min: 2001-12-14}"),
         "`process.beta_min`", "valid number"),
    case("yaml-binary-for-float", spec(process="process: {type: vp, beta_min: !!binary aGVsbG8=}"),
         "`process.beta_min`", "valid number"),
    case("yaml-set-for-component", spec(process="process: !!set {a, b}"), "`process`",
         "expected a mapping"),
    # --- JSON -----------------------------------------------------------------------------------
    case("json-syntax-error", '{"process": {"type": "vp",}}', "not valid JSON", "line 1 column 27",
         filename="spec.json"),
    case("json-nan", '{"process": {"type": "vp", "beta_min": NaN}, ' + JSON_MODEL
         + ', "sampler": {"type": "euler_maruyama"}}', "`process.beta_min`", "finite number",
         filename="spec.json"),
    case("json-infinity", '{"process": {"type": "vp", "beta_max": -Infinity}, ' + JSON_MODEL
         + ', "sampler": {"type": "euler_maruyama"}}', "`process.beta_max`", "finite number",
         filename="spec.json"),
    case("json-duplicate-key", '{"process": {"type": "vp"}, "process": {"type": "ve"}}',
         "duplicate key 'process'", filename="spec.json"),
    case("json-deeply-nested", DEEP, "nested too deeply", filename="spec.json"),
    case("json-yaml-text", "process: {type: vp}\n", "not valid JSON", filename="spec.json"),
    case("json-top-level-list", "[1, 2]", "must be a mapping", "got a list", filename="spec.json"),
]


@pytest.fixture(autouse=True)
def standard_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process-wide registry with exactly the installed plugins (no env filtering)."""
    for name in list(os.environ):
        if name.startswith("DIFFCORE_"):
            monkeypatch.delenv(name)
    reset_registry()
    yield
    reset_registry()


def validate(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run ``diffcore validate ARGV`` in-process; return the status and stderr (checked to be one
    error line, no traceback, nothing on stdout)."""
    rc = main(["validate", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    if rc != 0:
        assert out == ""
        assert err.startswith("diffcore: error: ")
        assert err.endswith("\n") and err.count("\n") == 1, err
    return rc, err


def check_error(rc: int, err: str, expected: tuple[str, ...]) -> None:
    assert rc == 2, err
    missing = [s for s in expected if s not in err]
    assert not missing, f"missing {missing} in: {err}"


@pytest.mark.parametrize(("text", "expected", "filename"), CASES)
def test_malformed_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str | bytes,
                        expected: tuple[str, ...], filename: str) -> None:
    path = tmp_path / filename
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    rc, err = validate(capsys, str(path))
    check_error(rc, err, expected)
    assert str(path) in err  # the message names the file


def test_case_table_is_large_and_ids_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) >= 35
    assert len(set(ids)) == len(ids)


def test_baseline_spec_is_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The table's cases differ from this valid spec only in what they break."""
    path = tmp_path / "spec.yaml"
    path.write_text(spec())
    rc, _ = validate(capsys, str(path))
    assert rc == 0


# ---------------------------------------------------------------------------------------------
# YAML python tags never run code
# ---------------------------------------------------------------------------------------------

PYTHON_TAGS = {
    "object-apply-os-system": "!!python/object/apply:os.system [{cmd}]",
    "object-apply-subprocess": "!!python/object/apply:subprocess.check_call [[sh, -c, {cmd}]]",
    "name-os-system": "!!python/name:os.system",
    "object-new": "!!python/object/new:subprocess.Popen {{args: [sh, -c, {cmd}]}}",
    "module": "!!python/module:os",
}


@pytest.mark.parametrize("tag", list(PYTHON_TAGS.values()), ids=list(PYTHON_TAGS))
@pytest.mark.parametrize("where", ["component", "field", "document"])
def test_python_tag_is_refused_and_not_run(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           tag: str, where: str) -> None:
    pwned = tmp_path / "pwned"
    value = tag.format(cmd=json.dumps(f"echo pwned > {pwned}"))
    text = {
        "component": spec(process=f"process: {value}"),
        "field": spec(process=f"process: {{type: vp, beta_min: {value} }}"),  # a tag needs a space after it
        "document": value + "\n",
    }[where]
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    rc, err = validate(capsys, str(path))
    check_error(rc, err, ("unsupported YAML tag", "python/", "line 1"))
    assert not pwned.exists()


def test_python_tag_payload_is_live(tmp_path: Path) -> None:
    """Control: the payload above does run under PyYAML's unsafe loader, so the check is meaningful."""
    pwned = tmp_path / "pwned"
    text = PYTHON_TAGS["object-apply-os-system"].format(cmd=json.dumps(f"echo pwned > {pwned}"))
    yaml.unsafe_load(text)
    assert pwned.read_text().strip() == "pwned"


# ---------------------------------------------------------------------------------------------
# Paths that are not spec files
# ---------------------------------------------------------------------------------------------


def test_nonexistent_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope" / "spec.yaml"
    rc, err = validate(capsys, str(missing))
    check_error(rc, err, ("cannot read spec", str(missing), "No such file", "check the path"))


def test_directory_instead_of_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = validate(capsys, str(tmp_path))
    check_error(rc, err, ("is a directory, not a regular file", str(tmp_path)))


# ---------------------------------------------------------------------------------------------
# --set overrides
# ---------------------------------------------------------------------------------------------

OVERRIDE_ERRORS = [
    pytest.param("sampler.steps", ("--set 'sampler.steps'", "expected dotted.path=value"), id="no-equals"),
    pytest.param("=3", ("expected dotted.path=value",), id="empty-path"),
    pytest.param("sampler..steps=1", ("expected dotted.path=value",), id="empty-path-segment"),
    pytest.param("sampler.steps.x=1",
                 ("--set 'sampler.steps.x=1'", "sampler.steps is a number, not a mapping"),
                 id="walks-through-scalar"),
    pytest.param("model.weights.5=1", ("model.weights is a list of 2 items", "from 0 to 1", "'5'"),
                 id="list-index-out-of-range"),
    pytest.param("model.weights.x=1", ("model.weights is a list of 2 items", "'x'"), id="list-index-not-int"),
    pytest.param("sampler.steps=-3", ("`sampler.steps`", "greater than 0", "(got -3)"),
                 id="makes-value-invalid"),
    pytest.param("sampler.steps=.nan", ("`sampler.steps`", "nan"), id="nan-value"),
    pytest.param("sampler.steps=[", ("--set sampler.steps", "not valid YAML"), id="value-bad-yaml"),
    pytest.param("sampler.steps=!!python/name:os.system", ("--set sampler.steps", "unsupported YAML tag"),
                 id="value-python-tag"),
    pytest.param("process=vp", ("`process`", "expected a mapping"), id="component-to-string"),
    pytest.param("sampler.type=eular_maruyama",
                 ("no sampler named 'eular_maruyama'", "did you mean 'euler_maruyama'"), id="type-near-miss"),
    pytest.param("sampler.stpes=3", ("`sampler.stpes`", "did you mean 'steps'"), id="new-unknown-field"),
]


@pytest.mark.parametrize(("override", "expected"), OVERRIDE_ERRORS)
def test_override_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str,
                        expected: tuple[str, ...]) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(spec())
    rc, err = validate(capsys, str(path), "--set", override)
    check_error(rc, err, expected)


def test_override_fixes_invalid_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(spec(sampler="sampler: {type: euler_maruyama, steps: -5}"))
    rc, err = validate(capsys, str(path))
    check_error(rc, err, ("`sampler.steps`",))
    rc, _ = validate(capsys, str(path), "--set", "sampler.steps=5")
    assert rc == 0


def test_override_fixes_unknown_type(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(spec(process="process: {type: vpp}"))
    rc, _ = validate(capsys, str(path), "--set", "process.type=vp")
    assert rc == 0


# ---------------------------------------------------------------------------------------------
# The real entry point
# ---------------------------------------------------------------------------------------------


def test_python_m_diffcore_bad_spec(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(spec(sampler="sampler: {type: euler_maruyama, steps: -5}"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFCORE_")}
    proc = subprocess.run([sys.executable, "-m", "diffcore", "validate", str(path)], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1
    assert "`sampler.steps`" in proc.stderr and "(got -5)" in proc.stderr


def alias_bomb(levels: int) -> str:
    """A few hundred bytes of YAML whose aliases expand to 9**levels values."""
    lines = ["b0: &b0 [" + ", ".join(['"x"'] * 9) + "]"]
    lines += [f"b{i}: &b{i} [" + ", ".join([f"*b{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("where", ["field", "unknown_top_level_key"])
def test_yaml_alias_bomb_is_refused_without_expanding(where: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    bomb = alias_bomb(9)  # 9**9 ~ 387 million values if expanded
    assert len(bomb.encode()) < 1000
    steps = "*b8" if where == "field" else "10"
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb + spec(sampler=f"sampler: {{type: euler_maruyama, steps: {steps}}}"))
    rc, err = validate(capsys, str(path))
    check_error(rc, err, ("expands to more than",))
