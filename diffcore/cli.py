"""The ``diffcore`` command line: argument parsing and dispatch.

The work lives in importable modules (:mod:`diffcore.catalog`, :mod:`diffcore.sampling`,
:mod:`diffcore.training.setup`, ...); plugins add subcommands through the ``diffcore.commands``
entry-point group (:mod:`diffcore.commands`). Building the parser imports no torch, so ``--help`` and
``--version`` answer at once.

Bad input (a spec error, an unknown component, a wrong latents file...) exits with status 2 and one
paragraph on stderr naming the field and the fix, never a traceback; so does a
:class:`~diffcore.errors.DiffcoreError` raised by a plugin's command.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import textwrap
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from diffcore.commands import bounded_int, threads_argument
from diffcore.entry_points import DEBUG_ENV
from diffcore.errors import DiffcoreError, UsageError
from diffcore.limits import MAX_CLASSES, MAX_SAMPLES, MAX_STEPS
from diffcore.threads import THREADS_ENV, cpu_threads

EXIT_USAGE = 2


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived: raised in the main thread so every ``finally`` runs and removes
    its temporary files, as for Ctrl-C. A ``KeyboardInterrupt``, so ``except Exception`` never
    swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _terminate(signum: int, frame: object) -> None:
    raise Terminated(signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit status: 0, 2 for bad input (one paragraph on stderr), or
    128 + the signal number when interrupted (130 for Ctrl-C)."""
    previous = _install_signal_handlers()
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        if not hasattr(args, "threads"):
            result: int = args.func(args)
            return result
        with cpu_threads(args.threads):  # torch is imported here, after parsing
            result = args.func(args)
        return result
    except DiffcoreError as exc:
        _fail(str(exc), exc)
    except OSError as exc:
        _fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), exc)
    except Terminated as exc:
        _fail(f"stopped by {exc}; temporary files were removed and the last checkpoint is intact")
        return 128 + exc.signum
    except KeyboardInterrupt:
        _fail("interrupted; temporary files were removed and the last checkpoint is intact")
        return 128 + signal.SIGINT
    except Exception as exc:
        if not _peer_failed(exc):
            raise
    finally:
        _restore_signal_handlers(previous)
    return EXIT_USAGE


def _fail(message: str, exc: BaseException | None = None) -> None:
    if exc is not None and os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        traceback.print_exception(exc)
    print(f"diffcore: error: {' '.join(message.split())}", file=sys.stderr)


def _install_signal_handlers() -> dict[int, Any]:
    """Turn SIGTERM and SIGHUP into :class:`Terminated` (main thread only, where Python delivers
    signals); returns the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signum = getattr(signal, name)
            previous[signum] = signal.signal(signum, _terminate)
    return previous


def _restore_signal_handlers(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def _peer_failed(exc: Exception) -> bool:
    """Under ``torchrun``, whether ``exc`` is this rank losing its connection because another rank
    (usually rank 0, which reported why) stopped; then say so in one line instead of a traceback."""
    from diffcore.distributed import launched_by_torchrun

    if not launched_by_torchrun() or "torch.distributed" not in sys.modules:
        return False
    import torch.distributed as dist

    if not isinstance(exc, dist.DistError | RuntimeError) or os.environ.get("RANK", "0") == "0":
        return False
    _fail(f"rank {os.environ['RANK']} stopped because another process of the run failed (its message says "
          f"why): {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", exc)
    return True


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one paragraph, like every other diffcore error."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}; see `{self.prog} --help`")


_COMMANDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "plugins": ("Installed plugins (entry points of the groups diffcore and diffcore.commands), the components "
                "and commands each registered, and every plugin that failed to load, with why.",
                ("diffcore plugins", "diffcore plugins --json")),
    "list": ("Registered components of one kind, or of all: what each does, the capabilities it declares or "
             "requires, and its parameters with their defaults.",
             ("diffcore list sampler", "diffcore list guidance --json")),
    "schema": ("The JSON Schema of pipeline and classifier specs, built from the registered components "
               "(third-party ones included), for editors and validators.",
               ("diffcore schema --out spec.schema.json",)),
    "validate": ("Check a spec: every field, every component's parameters, and that the components fit "
                 "together; an error names the field and the fix.",
                 ("diffcore validate examples/gmm2d.yaml",
                  "diffcore validate examples/train_digits.yaml --set sampler.steps=100")),
    "train": ("Train the spec's model (or classifier) on its data with its objective: atomic safetensors "
              "checkpoints with EMA weights, a loss curve and a sample preview in the run directory; "
              "resumable; under torchrun, DistributedDataParallel.",
              ("diffcore train examples/train_moons.yaml --out runs/moons",
               "diffcore train examples/train_digits.yaml --out runs/digits --threads 1",
               "diffcore train runs/moons --resume runs/moons")),
    "sample": ("Draw samples from a spec or a trained run into a .npy file; sample i depends only on (seed, i). "
               "Any sampler, guidance and condition; under torchrun the ranks share the chunks.",
               ("diffcore sample examples/gmm2d.yaml --num 1000 --out x.npy",
                "diffcore sample runs/digits --num 64 --sampler ddim --steps 100 --out digits.npy",
                "diffcore sample runs/digits-cfg --num 100 --label 3 --set guidance.0.scale=1 --out threes.npy")),
    "likelihood": ("Exact log-likelihood by the probability-flow ODE and the instantaneous change of variables "
                   "(Song et al. 2021, Sec. 4.3), in the data's raw units; discrete data (a data set with a bin "
                   "width, e.g. digits) are dequantised and also reported in bits per dimension. Options come from "
                   "the spec's `likelihood` section or --set.",
                   ("diffcore likelihood examples/gmm2d.yaml --data x.npy --out ll.npy --json",
                    "diffcore likelihood runs/digits --data heldout.npy --set likelihood.trace=hutchinson "
                    "--set likelihood.probes=4")),
    "compare": ("Run samplers (default: every one compatible with the process) at NFE budgets on one pipeline, "
                "each with its own defaults and the largest size within the budget, and report quality against "
                "a reference (exact draws of an analytic gmm model, or the held-out data of a run): energy "
                "distance, and the Frechet distance for images, with the noise floor of true samples, the NFE "
                "measured and wall time; the best sampler per budget is named.",
                ("diffcore compare examples/gmm2d.yaml --plot compare.png",
                 "diffcore compare runs/digits --samplers ddim,dpm_solver_pp,unipc --budgets 10,20 --num 500 --json")),
}
"""Each built-in command's description and examples, for its ``--help``."""


def _command(sub: Any, name: str, help: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand's parser with its one-line ``help``, and the description and examples of
    :data:`_COMMANDS` in its own ``--help``."""
    description, examples = _COMMANDS.get(name, (None, ()))
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples) if examples else None
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help, description=textwrap.fill(description, 100) if description else None, epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The parser of the built-in commands and of every command plugin (whose load results are the
    ``command_plugins`` default, for ``diffcore plugins``)."""
    from diffcore import __version__
    from diffcore.commands import load_command_plugins

    parser = _Parser(
        prog="diffcore", description="Score-based generative models from declarative specs: list plugins and "
        "components, export the spec schema, validate specs, train and draw samples.")
    parser.add_argument("--version", action="version", version=f"diffcore {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = _command(sub, "plugins", help="installed plugins, their components and commands, and load errors")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_plugins)

    p = _command(sub, "list", help="registered components with capabilities and parameter defaults")
    p.add_argument("kind", nargs="?", help="process, model, objective, sampler, guidance, dataset or classifier")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)

    p = _command(sub, "schema", help="JSON Schema of the pipeline spec (for editors and validators)")
    p.add_argument("--out", type=Path, help="write to this file instead of stdout")
    p.set_defaults(func=cmd_schema)

    p = _command(sub, "validate", help="check a spec and that its components fit together")
    p.add_argument("spec", type=Path, help="a spec file (YAML or JSON)")
    _add_set(p)
    p.set_defaults(func=cmd_validate)

    p = _command(sub, "train", help="train the spec's model on its data with its objective")
    p.add_argument("spec", type=Path, help="a spec file, or a run directory / checkpoint (its saved spec); with "
                   "--resume, the run's own spec or the run directory itself")
    p.add_argument("--out", type=Path, help="run directory for checkpoints, locked while training (default: "
                   "runs/<spec name>, or the resumed run's directory)")
    p.add_argument("--resume", type=Path, help="resume from this run directory or checkpoint folder RUN/step-N, "
                   "continuing in RUN unless --out is given")
    p.add_argument("--checkpoint-every", type=bounded_int(1, MAX_STEPS),
                   help="steps between checkpoints (default: steps / 10)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    _add_threads(p)
    p.add_argument("--preview", choices=["last", "every", "none"], default="last",
                   help="when to write a picture of EMA samples into the run directory: at the last checkpoint "
                   "(default), at every checkpoint, or never; the loss curve is written at each checkpoint "
                   "unless none")
    p.add_argument("--no-preview", dest="preview", action="store_const", const="none",
                   help="the same as --preview none")
    _add_set(p)
    p.set_defaults(func=cmd_train)

    p = _command(sub, "sample", help="draw samples from a spec or a trained checkpoint into a .npy file")
    p.add_argument("spec", type=Path, help="a spec file, or a run directory / checkpoint of `diffcore train`")
    p.add_argument("--num", "--num-samples", dest="num", type=bounded_int(1, MAX_SAMPLES), required=True,
                   help="number of samples (spell it --num-samples after torchrun, whose own --numa-binding "
                   "option makes --num ambiguous)")
    p.add_argument("--seed", type=bounded_int(0, 2**64 - 1), default=0,
                   help="seed; sample i depends only on (seed, i)")
    p.add_argument("--out", type=Path, required=True, help="output .npy file, shape (num, *shape)")
    p.add_argument("--sampler", help="replace the spec's sampler by this registered one (its defaults)")
    p.add_argument("--steps", type=bounded_int(1, MAX_STEPS), help="set sampler.steps")
    p.add_argument("--latents", type=Path, help=".npy of shape (num, *shape): start states at time T, or at "
                   "--t-start")
    p.add_argument("--t-start", type=float, help="start the sampler at this time (t_min < t <= T) from --latents, "
                   "e.g. data noised to that time (SDEdit, Meng et al. 2022) or latents encoded to it")
    p.add_argument("--batch-size", type=bounded_int(1, MAX_SAMPLES),
                   help="samples per chunk (bounds memory; default: all, at most 16M values per chunk)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    _add_threads(p)
    p.add_argument("--model-range", action="store_true",
                   help="keep the model's scaled values (default: map back to the data's raw range when the "
                   "spec has a data section)")
    p.add_argument("--label", type=bounded_int(0, MAX_CLASSES),
                   help="class label of every sample (class-conditional models; guidance cfg or classifier)")
    p.add_argument("--labels", type=Path, help=".npy of shape (num,): one integer class label per sample")
    p.add_argument("--mask", type=Path, help=".npy of booleans, True where a value is observed (guidance inpaint "
                   "or dps): shape (num, *shape), or the sample shape for one mask shared by all")
    p.add_argument("--observed", type=Path, help=".npy of the observed values (model range), shaped like --mask; "
                   "for dps with a matrix A (m, D), the measurements (num, m) or (m,)")
    p.add_argument("--json", action="store_true", help="print a JSON summary (NFE, forward passes, seconds, ...)")
    _add_set(p)
    p.set_defaults(func=cmd_sample)

    p = _command(sub, "likelihood", help="log-likelihood of data under a spec's or a trained checkpoint's model "
                 "(probability-flow ODE; bits per dimension for discrete data)")
    p.add_argument("spec", type=Path, help="a spec file, or a run directory / checkpoint of `diffcore train`")
    p.add_argument("--data", type=Path, required=True, help=".npy of shape (n, *shape): the data, in raw units (the "
                   "units of the data set and of `diffcore sample`'s output)")
    p.add_argument("--out", type=Path, help="write log p(x) in nats, one float64 per row of --data, to this .npy")
    p.add_argument("--json", action="store_true",
                   help="print a JSON summary (nats and bits per dimension, NFE, seconds)")
    p.add_argument("--batch-size", type=bounded_int(1, MAX_SAMPLES),
                   help="rows per ODE solve (default 256; the result does not depend on the number of processes)")
    p.add_argument("--seed", type=bounded_int(0, 2**64 - 1), default=0,
                   help="seed of Hutchinson's probes and the dequantisation noise")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    _add_threads(p)
    p.add_argument("--labels", type=Path, help=".npy (n,) class labels: log p(x | y) under a class-conditional model "
                   "(default: its null label, the unconditional density)")
    _add_set(p)
    p.set_defaults(func=cmd_likelihood)

    p = _command(sub, "compare", help="samplers at NFE budgets on one pipeline: quality against a reference, "
                 "NFE and time, the best per budget")
    p.add_argument("spec", type=Path, help="a spec file, or a run directory / checkpoint of `diffcore train`")
    p.add_argument("--samplers", type=_names, help="comma-separated sampler names (default: every registered sampler "
                   "compatible with the process)")
    p.add_argument("--budgets", type=_budgets, default=(5, 10, 20, 50),
                   help="comma-separated NFE budgets (default 5,10,20,50)")
    p.add_argument("--num", type=bounded_int(2, MAX_SAMPLES), default=2000, help="samples per run (default 2000)")
    p.add_argument("--seed", type=bounded_int(0, 2**64 - 1), default=0,
                   help="seed of the samplers' prior draws and noise (shared by all) and of the reference")
    p.add_argument("--json", action="store_true", help="print the rows, floor and best per budget as JSON")
    p.add_argument("--plot", type=Path, help="write a PNG of quality against NFE, with the noise floor, here")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    _add_threads(p)
    _add_set(p)
    p.set_defaults(func=cmd_compare)

    parser.set_defaults(command_plugins=load_command_plugins(sub))  # type: ignore[arg-type]
    return parser


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give sampler names separated by commas, e.g. ddim,heun")
    return names


def _budgets(text: str) -> list[int]:
    try:
        budgets = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        budgets = []
    if not budgets or min(budgets) < 1 or max(budgets) > MAX_STEPS:
        raise argparse.ArgumentTypeError(f"give NFE budgets from 1 to {MAX_STEPS} separated by commas, e.g. 5,10,20")
    return budgets


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=threads_argument, metavar="N|auto",
                   help=f"CPU threads of torch: a number, or auto (the default, or ${THREADS_ENV}): the cores other "
                   "processes leave idle when the command starts, at most torch's own setting (one per core); on a "
                   "busy machine more threads than idle cores can make a command tens of times slower")


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="override a spec value, e.g. --set sampler.steps=500 (repeatable)")


# ---------------------------------------------------------------------------------------------


def cmd_plugins(args: argparse.Namespace) -> int:
    from diffcore.commands import as_rows
    from diffcore.registry import get_registry

    registry = get_registry()
    rows: list[dict[str, Any]] = [
        {"name": info.name, "distribution": info.distribution, "version": info.version,
         "components": [f"{k}:{n}" for k, n in info.components], "errors": info.errors}
        for info in registry.plugins.values()
    ]
    commands = as_rows(args.command_plugins)
    errors = [e for row in commands for e in row["errors"]] + registry.errors()
    if args.json:
        print(json.dumps({"plugins": rows, "commands": commands, "errors": errors}, indent=2))
        return 0
    for row in rows:
        dist = f" ({row['distribution']} {row['version']})" if row["distribution"] else ""
        print(f"{row['name']}{dist}: {', '.join(row['components']) or 'no components'}")
    if commands:
        print("\ncommand plugins:")
        for row in commands:
            dist = f" ({row['distribution']} {row['version']})" if row["distribution"] else ""
            print(f"{row['name']}{dist}: {', '.join(row['commands']) or 'no commands'}")
    if errors:
        print("\nload errors:")
        for err in errors:
            print(f"  - {err}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from diffcore.catalog import describe_components, format_components

    rows = describe_components(args.kind)
    if not rows and not args.json:
        what = f"no {args.kind} is registered" if args.kind else "no component is registered"
        print(f"{what}; install a plugin that provides one (`diffcore plugins` lists what is loaded)")
        return 0
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        print(format_components(rows), end="")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from diffcore.spec import json_schema
    from diffcore.utils import atomic_write

    text = json.dumps(json_schema(), indent=2)
    if args.out:
        from diffcore.inputs import output_file

        atomic_write(output_file(args.out), text + "\n")
    else:
        print(text)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from diffcore.pipeline import Pipeline
    from diffcore.registry import get_registry
    from diffcore.spec import is_classifier_spec, load_spec

    spec = load_spec(args.spec, args.overrides)
    if is_classifier_spec(spec):
        kind, params = spec.component("classifier")
        get_registry().build("classifier", kind, **params)
        print(f"{args.spec}: ok (a classifier spec: process {spec.component('process')[0]}, classifier {kind})")
    else:
        pipe = Pipeline.from_spec(spec)
        print(f"{args.spec}: ok (process {pipe.process.name}, model {pipe.model.name}, sampler "
              f"{pipe.sampler.name}, shape {list(pipe.shape)}"
              + (f", guidance {', '.join(g.name for g in pipe.guidance)})" if pipe.guidance else ")"))
    errors = get_registry().errors()
    if errors:  # the spec did not need the broken plugins, but the user should know they are broken
        print(f"diffcore: warning: {len(errors)} plugin error(s); `diffcore plugins` lists them: {errors[0]}",
              file=sys.stderr)
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from diffcore.devices import resolve_device
    from diffcore.distributed import process_group
    from diffcore.inputs import output_file

    output_file(args.out)
    with process_group(resolve_device(args.device)) as world:
        from diffcore.sampling import data_scaling, load_condition, load_for_sampling, load_latents, sample_to_file

        pipe, spec, meta = load_for_sampling(args.spec, sampler=args.sampler, steps=args.steps,
                                             overrides=args.overrides)
        scaling = None if args.model_range else data_scaling(spec, meta)
        latents = load_latents(args.latents) if args.latents is not None else None
        cond = load_condition(pipe, args.num, label=args.label, labels=args.labels, mask=args.mask,
                              observed=args.observed)
        summary = sample_to_file(pipe, args.out, args.num, seed=args.seed, batch_size=args.batch_size,
                                 latents=latents, t_start=args.t_start, scaling=scaling, world=world, cond=cond,
                                 progress=True)
    if summary is None:  # not the main process
        return 0
    if args.json:
        print(json.dumps(summary))
    else:
        guided = f", guidance {', '.join(summary['guidance'])}" if summary["guidance"] else ""
        print(f"wrote {args.num} samples of shape {tuple(pipe.shape)} to {args.out} (sampler {pipe.sampler.name}"
              f"{guided}, NFE {summary['nfe']}, {summary['forward_passes']} network passes per sample, "
              f"{summary['seconds']:.2f} s on {world.size} x {world.device}, {summary['threads']} thread(s))")
    return 0


def cmd_likelihood(args: argparse.Namespace) -> int:
    import torch

    from diffcore.devices import resolve_device
    from diffcore.distributed import process_group
    from diffcore.inputs import output_file

    if args.out is not None:
        output_file(args.out)
    with process_group(resolve_device(args.device)) as world:
        from diffcore.density import data_bin_width, data_log_likelihood, load_data, save_log_prob
        from diffcore.sampling import data_scaling, load_for_sampling

        pipe, spec, meta = load_for_sampling(args.spec, overrides=args.overrides)
        x, labels = load_data(args.data, args.labels)
        result = data_log_likelihood(
            pipe, x, config=getattr(spec, "likelihood", None), seed=args.seed, batch_size=args.batch_size,
            scaling=data_scaling(spec, meta), bin_width=data_bin_width(spec), labels=labels, world=world,
            progress=True)
    if not world.is_main:
        return 0
    if args.out is not None:
        save_log_prob(args.out, result.log_prob)
    summary = {**({"out": str(args.out)} if args.out is not None else {}), "data": str(args.data),
               **result.summary(), "processes": world.size, "device": str(world.device),
               "threads": torch.get_num_threads()}
    if args.json:
        print(json.dumps(summary))
    else:
        bpd = f", {summary['bpd']:.4f} bits per dimension" if summary["bpd"] is not None else ""
        print(f"{summary['num']} rows: mean log p(x) {summary['mean_log_prob']:.4f} nats "
              f"({summary['nats_per_dim']:.4f} nats per dimension{bpd}); trace {summary['trace']}, "
              f"NFE {summary['nfe']}, {summary['seconds']:.2f} s"
              + (f"; wrote {args.out}" if args.out is not None else ""))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from diffcore.devices import resolve_device
    from diffcore.distributed import process_group

    if args.resume is not None and args.overrides:
        raise UsageError("--set cannot change the spec of a resumed run: it continues with the spec saved in "
                         f"{args.resume}; start a new run with --out to train with other settings")
    with process_group(resolve_device(args.device)) as world:
        from diffcore.distributed import on_every_rank
        from diffcore.training.checkpoint import run_dir_of
        from diffcore.training.setup import run_training, setup_training, summary_json, training_spec

        spec, source = on_every_rank(world, lambda: training_spec(args.spec, args.overrides, resume=args.resume),
                                     "reading the spec")
        setup = setup_training(spec, world=world, source=source)
        # a resumed run continues in its own run directory (the parent of a step-N folder)
        out = args.out or (run_dir_of(args.resume) if args.resume is not None else Path("runs") / args.spec.stem)
        summary = run_training(setup, out, resume=args.resume, checkpoint_every=args.checkpoint_every,
                               preview=args.preview)
        if world.is_main:
            print(summary_json(summary))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from diffcore.compare import compare, save_compare_plot
    from diffcore.devices import resolve_device
    from diffcore.inputs import output_file

    if args.plot is not None:
        output_file(args.plot, what="--plot")
    result = compare(args.spec, samplers=args.samplers, budgets=args.budgets, num=args.num, seed=args.seed,
                     overrides=args.overrides, device=resolve_device(args.device), progress=True)
    if args.plot is not None:
        save_compare_plot(result, args.plot)
    if args.json:
        print(json.dumps({**result.to_dict(), **({"plot": str(args.plot)} if args.plot else {})}, indent=2))
    else:
        print(result.to_table(), end="")
        if args.plot is not None:
            print(f"wrote {args.plot}")
    if not any(row.nfe is not None for row in result.rows):
        from diffcore.errors import SamplingError

        notes = sorted({row.note for row in result.rows if row.note})
        raise SamplingError(f"no sampler produced samples at any budget ({len(result.rows)} runs); "
                            f"{'first reason: ' + notes[0] if notes else 'see the table'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
