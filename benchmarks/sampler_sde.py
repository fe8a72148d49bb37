"""The torchsde-backed ``reverse_sde`` sampler (``euler`` and ``srk``) against diffcore's native
``euler_maruyama`` (``denoise_last: false``, the same scheme as torchsde's euler) on the reference
mixture's exact score (``common.py``): time, NFE and energy distance to ``p_0`` (also in units of
its floor), on a uniform grid.

    python benchmarks/sampler_sde.py            # 100 and 500 steps, 4000 samples
    python benchmarks/sampler_sde.py --quick    # 50 steps, 1000 samples
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from common import REFERENCE_2D, SEED, Reference, Setup, run_script


def run_reverse_sde(*, num: int, step_counts: Sequence[int], ref_num: int) -> None:
    """The torchsde-backed ``reverse_sde`` (euler, srk) against the native ``euler_maruyama``
    (``denoise_last: false``, the same scheme as torchsde's euler): time, NFE and energy distance."""
    mixture = REFERENCE_2D
    setup = Setup.build(mixture)
    ref = Reference(mixture, ref_num)
    floor = ref.floor(num)
    print(f"\n== reverse_sde (torchsde) vs native euler_maruyama ({mixture.name}, {num} samples, uniform grid; "
          f"ED floor {floor:.2e})")
    print(f"  {'sampler':<36} {'steps':>5} {'NFE':>5} {'sec':>7} {'ED':>10} {'ED/fl':>7}")
    configs: list[tuple[str, str, dict[str, Any]]] = [
        ("euler_maruyama (denoise_last=False)", "euler_maruyama", {"denoise_last": False}),
        ("reverse_sde euler", "reverse_sde", {"method": "euler"}),
        ("reverse_sde srk", "reverse_sde", {"method": "srk"}),
    ]
    for steps in step_counts:
        for label, name, params in configs:
            pipe = setup.pipe.with_sampler(name, steps=steps, **params)
            try:
                start = time.perf_counter()
                result = pipe.sample(num, seed=SEED)
                seconds = time.perf_counter() - start
            except Exception as exc:  # noqa: BLE001 - reported, not fatal
                print(f"  {label:<36} {steps:>5} CRASHED ({type(exc).__name__}: {exc})")
                continue
            ed = ref.energy_distance(result.x)
            print(f"  {label:<36} {steps:>5} {result.nfe:>5} {seconds:>7.2f} {ed:>10.2e} {ed / floor:>7.1f}")


def section(*, quick: bool) -> None:
    """:func:`run_reverse_sde` at the sizes of ``--quick`` or of the full run."""
    if quick:
        run_reverse_sde(num=1000, step_counts=(50,), ref_num=2000)
    else:
        run_reverse_sde(num=4000, step_counts=(100, 500), ref_num=5000)


def main(argv: Sequence[str] | None = None) -> None:
    run_script(__doc__, "50 steps, 1000 samples", section, argv)


if __name__ == "__main__":
    main()
