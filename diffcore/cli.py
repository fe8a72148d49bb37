"""The ``diffcore`` command line.

Bad input (a spec error, an unknown component, a wrong latents file...) exits with status 2 and one
paragraph on stderr naming the field and the fix, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from diffcore.errors import DiffcoreError, UsageError

EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        result: int = args.func(args)
        return result
    except DiffcoreError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
    except KeyboardInterrupt:
        _fail("interrupted")
    return EXIT_USAGE


def _fail(message: str) -> None:
    print(f"diffcore: error: {' '.join(message.split())}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    from diffcore import __version__

    parser = argparse.ArgumentParser(
        prog="diffcore", description="Score-based generative models from declarative specs: list plugins and "
        "components, export the spec schema, validate specs and draw samples.")
    parser.add_argument("--version", action="version", version=f"diffcore {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("plugins", help="installed plugins, their components and load errors")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("list", help="registered components with capabilities and parameter defaults")
    p.add_argument("kind", nargs="?", help="process, model, objective, sampler or guidance")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("schema", help="JSON Schema of the pipeline spec (for editors and validators)")
    p.add_argument("--out", type=Path, help="write to this file instead of stdout")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("validate", help="check a spec and that its components fit together")
    p.add_argument("spec", type=Path)
    _add_set(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("train", help="train the spec's model on its data with its objective")
    p.add_argument("spec", type=Path)
    p.add_argument("--out", type=Path, help="run directory for checkpoints (default: runs/<spec name>)")
    p.add_argument("--resume", type=Path, help="resume from this run directory (or checkpoint)")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default: steps / 10)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-preview", action="store_true",
                   help="skip the sample image and loss curve written at each checkpoint")
    _add_set(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="draw samples from a spec or a trained checkpoint into a .npy file")
    p.add_argument("spec", type=Path, help="a spec file, or a run directory / checkpoint of `diffcore train`")
    p.add_argument("--num", "--num-samples", dest="num", type=int, required=True,
                   help="number of samples (spell it --num-samples after torchrun, whose own --numa-binding "
                   "option makes --num ambiguous)")
    p.add_argument("--seed", type=int, default=0, help="seed; sample i depends only on (seed, i)")
    p.add_argument("--out", type=Path, required=True, help="output .npy file, shape (num, *shape)")
    p.add_argument("--sampler", help="replace the spec's sampler by this registered one (its defaults)")
    p.add_argument("--steps", type=int, help="set sampler.steps")
    p.add_argument("--latents", type=Path, help=".npy of shape (num, *shape): start states at time T")
    p.add_argument("--batch-size", type=int, help="samples per chunk (bounds memory; default: all)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--model-range", action="store_true",
                   help="keep the model's scaled values (default: map back to the data's raw range when the "
                   "spec has a data section)")
    p.add_argument("--json", action="store_true", help="print a JSON summary (NFE, seconds, ...)")
    _add_set(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("demo", help="train a small model on a 2-D set, sample it with two samplers, write "
                       "PNGs and a report")
    from diffcore import demo

    demo.add_arguments(p)
    p.set_defaults(func=demo.run)
    return parser


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="override a spec value, e.g. --set sampler.steps=500 (repeatable)")


# ---------------------------------------------------------------------------------------------


def cmd_plugins(args: argparse.Namespace) -> int:
    from diffcore.registry import get_registry

    registry = get_registry()
    rows: list[dict[str, Any]] = [
        {"name": info.name, "distribution": info.distribution, "version": info.version,
         "components": [f"{k}:{n}" for k, n in info.components], "errors": info.errors}
        for info in registry.plugins.values()
    ]
    if args.json:
        print(json.dumps({"plugins": rows, "errors": registry.errors()}, indent=2))
        return 0
    for row in rows:
        dist = f" ({row['distribution']} {row['version']})" if row["distribution"] else ""
        print(f"{row['name']}{dist}: {', '.join(row['components']) or 'no components'}")
    if registry.errors():
        print("\nload errors:")
        for err in registry.errors():
            print(f"  - {err}")
    return 0


def describe_components(kind: str | None) -> list[dict[str, Any]]:
    """Rows for ``diffcore list``: name, kind, plugin, capabilities, requirements, parameters."""
    from pydantic_core import PydanticUndefined

    from diffcore.messages import unknown_name_message
    from diffcore.registry import KINDS, get_registry

    registry = get_registry()
    if kind is not None and kind not in KINDS:
        raise UsageError(unknown_name_message("kind", kind, list(KINDS)))
    rows = []
    for entry in registry:
        if kind is not None and entry.kind != kind:
            continue
        params = {}
        for fname, info in entry.cls.Params.model_fields.items():
            default = None if info.default is PydanticUndefined else info.default
            params[fname] = {"default": default, "required": info.is_required(),
                             "type": _annotation_name(info.annotation), "description": info.description}
        rows.append({
            "kind": entry.kind, "name": entry.name, "plugin": entry.plugin,
            "class": f"{entry.cls.__module__}.{entry.cls.__qualname__}",
            "summary": " ".join((entry.cls.__doc__ or "").strip().split("\n\n")[0].split()),
            "capabilities": sorted(entry.cls.capabilities()), "requires": sorted(entry.cls.requires),
            "params": params,
        })
    return rows


def _annotation_name(annotation: Any) -> str:
    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(annotation))
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def cmd_list(args: argparse.Namespace) -> int:
    rows = describe_components(args.kind)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    for row in rows:
        caps = f" [capabilities: {', '.join(row['capabilities'])}]" if row["capabilities"] else ""
        reqs = f" [requires: {', '.join(row['requires'])}]" if row["requires"] else ""
        print(f"{row['kind']} {row['name']} (plugin {row['plugin']}){caps}{reqs}: {row['summary']}")
        for pname, p in row["params"].items():
            default = "required" if p["required"] else f"default {p['default']!r}"
            print(f"    {pname}: {p['type']}, {default}" + (f" - {p['description']}" if p["description"] else ""))
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from diffcore.spec import json_schema
    from diffcore.utils import atomic_write

    text = json.dumps(json_schema(), indent=2)
    if args.out:
        atomic_write(args.out, text + "\n")
    else:
        print(text)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from diffcore.pipeline import Pipeline

    pipe = Pipeline.from_spec(args.spec, args.overrides)
    print(f"{args.spec}: ok (process {pipe.process.name}, model {pipe.model.name}, sampler "
          f"{pipe.sampler.name}, shape {list(pipe.shape)})")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from diffcore.distributed import process_group

    if args.num < 1:
        raise UsageError(f"--num must be positive, got {args.num}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size must be positive, got {args.batch_size}")
    if not 0 <= args.seed < 2**64:
        raise UsageError(f"--seed must be in [0, 2**64), got {args.seed}")
    with process_group(_device(args.device)) as world:
        return _sample(args, world)


def _sample(args: argparse.Namespace, world: Any) -> int:
    import numpy as np

    from diffcore.pipeline import Pipeline
    from diffcore.spec import apply_overrides, validate_spec

    data, checkpoint, meta = _spec_or_checkpoint(args.spec)
    if args.sampler is not None:
        data["sampler"] = {"type": args.sampler}
    if args.steps is not None:
        if not isinstance(data.get("sampler"), dict):
            raise UsageError("--steps needs a sampler mapping in the spec")
        data["sampler"]["steps"] = args.steps
    spec = validate_spec(apply_overrides(data, args.overrides), source=str(args.spec))
    pipe = Pipeline.from_spec(spec)
    if checkpoint is not None:
        _load_ema_weights(pipe.model, checkpoint)
    scaling = None if args.model_range else _data_scaling(spec, meta)
    latents = _load_latents(args.latents) if args.latents is not None else None

    out: Path = args.out
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    start = time.perf_counter()
    nfes: list[int] = []
    try:
        array = None
        if world.is_main:
            try:
                array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(args.num, *pipe.shape))
            except OSError as exc:
                raise UsageError(f"cannot write --out {out}: {exc.strerror or exc}; check that its folder "
                                 "exists and is writable") from None
        for lo, x, nfe in _sample_chunks(pipe, args, latents, world):
            if array is not None:
                if scaling is not None:
                    x = x / scaling[1] + scaling[0]
                array[lo:lo + x.shape[0]] = x.numpy()
                nfes.append(nfe)
        if array is None:
            return 0
        array.flush()
        del array
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    summary = {
        "out": str(out), "num": args.num, "shape": list(pipe.shape), "seed": args.seed,
        "process": pipe.process.name, "model": pipe.model.name, "sampler": pipe.sampler.name,
        "nfe": max(nfes), "nfe_total": sum(nfes), "chunks": len(nfes),
        "batch_size": args.batch_size or -(-args.num // world.size), "device": str(world.device),
        "processes": world.size, "range": "model" if scaling is None else "raw",
        "seconds": round(seconds, 4), "samples_per_second": round(args.num / seconds, 2),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"wrote {args.num} samples of shape {tuple(pipe.shape)} to {out} (sampler "
              f"{pipe.sampler.name}, NFE {max(nfes)}, {seconds:.2f} s on {world.size} x {world.device})")
    return 0


def _sample_chunks(pipe: Any, args: argparse.Namespace, latents: Any, world: Any) -> Any:
    """Yield ``(first index, samples on CPU, NFE)`` per chunk, on the main process.

    In a ``torchrun`` group chunk ``c`` (of ``--batch-size``, default an equal share per rank) is drawn
    by rank ``c mod N`` and sent to rank 0; each chunk is computed exactly as a single process with
    the same ``--batch-size`` computes it.
    """
    import torch
    import torch.distributed as dist

    num = args.num
    batch = args.batch_size or -(-num // world.size)
    for c, lo in enumerate(range(0, num, batch)):
        hi, owner = min(num, lo + batch), c % world.size
        if owner == world.rank:
            _, result = next(pipe.iter_samples(hi - lo, seed=args.seed, start=lo, device=world.device,
                                               latents=latents[lo:hi] if latents is not None else None))
            x, nfe = result.x.detach(), result.nfe
            if not world.is_main:
                dist.send(x.contiguous(), dst=0)
                dist.send(torch.tensor([nfe], device=x.device), dst=0)
                continue
        elif world.is_main:
            x = torch.empty((hi - lo, *pipe.shape), device=world.device)
            count = torch.zeros(1, dtype=torch.int64, device=world.device)
            dist.recv(x, src=owner)
            dist.recv(count, src=owner)
            nfe = int(count)
        else:
            continue
        yield lo, x.cpu(), nfe


def _data_scaling(spec: Any, meta: dict[str, Any]) -> tuple[float, float] | None:
    """``(shift, mult)`` of the spec's data (raw = value / mult + shift): saved in a checkpoint, or
    computed from the data set for a spec file; ``None`` without a data section."""
    if "scaling" in meta:
        shift, mult = meta["scaling"]
        return float(shift), float(mult)
    if getattr(spec, "data", None) is None:
        return None
    from diffcore.registry import get_registry

    data_type, data_params = spec.component("data")
    dataset = get_registry().build("dataset", data_type, **data_params)
    shift, mult = dataset.scaling  # type: ignore[attr-defined]
    return float(shift), float(mult)


def _device(name: str | None) -> Any:
    import torch

    from diffcore.pipeline import default_device

    device = torch.device(name) if name else default_device()
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but CUDA is not available here; use --device cpu")
    return device


def _spec_or_checkpoint(path: Path) -> tuple[dict[str, Any], Path | None, dict[str, Any]]:
    """The spec mapping of a spec file, or of a checkpoint with the checkpoint path and its metadata."""
    from diffcore.spec import as_mapping, read_spec
    from diffcore.training.checkpoint import latest_checkpoint, load_checkpoint

    if not path.is_dir():
        return read_spec(path), None, {}
    checkpoint = latest_checkpoint(path)
    _, meta = load_checkpoint(checkpoint, names=("model",))
    return as_mapping(meta.get("spec"), source=str(checkpoint)), checkpoint, meta


def _load_ema_weights(model: Any, checkpoint: Path) -> None:
    from diffcore.training.checkpoint import load_checkpoint

    files, _ = load_checkpoint(checkpoint, names=("ema",))
    weights = {k.removeprefix("module."): v for k, v in files["ema"].items() if k.startswith("module.")}
    model.load_state_dict(weights)


def cmd_train(args: argparse.Namespace) -> int:
    from diffcore.distributed import process_group

    if args.resume is not None and args.overrides:
        raise UsageError("--set cannot change the spec of a resumed run: it continues with the spec saved in "
                         f"{args.resume}; start a new run with --out to train with other settings")
    if args.checkpoint_every is not None and args.checkpoint_every < 1:
        raise UsageError(f"--checkpoint-every must be positive, got {args.checkpoint_every}")
    with process_group(_device(args.device)) as world:
        return _train(args, world)


def _train(args: argparse.Namespace, world: Any) -> int:
    import torch
    from tqdm import tqdm

    from diffcore.pipeline import Pipeline
    from diffcore.registry import get_registry
    from diffcore.spec import apply_overrides, validate_spec
    from diffcore.training import Trainer

    data, _, _ = _spec_or_checkpoint(args.resume or args.spec)
    spec = validate_spec(apply_overrides(data, args.overrides), source=str(args.spec))
    for field in ("objective", "data", "train"):
        if getattr(spec, field) is None:
            raise UsageError(f"{args.spec}: training needs `{field}` in the spec; see `diffcore list` "
                             "for objectives and datasets, and docs/user-guide.md for `train`")
    registry = get_registry()
    torch.manual_seed(spec.train.seed)  # type: ignore[attr-defined]  # the model's initial weights
    pipe = Pipeline.from_spec(spec, registry=registry)
    obj_type, obj_params = spec.component("objective")
    data_type, data_params = spec.component("data")
    dataset = registry.build("dataset", data_type, **data_params)
    x, labels = dataset.split("train")  # type: ignore[attr-defined]
    use_labels = labels is not None and pipe.model.conditional
    device = world.device
    trainer = Trainer(pipe.model.to(device), registry.build("objective", obj_type, **obj_params),  # type: ignore[arg-type]
                      pipe.process, x.to(device), spec.train,  # type: ignore[attr-defined]
                      labels=labels.to(device) if use_labels and labels is not None else None,
                      spec=spec.model_dump(mode="json"), world=world,
                      metadata={"scaling": list(dataset.scaling)},  # type: ignore[attr-defined]
                      transform=lambda batch, noise: dataset.dequantize(  # type: ignore[attr-defined]
                          batch, noise.uniform(tuple(batch.shape[1:]), step=0, stream="dequantize",
                                               dtype=batch.dtype)))
    if args.resume is not None:
        trainer.load(args.resume)
    out = args.out or args.resume or Path("runs") / args.spec.stem
    steps = spec.train.steps  # type: ignore[attr-defined]
    bar = tqdm(total=steps, initial=trainer.step, desc="train", unit="step", dynamic_ncols=True,
               disable=None if world.is_main else True)

    def on_step(step: int, loss: float) -> None:
        bar.update(1)
        if step % 10 == 0 or step == steps:
            window = trainer.losses[-50:]
            bar.set_postfix(loss=f"{sum(window) / len(window):.4g}")

    on_save = None if args.no_preview else _previewer(trainer, pipe, dataset, out)
    start = time.perf_counter()
    try:
        trainer.run(on_step=on_step, run_dir=out, checkpoint_every=args.checkpoint_every or max(1, steps // 10),
                    on_save=on_save)
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    tail = trainer.losses[-min(100, len(trainer.losses)):]
    if world.is_main:
        print(json.dumps({"out": str(out), "steps": trainer.step, "seconds": round(seconds, 3),
                          "first_loss": trainer.losses[0] if trainer.losses else None,
                          "final_loss": sum(tail) / max(1, len(tail)), "device": str(device),
                          "processes": world.size}))
    return 0


def _previewer(trainer: Any, pipe: Any, dataset: Any, out: Path) -> Any:
    """``on_save(step)``: the loss curve and a picture of EMA samples (2-D scatter against the data, or
    an image grid), written into the run directory; a failure is reported, never fatal."""
    from diffcore.pipeline import Pipeline
    from diffcore.plots import save_loss_curve, save_samples

    num = 1000 if len(pipe.shape) == 1 else 64
    reference = dataset.to_raw(trainer.data[:num].cpu())

    def on_save(step: int) -> None:
        try:
            (out / "samples").mkdir(parents=True, exist_ok=True)
            save_loss_curve(trainer.losses, out / "loss.png")
            preview = Pipeline(pipe.process, trainer.ema_model(), pipe.sampler, (), pipe.shape)
            x = preview.sample(num, seed=trainer.config.seed, device=trainer.world.device).x.cpu()
            save_samples(dataset.to_raw(x), out / "samples" / f"step-{step:08d}.png", reference=reference,
                         title=f"EMA samples at step {step}")
        except (DiffcoreError, OSError, ValueError) as exc:
            print(f"diffcore: warning: no preview at step {step}: {exc}", file=sys.stderr)

    return on_save


def _load_latents(path: Path) -> Any:
    import numpy as np
    import torch

    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UsageError(f"--latents {path}: not a readable .npy array of numbers ({exc}); "
                         "save it with numpy.save from a float array") from None
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.floating):
        raise UsageError(f"--latents {path}: expected a float array, got {getattr(array, 'dtype', type(array))}")
    if not np.isfinite(array).all():
        raise UsageError(f"--latents {path}: contains NaN or Inf")
    return torch.from_numpy(np.ascontiguousarray(array))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
