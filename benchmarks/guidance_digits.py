"""Guidance on scikit-learn's 8x8 digits (30% held out): classifier-free guidance, classifier
guidance and inpainting with U-Nets trained on CPU, measured by a logistic regression trained on the
real training digits and by the Frechet distance to the held-out ones.

- ``cfg``: the class-conditional U-Net of ``examples/train_digits_cfg.yaml`` (label dropout 0.1),
  ``--per-class`` samples of each class for every guidance weight ``w`` of ``--weights``;
- ``classifier``: the unconditional U-Net of ``examples/train_digits.yaml`` guided by the
  noise-conditional classifier of ``examples/train_digits_classifier.yaml``, for every scale of
  ``--scales``;
- ``inpaint``: the bottom half of every held-out digit filled in from its top half (the top 4 rows
  observed) by the unconditional U-Net.

Columns: ``accuracy`` the share of samples that the logistic regression (``max_iter=2000`` on the
flattened model-range pixels of the real training split, :class:`diffcore.testing.digits.DigitsReference`)
assigns to the requested label; ``worst`` the lowest per-class accuracy; ``p>=0.9`` the share it
classifies (as any class) with probability at least 0.9; ``FD`` the pixel-space Frechet distance
(:func:`diffcore.metrics.frechet_distance`) of all the samples to the 539 held-out digits, whose floor
(1000 real training digits) is printed; ``NFE`` and ``passes`` the guided score evaluations and the
network forward passes per sample. The target: accuracy >= 99.5% and FD <= 0.45 at one weight.

    python -m diffcore train examples/train_digits_cfg.yaml --out runs/digits-cfg --device cpu
    python -m diffcore train examples/train_digits.yaml --out runs/digits --device cpu
    python -m diffcore train examples/train_digits_classifier.yaml --out runs/digits-classifier --device cpu
    python benchmarks/guidance_digits.py --sampler ddim --steps 100 --threads 1   # about 75 minutes on one thread
    python benchmarks/guidance_digits.py --parts cfg --sampler dpm_solver_pp --steps 50 --weights 1 2 3

The parts can run in parallel processes (``--parts cfg``, ``--parts classifier``, ``--parts inpaint``)
with ``--samples-dir D``, which saves every sample set; a last call of every part with ``--reuse``
reads them back, only measuring and drawing the figure.

Writes ``docs/images/guidance_digits.png`` (accuracy and FD against the guidance strength, samples at
the best setting, inpainting examples) and, with ``--json``, the numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffcore import Condition, Pipeline, get_registry
from diffcore.guidance import Guidance
from diffcore.sampling import load_for_sampling
from diffcore.testing.digits import DigitsReference, top_rows_mask

ROOT = Path(__file__).resolve().parents[1]
ACCURACY_TARGET = 0.995
FRECHET_TARGET = 0.45


@dataclass
class Row:
    """One guided sampling setting, measured."""

    method: str
    strength: float
    accuracy: float
    worst: float
    confident: float
    frechet: float
    nfe: int
    passes: int | None
    seconds: float

    @property
    def meets_target(self) -> bool:
        return self.accuracy >= ACCURACY_TARGET and self.frechet <= FRECHET_TARGET


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=" ".join((__doc__ or "").split("\n\n")[0].split()))
    parser.add_argument("--parts", nargs="+", choices=["cfg", "classifier", "inpaint"],
                        default=["cfg", "classifier", "inpaint"], help="what to measure (default all)")
    parser.add_argument("--cfg-run", type=Path, default=ROOT / "runs" / "digits-cfg",
                        help="run of examples/train_digits_cfg.yaml")
    parser.add_argument("--uncond-run", type=Path, default=ROOT / "runs" / "digits",
                        help="run of examples/train_digits.yaml (classifier guidance and inpainting)")
    parser.add_argument("--classifier-run", type=Path, default=ROOT / "runs" / "digits-classifier",
                        help="run of examples/train_digits_classifier.yaml")
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 3.0],
                        help="cfg guidance weights w")
    parser.add_argument("--scales", type=float, nargs="+", default=[0.0, 1.0, 2.0, 2.5, 3.0, 4.0, 8.0],
                        help="classifier guidance scales")
    parser.add_argument("--interval", type=float, nargs=2, default=None, metavar=("T_LO", "T_HI"),
                        help="guide only at times in [T_LO, T_HI] (cfg and classifier; default: every time)")
    parser.add_argument("--per-class", type=int, default=100, help="samples of each class per setting")
    parser.add_argument("--sampler", default=None, help="sampler of the cfg and classifier pipelines (default: each "
                        "run's own)")
    parser.add_argument("--steps", type=int, default=None, help="its steps (default: the run's, or the sampler's)")
    parser.add_argument("--inpaint-sampler", default=None, help="sampler of inpainting (default: the run's own, "
                        "Euler-Maruyama with 500 steps)")
    parser.add_argument("--inpaint-steps", type=int, default=None, help="its steps")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                        help="a spec override for every pipeline, e.g. sampler.eta=1 (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "docs" / "images", help="folder of the PNG")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument("--samples-dir", type=Path, default=None, help="also save every sample set here (.npy)")
    parser.add_argument("--reuse", action="store_true",
                        help="read sample sets saved in --samples-dir by an earlier run instead of sampling again")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return args


def load(run: Path, args: argparse.Namespace, *, inpaint: bool = False) -> Pipeline:
    """The pipeline of a trained run with the benchmark's sampler (``inpaint``: inpainting's) and
    overrides, no guidance."""
    sampler, steps = (args.inpaint_sampler, args.inpaint_steps) if inpaint else (args.sampler, args.steps)
    pipe, _, _ = load_for_sampling(run, sampler=sampler, steps=steps, overrides=["guidance=[]", *args.overrides])
    return pipe


def with_guidance(pipe: Pipeline, guidance: list[dict[str, Any]]) -> Pipeline:
    registry = get_registry()
    built: list[Guidance] = []
    for g in guidance:
        component = registry.build("guidance", g["type"], **{k: v for k, v in g.items() if k != "type"})
        assert isinstance(component, Guidance)
        built.append(component)
    return Pipeline(pipe.process, pipe.model, pipe.sampler, built, pipe.shape)


def describe_sampler(pipe: Pipeline, *, short: bool = False) -> str:
    """The sampler and its main parameters (``short``: for a file name)."""
    params = pipe.sampler.params.model_dump()
    shown = {k: v for k, v in params.items() if k in ("steps", "eta", "order", "thresholding", "grid")}
    if short:
        return "-".join([pipe.sampler.name, *(f"{k}{v}" for k, v in sorted(shown.items()))])
    return f"{pipe.sampler.name} {shown}"


def describe(interval: dict[str, Any]) -> str:
    return f", guidance interval {interval['interval']}" if interval else ""


def draw(args: argparse.Namespace, name: str, pipe: Pipeline, num: int, cond: Condition | None,
         seed: int) -> tuple[Tensor, int, int | None, float]:
    """``num`` samples of ``pipe`` (seed ``seed``): samples, NFE, forward passes and seconds. With
    ``--samples-dir`` they are saved there as ``<key>.npy`` (and ``<key>.json``), the key naming the
    setting; with ``--reuse`` too, a saved set of the same key is read back instead of sampling again."""
    key = f"{name}_{describe_sampler(pipe, short=True)}_seed{seed}_n{num}"
    folder = args.samples_dir
    if folder is not None and args.reuse and (folder / f"{key}.npy").is_file():
        meta = json.loads((folder / f"{key}.json").read_text())
        print(f"  (reusing {folder / key}.npy)")
        return torch.from_numpy(np.load(folder / f"{key}.npy")), meta["nfe"], meta["passes"], meta["seconds"]
    start = time.perf_counter()
    res = pipe.sample(num, seed=seed, cond=cond, batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    x = res.x.cpu()
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / f"{key}.npy", x.numpy())
        (folder / f"{key}.json").write_text(json.dumps({"nfe": res.nfe, "passes": res.forward_passes,
                                                        "seconds": seconds}))
    return x, res.nfe, res.forward_passes, seconds


def sweep(method: str, pipe: Pipeline, strengths: Sequence[float], guidance_of: Any, ref: DigitsReference,
          args: argparse.Namespace, tag: str = "") -> tuple[list[Row], dict[float, Tensor]]:
    """Sample ``--per-class`` digits of each class under each guidance strength and measure them."""
    labels = torch.arange(10).repeat_interleave(args.per_class)
    rows, samples = [], {}
    for s in strengths:
        guided = with_guidance(pipe, guidance_of(s))
        x, nfe, passes, seconds = draw(args, f"{method}{s:g}{tag}", guided, labels.shape[0],
                                       Condition(labels=labels), args.seed)
        row = Row(method, s, ref.accuracy(x, labels), float(ref.class_accuracies(x, labels).min()),
                  ref.confident(x), ref.frechet(x), nfe, passes, seconds)
        rows.append(row)
        samples[s] = x
        print(f"  {method} {s:g}: accuracy {row.accuracy:.4f} (worst class {row.worst:.2f}), p>=0.9 "
              f"{row.confident:.3f}, FD {row.frechet:.4f}, {seconds:.0f} s", flush=True)
    return rows, samples


def best(rows: list[Row]) -> Row:
    """The row meeting the target with the lowest FD, else the most accurate one."""
    hits = [r for r in rows if r.meets_target]
    return min(hits, key=lambda r: r.frechet) if hits else max(rows, key=lambda r: (r.accuracy, -r.frechet))


def sweep_table(rows: list[Row], symbol: str) -> str:
    lines = [f"| {symbol} | accuracy | worst class | p>=0.9 | FD | NFE | passes | seconds |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        mark = " (target met)" if r.meets_target else ""
        lines.append(f"| {r.strength:g}{mark} | {100 * r.accuracy:.1f}% | "
                     f"{100 * r.worst:.0f}% | {100 * r.confident:.1f}% | {r.frechet:.3f} | {r.nfe} | "
                     f"{r.passes} | {r.seconds:.0f} |")
    return "\n".join(lines)


def inpaint(pipe: Pipeline, ref: DigitsReference, args: argparse.Namespace) -> tuple[list[tuple[str, float]], Tensor]:
    """Fill the bottom half of every held-out digit; the rates at which the logistic regression
    gives the source digit's label, with the comparisons."""
    x_test, y_test = ref.x_test, ref.y_test
    n = x_test.shape[0]
    mask = top_rows_mask(n)
    guided = with_guidance(pipe, [{"type": "inpaint"}])
    filled, _, _, seconds = draw(args, "inpaint", guided, n, Condition(mask=mask, observed=x_test), args.seed)
    assert bool((filled[mask] == x_test[mask]).all()), "inpainting changed the observed pixels"
    unconditional = draw(args, "unconditional", pipe, n, None, args.seed + 1)[0]
    bottom_mean = ref.x_train[:, :, 4:].mean(0, keepdim=True)
    mean_filled = torch.where(mask, x_test, torch.cat([ref.x_train[:, :, :4].mean(0, keepdim=True), bottom_mean],
                                                      dim=2).expand_as(x_test))
    print(f"  inpaint: {seconds:.0f} s", flush=True)
    rates = [
        (f"inpainted by the unconditional U-Net ({describe_sampler(pipe)})", ref.accuracy(filled, y_test)),
        ("top half kept, bottom half the training digits' mean", ref.accuracy(mean_filled, y_test)),
        ("unconditional samples (paired with the held-out labels)", ref.accuracy(unconditional, y_test)),
        ("the real held-out digits", ref.accuracy(x_test, y_test)),
    ]
    return rates, filled


def figure(path: Path, sweeps: dict[str, tuple[list[Row], dict[float, Tensor], str]], ref: DigitsReference,
           floor: float, inpainted: Tensor | None) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from diffcore.plots import image_grid

    real_accuracy = ref.accuracy(ref.x_test, ref.y_test)
    nrows = len(sweeps) + (inpainted is not None)
    heights = [3.6] * len(sweeps) + ([1.3] if inpainted is not None else [])
    fig = Figure(figsize=(13, sum(heights)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, 3, squeeze=False, gridspec_kw={"height_ratios": heights})

    def show(ax: Any, images: Tensor, nrow: int, title: str) -> None:
        a = ((images.clamp(-1, 1) + 1) / 2).double().numpy()
        ax.imshow(image_grid(a, nrow)[:, :, 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(title, fontsize=9)

    for i, (method, (rows, samples, symbol)) in enumerate(sweeps.items()):
        s = [r.strength for r in rows]
        ax = axes[i][0]
        ax.plot(s, [100 * r.accuracy for r in rows], "o-", label=method)
        ax.axhline(100 * real_accuracy, color="gray", ls=":", lw=1, label=f"real held-out {100 * real_accuracy:.1f}%")
        ax.set_xlabel(symbol)
        ax.set_ylabel("logistic regression gives the label (%)")
        ax.set_title(f"{method}: accuracy")
        ax.legend(fontsize=8)
        ax = axes[i][1]
        ax.plot(s, [r.frechet for r in rows], "o-", color="C1", label=method)
        ax.axhline(floor, color="gray", ls=":", lw=1, label=f"floor (real) {floor:.3f}")
        ax.set_xlabel(symbol)
        ax.set_ylabel("Frechet distance to held-out digits")
        ax.set_title(f"{method}: Frechet distance")
        ax.legend(fontsize=8)
        chosen = best(rows)
        per_class = samples[chosen.strength].reshape(10, -1, 1, 8, 8)[:, :10].reshape(-1, 1, 8, 8)
        show(axes[i][2], per_class, 10, f"{method} at {symbol.split(' ')[0]} = {chosen.strength:g} "
             "(one row per class)")
    if inpainted is not None:
        k = 10
        blanked = torch.where(top_rows_mask(k), ref.x_test[:k], torch.full_like(ref.x_test[:k], -1.0))
        show(axes[-1][0], blanked, k, "held-out digits, top 4 rows observed")
        show(axes[-1][1], inpainted[:k], k, "bottom half inpainted")
        show(axes[-1][2], ref.x_test[:k], k, "the real held-out digits")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    print(f"$ python {shlex.join(['benchmarks/guidance_digits.py', *(sys.argv[1:] if argv is None else argv)])}")
    ref = DigitsReference.load()
    floor = ref.floor(1000)
    real = ref.accuracy(ref.x_test, ref.y_test)
    print(f"threads {torch.get_num_threads()}, seed {args.seed}, {args.per_class} samples per class")
    print(f"real digits: the logistic regression gives the label of {100 * real:.1f}% of the held-out digits "
          f"(worst class {100 * float(ref.class_accuracies(ref.x_test, ref.y_test).min()):.0f}%, p>=0.9 "
          f"{100 * ref.confident(ref.x_test):.1f}%); Frechet floor (1000 training digits vs held-out) {floor:.3f}")
    sweeps: dict[str, tuple[list[Row], dict[float, Tensor], str]] = {}
    report: dict[str, Any] = {"floor": floor, "real_accuracy": real, "args": [str(a) for a in sys.argv[1:]]}
    tables: list[str] = []

    interval = {} if args.interval is None else {"interval": list(args.interval)}
    tag = "" if args.interval is None else f"-interval{args.interval[0]:g}-{args.interval[1]:g}"
    if "cfg" in args.parts:
        pipe = load(args.cfg_run, args)
        print(f"\n== cfg over {args.cfg_run}, {describe_sampler(pipe)}", flush=True)
        rows, samples = sweep("cfg", pipe, args.weights, lambda w: [{"type": "cfg", "scale": w, **interval}], ref,
                              args, tag)
        sweeps["cfg"] = (rows, samples, "w (cfg weight)")
        tables.append(f"cfg, {describe_sampler(pipe)}{describe(interval)}\n\n{sweep_table(rows, 'w')}")
        report["cfg"] = {"sampler": describe_sampler(pipe), "rows": [asdict(r) for r in rows]}

    if "classifier" in args.parts:
        if not (args.classifier_run.is_dir() and args.uncond_run.is_dir()):
            print(f"\n== classifier: skipped, {args.classifier_run} or {args.uncond_run} missing")
        else:
            pipe = load(args.uncond_run, args)
            run = str(args.classifier_run)
            print(f"\n== classifier {run} over {args.uncond_run}, {describe_sampler(pipe)}", flush=True)
            rows, samples = sweep("classifier", pipe, args.scales,
                                  lambda s: [{"type": "classifier", "scale": s, "run": run, **interval}], ref,
                                  args, tag)
            sweeps["classifier"] = (rows, samples, "scale (classifier guidance)")
            tables.append(f"classifier, {describe_sampler(pipe)}{describe(interval)}\n\n{sweep_table(rows, 'scale')}")
            report["classifier"] = {"sampler": describe_sampler(pipe), "rows": [asdict(r) for r in rows]}

    inpainted = None
    if "inpaint" in args.parts:
        pipe = load(args.uncond_run, args, inpaint=True)
        print(f"\n== inpaint over {args.uncond_run}, {describe_sampler(pipe)}", flush=True)
        rates, inpainted = inpaint(pipe, ref, args)
        lines = ["| digits (top 4 rows of the 539 held-out ones) | gives the source label |", "|---|---:|"]
        lines += [f"| {what} | {100 * rate:.1f}% |" for what, rate in rates]
        tables.append("inpainting the bottom half\n\n" + "\n".join(lines))
        report["inpaint"] = dict(rates)

    print(f"\nFrechet floor {floor:.3f}; real held-out accuracy {100 * real:.1f}%\n")
    print("\n\n".join(tables))
    for method, (rows, _, _) in sweeps.items():
        chosen = best(rows)
        verdict = "meets" if chosen.meets_target else "misses"
        print(f"\n{method}: best {chosen.strength:g}: accuracy {100 * chosen.accuracy:.1f}%, FD {chosen.frechet:.3f} "
              f"({verdict} the target >= {100 * ACCURACY_TARGET:.1f}% and <= {FRECHET_TARGET})")
    if sweeps or inpainted is not None:
        png = args.out_dir / "guidance_digits.png"
        figure(png, sweeps, ref, floor, inpainted)
        print(f"\nwrote {png}")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1, default=lambda v: None if isinstance(v, float)
                                        and not math.isfinite(v) else str(v)))
    print(f"\ntotal {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
