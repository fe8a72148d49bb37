"""An example command plugin: ``diffcore cosine-schedule`` prints ``alpha(t)`` and ``sigma(t)`` of the
cosine process at evenly spaced times.

The module imports only argparse and ``diffcore.hookimpl`` (``diffcore --help`` imports it); torch and
the process are imported when the command runs.
"""

from __future__ import annotations

import argparse
import json

from diffcore import hookimpl


@hookimpl
def diffcore_add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("cosine-schedule", help="alpha(t) and sigma(t) of the cosine process "
                                   "(diffcore-example)")
    parser.add_argument("--s", type=float, default=0.008, help="offset s of the schedule (default 0.008)")
    parser.add_argument("--points", type=int, default=5, help="evenly spaced times from 0 to T (default 5)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from diffcore.errors import UsageError
    from diffcore_example.cosine import CosineVP

    if args.points < 2:
        raise UsageError(f"--points must be at least 2 (the times 0 and T), got {args.points}")
    process = CosineVP(s=args.s)
    t = torch.linspace(0.0, process.params.T, args.points, dtype=torch.float64)
    alpha, sigma = process.alpha(t), process.sigma(t)
    rows = [{"t": float(ti), "alpha": float(a), "sigma": float(s)} for ti, a, s in zip(t, alpha, sigma, strict=True)]
    if args.json:
        print(json.dumps(rows))
    else:
        for row in rows:
            print(f"t={row['t']:.4f} alpha={row['alpha']:.6f} sigma={row['sigma']:.6f}")
    return 0
