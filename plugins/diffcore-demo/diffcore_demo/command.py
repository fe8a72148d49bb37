"""The ``diffcore demo`` subcommand, added through the ``diffcore.commands`` entry-point group.

``diffcore --help`` imports this module to build its parser, so it imports nothing heavy (no torch);
the run, the spec and the report are in :mod:`diffcore_demo.demo`, imported when the command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diffcore import hookimpl
from diffcore.commands import bounded_int, threads_argument
from diffcore.limits import MAX_STEPS

DEFAULT_NUM = 5000
"""Samples drawn with each sampler."""
MAX_DEMO_SAMPLES = 100_000
"""Most samples per sampler: the energy distance costs O(num^2)."""

SPEC_STEPS = "{spec_steps}"
"""Placeholder of ``--steps``'s help for the demo spec's ``train.steps``, filled in by
:class:`HelpFormatter` when the help is shown (reading the spec imports torch)."""


@hookimpl
def diffcore_add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("demo", help="train a small model on a 2-D set, sample it with two samplers, "
                                   "write PNGs and a report", formatter_class=HelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``diffcore demo``."""
    parser.add_argument("--out", type=Path, default=Path("demo-out"),
                        help="output folder: run/ checkpoints, PNGs and report (default: demo-out)")
    parser.add_argument("--data", help="a registered 2-D data set in place of moons: moons, swiss_roll, "
                        "checkerboard, rings or gmm_samples (its other data settings are kept)")
    parser.add_argument("--steps", type=bounded_int(1, MAX_STEPS), help=f"training steps (default {SPEC_STEPS})")
    parser.add_argument("--num", type=bounded_int(2, MAX_DEMO_SAMPLES), default=DEFAULT_NUM,
                        help=f"samples drawn with each sampler (default {DEFAULT_NUM}; the energy distance "
                        "compares sample sets, so at least 2)")
    parser.add_argument("--seed", type=bounded_int(0, 2**63 - 1), default=0,
                        help="seed of training and sampling (default 0)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--threads", type=threads_argument, metavar="N|auto",
                        help="CPU threads of torch: a number, or auto (the default, as for every command: the "
                        "cores other processes leave idle, at most torch's own setting)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                        help="override a value of the demo spec, e.g. --set model.hidden=256 (repeatable)")


class HelpFormatter(argparse.HelpFormatter):
    """Shows the demo spec's ``train.steps`` in the help of ``--steps`` (read only when shown)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = super()._get_help_string(action)
        if text is not None and SPEC_STEPS in text:
            from diffcore_demo.demo import DEMO_SPEC

            text = text.replace(SPEC_STEPS, str(DEMO_SPEC["train"]["steps"]))
        return text


def run(args: argparse.Namespace) -> int:
    """Run the demo (see :func:`diffcore_demo.demo.run`)."""
    from diffcore_demo.demo import run as run_demo

    return run_demo(args)
