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
    _add_set(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="draw samples from a spec or a trained checkpoint into a .npy file")
    p.add_argument("spec", type=Path, help="a spec file, or a run directory / checkpoint of `diffcore train`")
    p.add_argument("--num", type=int, required=True, help="number of samples")
    p.add_argument("--seed", type=int, default=0, help="seed; sample i depends only on (seed, i)")
    p.add_argument("--out", type=Path, required=True, help="output .npy file, shape (num, *shape)")
    p.add_argument("--sampler", help="replace the spec's sampler by this registered one (its defaults)")
    p.add_argument("--steps", type=int, help="set sampler.steps")
    p.add_argument("--latents", type=Path, help=".npy of shape (num, *shape): start states at time T")
    p.add_argument("--batch-size", type=int, help="samples per chunk (bounds memory; default: all)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
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

    from diffcore.registry import KINDS, get_registry, unknown_name_message

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

    text = json.dumps(json_schema(), indent=2)
    if args.out:
        _atomic_write_text(args.out, text + "\n")
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
    import numpy as np

    from diffcore.pipeline import Pipeline
    from diffcore.spec import apply_overrides, validate_spec

    if args.num < 1:
        raise UsageError(f"--num must be positive, got {args.num}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size must be positive, got {args.batch_size}")
    if not 0 <= args.seed < 2**64:
        raise UsageError(f"--seed must be in [0, 2**64), got {args.seed}")
    device = _device(args.device)

    data, checkpoint = _spec_or_checkpoint(args.spec)
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

    latents = None
    if args.latents is not None:
        latents = _load_latents(args.latents)

    out: Path = args.out
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    start = time.perf_counter()
    nfes: list[int] = []
    try:
        try:
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(args.num, *pipe.shape))
        except OSError as exc:
            raise UsageError(f"cannot write --out {out}: {exc.strerror or exc}; check that its folder "
                             "exists and is writable") from None
        for lo, result in pipe.iter_samples(args.num, seed=args.seed, batch_size=args.batch_size,
                                            latents=latents, device=device):
            array[lo:lo + result.x.shape[0]] = result.x.detach().cpu().numpy()
            nfes.append(result.nfe)
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
        "batch_size": args.batch_size or args.num, "device": str(device),
        "seconds": round(seconds, 4), "samples_per_second": round(args.num / seconds, 2),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"wrote {args.num} samples of shape {tuple(pipe.shape)} to {out} (sampler "
              f"{pipe.sampler.name}, NFE {max(nfes)}, {seconds:.2f} s on {device})")
    return 0


def _device(name: str | None) -> Any:
    import torch

    from diffcore.pipeline import default_device

    device = torch.device(name) if name else default_device()
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but CUDA is not available here; use --device cpu")
    return device


def _spec_or_checkpoint(path: Path) -> tuple[dict[str, Any], Path | None]:
    """The spec mapping of a spec file, or of a checkpoint (its metadata) and the checkpoint path."""
    from diffcore.spec import as_mapping, read_spec
    from diffcore.training.checkpoint import latest_checkpoint, load_checkpoint

    if not path.is_dir():
        return read_spec(path), None
    checkpoint = latest_checkpoint(path)
    _, meta = load_checkpoint(checkpoint, names=("model",))
    return as_mapping(meta.get("spec"), source=str(checkpoint)), checkpoint


def _load_ema_weights(model: Any, checkpoint: Path) -> None:
    from diffcore.training.checkpoint import load_checkpoint

    files, _ = load_checkpoint(checkpoint, names=("ema",))
    weights = {k.removeprefix("module."): v for k, v in files["ema"].items() if k.startswith("module.")}
    model.load_state_dict(weights)


def cmd_train(args: argparse.Namespace) -> int:
    from diffcore.pipeline import Pipeline
    from diffcore.registry import get_registry
    from diffcore.spec import apply_overrides, validate_spec
    from diffcore.training import Trainer

    device = _device(args.device)
    if args.resume is not None and args.overrides:
        raise UsageError("--set cannot change the spec of a resumed run: it continues with the spec saved in "
                         f"{args.resume}; start a new run with --out to train with other settings")
    data, _ = _spec_or_checkpoint(args.resume or args.spec)
    data = apply_overrides(data, args.overrides)
    spec = validate_spec(data, source=str(args.spec))
    for field in ("objective", "data", "train"):
        if getattr(spec, field) is None:
            raise UsageError(f"{args.spec}: training needs `{field}` in the spec; see `diffcore list` "
                             "for objectives and datasets, and docs/user-guide.md for `train`")
    if args.checkpoint_every is not None and args.checkpoint_every < 1:
        raise UsageError(f"--checkpoint-every must be positive, got {args.checkpoint_every}")
    registry = get_registry()
    pipe = Pipeline.from_spec(spec, registry=registry)
    obj_type, obj_params = spec.component("objective")
    data_type, data_params = spec.component("data")
    dataset = registry.build("dataset", data_type, **data_params)
    x, labels = dataset.split("train")  # type: ignore[attr-defined]
    use_labels = labels is not None and getattr(pipe.model, "null_label", None) is not None
    trainer = Trainer(pipe.model.to(device), registry.build("objective", obj_type, **obj_params),  # type: ignore[arg-type]
                      pipe.process, x.to(device), spec.train,  # type: ignore[attr-defined]
                      labels=labels.to(device) if use_labels and labels is not None else None,
                      spec=spec.model_dump(mode="json"),
                      transform=lambda batch, noise: dataset.dequantize(  # type: ignore[attr-defined]
                          batch, noise.uniform(tuple(batch.shape[1:]), step=0, stream="dequantize",
                                               dtype=batch.dtype)))
    if args.resume is not None:
        trainer.load(args.resume)
    out = args.out or args.resume or Path("runs") / args.spec.stem
    steps = spec.train.steps  # type: ignore[attr-defined]
    start = time.perf_counter()
    trainer.run(run_dir=out, checkpoint_every=args.checkpoint_every or max(1, steps // 10))
    seconds = time.perf_counter() - start
    tail = trainer.losses[-min(100, len(trainer.losses)):]
    print(json.dumps({"out": str(out), "steps": trainer.step, "seconds": round(seconds, 3),
                      "first_loss": trainer.losses[0] if trainer.losses else None,
                      "final_loss": sum(tail) / max(1, len(tail)), "device": str(device)}))
    return 0


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


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
