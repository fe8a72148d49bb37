"""Every spec in ``examples/`` validates and runs, at a small size, exactly the commands its header
documents.

An example's header is its leading comment; a command is a header line indented by at least two
spaces after the ``#`` that starts with ``diffcore``, ``torchrun`` or ``python`` (a trailing ``\\``
continues it on the next line). The test runs each command in order in a fresh folder where
``examples/`` is the repository's, so the documented relative paths (``runs/digits``, ``x.npy``) work
as written, shrunk only by :data:`SHRINK` (fewer training steps, smaller networks, fewer samples and
solver steps) and ``--device cpu``. It then checks what each command wrote: samples of the sample
shape, finite; observed values kept under inpainting; finite log-likelihoods and a JSON summary with
nats per dimension; a checkpoint at the last step. A new example is tested as soon as it is added:
give it a header with its commands (and, if it trains, an entry in :data:`SHRINK`).

``diffcore`` commands run in this process (``diffcore.cli.main``), ``python -c`` one-liners are
executed here too, and ``torchrun`` commands go through the launcher of ``tests/test_distributed.py``
(two gloo processes on CPU), which checks in depth that distributed training and sampling follow the
single-process run; here only the documented commands are run and their outputs checked.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_main

EXAMPLES_DIR = ROOT / "examples"
EXAMPLES = sorted(p for p in EXAMPLES_DIR.iterdir() if p.suffix in (".yaml", ".yml", ".json"))

COMMANDS_OF_JSON = {
    "ve_ode.json": ["diffcore sample examples/ve_ode.json --num 1000 --seed 0 --out x.npy"],
}
"""The commands of examples that cannot carry a comment (strict JSON); the user guide's Examples table
lists the same ones."""

COMMAND = re.compile(r"#\s{2,}((?:diffcore|torchrun|python) .*)$")
"""A command line of a header: indented by at least two spaces after the ``#``."""


@dataclass(frozen=True)
class Shrink:
    """How an example's commands are shrunk: ``spec`` are ``--set`` overrides for the commands that
    read the example file itself (and ``diffcore demo``); ``run`` for those that read a run directory
    (the run's spec already has the shrunk network and sampler); ``options`` replace the values of
    options."""

    spec: tuple[str, ...] = ()
    run: tuple[str, ...] = ()
    options: dict[str, str] = field(default_factory=dict)
    append: dict[str, tuple[str, ...]] = field(default_factory=dict)


DEFAULT_OPTIONS = {"--num": "16", "--num-samples": "16"}
TINY_MLP = ("model.hidden=16", "model.depth=2", "model.embedding_dim=16", "data.num=500", "train.batch_size=32")
TINY_UNET = ("model.channels=8", "model.embedding_dim=16", "train.batch_size=16")
FEW_STEPS = ("train.steps=10", "train.warmup=2", "sampler.steps=4")
FAST_LIKELIHOOD = ("likelihood.method=rk4", "likelihood.steps=4")

SHRINK: dict[str, Shrink] = {
    "demo_moons.yaml": Shrink(spec=(*TINY_MLP, *FEW_STEPS), append={"demo": ("--steps", "10", "--num", "20")}),
    "gmm2d.yaml": Shrink(spec=("sampler.steps=20",)),
    "inpaint_images.yaml": Shrink(spec=("sampler.steps=20",)),
    "likelihood_gmm2d.yaml": Shrink(spec=("sampler.steps=20", *FAST_LIKELIHOOD)),
    "subvp_images.yaml": Shrink(spec=("sampler.steps=5",)),
    "train_digits.yaml": Shrink(spec=(*TINY_UNET, *FEW_STEPS), run=FAST_LIKELIHOOD),
    "train_digits_cfg.yaml": Shrink(spec=(*TINY_UNET, *FEW_STEPS)),
    "train_digits_classifier.yaml": Shrink(spec=("classifier.channels=8", "classifier.embedding_dim=16",
                                                 "train.batch_size=16", "train.steps=10", "train.warmup=2")),
    "train_moons.yaml": Shrink(spec=(*TINY_MLP, *FEW_STEPS)),
    "ve_ode.json": Shrink(spec=("sampler.rtol=1e-3", "sampler.atol=1e-3")),
}
"""Per example; an example missing here runs its commands at full size (fine for analytic models)."""

PRIOR_RUNS: dict[str, Shrink] = {
    "runs/digits": SHRINK["train_digits.yaml"],
}
"""Runs that another example's commands train first (classifier guidance samples runs/digits): a
command that trains into one of these uses that example's shrink."""


def documented_commands(path: Path) -> list[list[str]]:
    """The commands of an example's header, split like a shell would."""
    if path.suffix == ".json":
        return [shlex.split(command) for command in COMMANDS_OF_JSON[path.name]]
    lines: list[str] = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    commands: list[str] = []
    continued = False
    for line in lines:
        text = line[1:].strip()
        if continued:
            commands[-1] = commands[-1][:-1] + " " + text
        elif match := COMMAND.match(line):
            commands.append(match.group(1).strip())
        else:
            continue
        continued = commands[-1].endswith("\\")
    return [shlex.split(command) for command in commands]


def option(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def shrink(example: str, args: list[str]) -> list[str]:
    """The documented ``diffcore`` arguments ``args`` (after ``diffcore``), shrunk for ``example``."""
    command, rest = args[0], list(args[1:])
    spec_arg = rest[0] if rest and not rest[0].startswith("-") else None
    reads_example = command == "demo" or (spec_arg is not None and spec_arg.startswith("examples/"))
    settings = SHRINK.get(example, Shrink())
    if command == "train" and option(rest, "--out") in PRIOR_RUNS:
        settings = PRIOR_RUNS[option(rest, "--out")]  # type: ignore[index]
    options = DEFAULT_OPTIONS | settings.options
    rest += list(settings.append.get(command, ()))
    for i, token in enumerate(rest[:-1]):
        if token in options and not rest[i + 1].startswith("-"):
            rest[i + 1] = options[token]
    if command in ("train", "sample", "likelihood", "demo") and "--device" not in rest:
        rest += ["--device", "cpu"]
    if command == "train":
        steps = next((s.split("=")[1] for s in settings.spec if s.startswith("train.steps=")), None)
        rest += ["--checkpoint-every", steps] if steps else []
    overrides = settings.spec if reads_example else settings.run
    if command == "validate":
        overrides = ()
    elif command != "likelihood":
        overrides = tuple(o for o in overrides if not o.startswith("likelihood."))
    for override in overrides:
        rest += ["--set", override]
    return [command, *rest]


def check_outputs(args: list[str], stdout: str, cwd: Path) -> None:
    """What a finished ``diffcore`` command (``args`` after ``diffcore``, shrunk) wrote."""
    from diffcore.sampling import data_scaling, load_for_sampling
    from diffcore.training.checkpoint import latest_checkpoint, load_checkpoint

    command, rest = args[0], args[1:]
    out = option(rest, "--out")
    if command == "train":
        _, meta = load_checkpoint(latest_checkpoint(cwd / out))  # type: ignore[operator]
        assert meta["step"] >= 1 and np.isfinite(meta["losses"]).all(), meta
        if "--checkpoint-every" in rest:  # the shrunk run's last step
            assert meta["step"] == int(option(rest, "--checkpoint-every")), meta  # type: ignore[arg-type]
    elif command == "sample":
        x = np.load(cwd / out)  # type: ignore[operator]
        num = int(option(rest, "--num") or option(rest, "--num-samples"))  # type: ignore[arg-type]
        pipe, spec, meta = load_for_sampling(cwd / rest[0])
        assert x.shape == (num, *pipe.shape) and x.dtype == np.float32, x.shape
        assert np.isfinite(x).all()
        if "--mask" in rest:  # inpainting: the observed values are kept exactly (mapped to raw units)
            mask = np.broadcast_to(np.load(cwd / option(rest, "--mask")), x.shape)  # type: ignore[operator]
            observed = np.broadcast_to(np.load(cwd / option(rest, "--observed")), x.shape)  # type: ignore[operator]
            scaling = None if "--model-range" in rest else data_scaling(spec, meta)
            if scaling is None:
                assert np.array_equal(x[mask], observed[mask])
            else:
                shift, mult = scaling
                np.testing.assert_allclose(x[mask], observed[mask] / mult + shift, rtol=1e-5, atol=1e-5 / mult)
    elif command == "likelihood":
        rows = np.load(cwd / option(rest, "--data")).shape[0]  # type: ignore[operator]
        if out is not None:
            log_p = np.load(cwd / out)
            assert log_p.shape == (rows,) and log_p.dtype == np.float64 and np.isfinite(log_p).all()
        if "--json" in rest:
            summary = json.loads(stdout.strip().splitlines()[-1])
            assert summary["num"] == rows and np.isfinite(summary["nats_per_dim"])
            assert np.isfinite(summary["mean_log_prob"])
    elif command == "demo":
        assert np.isfinite(json.loads((cwd / out / "report.json").read_text())["train"]["final_loss"])  # type: ignore[operator]


def absolute(args: list[str], cwd: Path) -> list[str]:
    """``args`` with the relative paths made absolute under ``cwd`` (the torchrun launcher runs in the
    repository root): the spec or run, and the values of file options."""
    files = {"--out", "--data", "--mask", "--observed", "--latents", "--labels", "--resume"}
    result = list(args)
    for i, token in enumerate(result):
        if (i == 1 and not token.startswith("-")) or (i > 0 and result[i - 1] in files):
            result[i] = str(cwd / token)
    return result


def run_command(example: str, argv: list[str], cwd: Path) -> None:
    if argv[0] == "python":
        assert argv[1] == "-c" and len(argv) == 3, f"only `python -c CODE` is run by the test: {argv}"
        exec(compile(argv[2], f"<{example} header>", "exec"), {"__name__": "__example__"})
        return
    if argv[0] == "torchrun":
        import torch

        if not torch.distributed.is_available():
            pytest.skip("torch.distributed missing")
        from test_distributed import torchrun

        at = argv.index("-m")
        assert argv[at + 1] == "diffcore", argv
        launch = " ".join(argv[1:at])
        nproc = re.fullmatch(r"--standalone --nproc[-_]per[-_]node[= ](\d+)", launch)
        assert nproc, f"the test's launcher runs `torchrun --standalone --nproc_per_node=N`, not {launch!r}"
        args = shrink(example, argv[at + 2:])
        proc = torchrun(*absolute(args, cwd), nproc=int(nproc.group(1)))
        assert proc.returncode == 0, proc.stderr
        check_outputs(args, proc.stdout, cwd)
        return
    assert argv[0] == "diffcore", argv
    args = shrink(example, argv[1:])
    code, stdout, stderr = run_main(*args)
    assert code == 0, f"{shlex.join(argv)}\n(run as diffcore {shlex.join(args)}):\n{stderr}"
    check_outputs(args, stdout, cwd)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates_and_documents_its_commands(path: Path) -> None:
    code, stdout, stderr = run_main("validate", str(path))
    assert code == 0 and "ok" in stdout, stderr
    commands = documented_commands(path)
    assert commands, f"{path.name}: its header documents no command (`#   diffcore ...`)"
    for argv in commands:
        assert argv[0] in ("diffcore", "torchrun", "python"), argv
    if path.suffix != ".json":
        header = path.read_text().split("\n", 1)[0]
        assert header.startswith("# "), f"{path.name}: the first line is not a comment saying what it does"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs_its_documented_commands(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "examples").symlink_to(EXAMPLES_DIR)
    monkeypatch.chdir(tmp_path)
    for argv in documented_commands(path):
        run_command(path.name, argv, tmp_path)


def test_user_guide_lists_every_example() -> None:
    """The user guide's Examples table names every example, and the commands of a JSON example (which
    has no header) are the ones this test runs."""
    guide = (ROOT / "docs" / "user-guide.md").read_text()
    section = guide.split("\n## Examples\n", 1)[1].split("\n## ", 1)[0]
    for path in EXAMPLES:
        assert f"| `{path.name}` |" in section, f"docs/user-guide.md, Examples: no row for {path.name}"
    for commands in COMMANDS_OF_JSON.values():
        for command in commands:
            assert f"`{command}`" in section, command
