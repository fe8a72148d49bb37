"""The sampler benchmarks in one run: diffcore's samplers on the exact score of Gaussian mixtures,
against k-diffusion's and diffusers' and against hand-written loops, section by section.

Sections (each is also a script of its own, ``python benchmarks/<module>.py [--quick]``):

- ``table`` (``sampler_quality.py``): sample quality per score evaluation against the peers;
- ``consistency`` (``sampler_consistency.py``): the same algorithms on the same grid as k-diffusion, in float64;
- ``loop`` (``sampler_loop.py``): ``euler_maruyama`` against a hand-written loop, interleaved timing;
- ``sde`` (``sampler_sde.py``): the torchsde-backed ``reverse_sde`` against the native ``euler_maruyama``.

The shared set-up and metrics are in ``common.py``, the peer adapters (and how to install the peers)
in ``peers.py``.

    python benchmarks/samplers.py                      # every section, about ten minutes on one CPU thread
    python benchmarks/samplers.py --quick              # a smoke run of every section
    python benchmarks/samplers.py --sections loop      # only some sections

Without the peers installed only diffcore's rows are printed (with a notice).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import sampler_consistency
import sampler_loop
import sampler_quality
import sampler_sde
import torch
from common import SEED, parse_args
from peers import load_diffusers, load_k_diffusion

SECTIONS = ["table", "consistency", "loop", "sde"]


def main(argv: Sequence[str] | None = None) -> None:
    def sections(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--sections", nargs="+", default=SECTIONS, choices=SECTIONS,
                            help="what to run (default: all)")

    args = parse_args(__doc__, "two mixtures, NFE 10 and 20, fewer samples", argv, sections)
    kd, diffusers = load_k_diffusion(), load_diffusers()
    started = time.perf_counter()
    print(f"diffcore samplers vs peers on exact Gaussian-mixture scores (VP, seed {SEED}, "
          f"{torch.get_num_threads()} thread(s))")
    if "table" in args.sections:
        sampler_quality.section(quick=args.quick, kd=kd, diffusers=diffusers)
    if "consistency" in args.sections:
        sampler_consistency.section(kd=kd)
    if "loop" in args.sections:
        sampler_loop.section(quick=args.quick)
    if "sde" in args.sections:
        sampler_sde.section(quick=args.quick)
    print(f"\ntotal {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
