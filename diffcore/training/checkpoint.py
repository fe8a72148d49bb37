"""Checkpoints: safetensors only, every write atomic and checksummed, never unpickled.

A run directory holds one folder per checkpoint and a ``latest`` pointer::

    run/
      .lock                       # while a training writes here (see diffcore.training.rundir)
      latest                      # text: the name of the newest complete checkpoint folder
      step-00000500/
        model.safetensors         # weights; metadata: the whole spec (JSON), the step, the data scaling
        ema.safetensors           # EMA weights, same metadata
        state.safetensors         # optimiser tensors, batch-generator and global RNG states; same metadata
        checksums.json            # format, step, and the sha256 and size of each file above

A checkpoint folder is written under a temporary name (every file fsynced, ``checksums.json`` last)
and renamed when complete, then ``latest`` is replaced atomically; the directory is fsynced around
each rename. A crash at any moment leaves the previous checkpoint and the pointer to it intact, and
an interrupted write removes its temporary folder (or, after a SIGKILL, the next training into the
run directory sweeps it). Loading reads each file once with the bounded reader, checks it against
``checksums.json``, parses tensors with safetensors and metadata with ``json`` only, and checks the
metadata fields before anything uses them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor, nn

from diffcore.errors import UsageError
from diffcore.inputs import open_regular, read_bytes
from diffcore.limits import MAX_CHECKPOINT_BYTES, MAX_STEPS
from diffcore.utils import atomic_write, fsync_dir

FORMAT = "diffcore-checkpoint-2"
"""The format of checkpoints written now: version 2 added ``checksums.json`` and the RNG states."""
LATEST = "latest"
MANIFEST = "checksums.json"
STEP_NAME = re.compile(r"step-\d{8}")
"""The name of a checkpoint folder in a run directory (and the only content ``latest`` may hold)."""
_MANIFEST_BYTES = 1 << 16
_LATEST_BYTES = 64
_LISTED = 5  # names shown in a message before "and N more"


def step_name(step: int) -> str:
    """The folder name of the checkpoint of ``step``: ``step-00000500``."""
    return f"step-{step:08d}"


# -- writing ------------------------------------------------------------------------------------


def write_file(path: Path, data: bytes) -> None:
    """Write one file of a checkpoint durably (fsynced); the one place checkpoint bytes are written."""
    atomic_write(path, data)


def save_checkpoint(run_dir: Path, step: int, files: dict[str, dict[str, Tensor]], metadata: dict[str, Any]) -> Path:
    """Write ``files`` (``name -> tensors``) as ``<name>.safetensors`` in ``run_dir/step-XXXXXXXX``,
    each with ``metadata`` (JSON-encoded values; NaN and Inf are refused) plus the format and step,
    and ``checksums.json`` last; then point ``latest`` at it. Call it holding the run directory's
    lock (:func:`diffcore.training.rundir.hold_run_dir`)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / step_name(step)
    tmp = run_dir / f".{final.name}.{os.getpid()}.tmp"
    meta = {"format": FORMAT, "step": str(step), **{k: json.dumps(v, allow_nan=False) for k, v in metadata.items()}}
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        entries = {}
        for name, tensors in files.items():
            data = save_safetensors({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=meta)
            write_file(tmp / f"{name}.safetensors", data)
            entries[f"{name}.safetensors"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        manifest = {"format": FORMAT, "step": step, "files": entries}
        write_file(tmp / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
        fsync_dir(tmp)
        _rename_into_place(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # an interrupted or failed write leaves nothing behind
    atomic_write(run_dir / LATEST, final.name + "\n")
    fsync_dir(run_dir)
    return final


def _rename_into_place(tmp: Path, final: Path) -> None:
    """Rename the complete folder ``tmp`` to ``final``, fsyncing the run directory before and after.

    The same step saved again is swapped: a crash between the two renames leaves the complete copy
    under the ``.old`` name, which the next lock holder moves back
    (:func:`~diffcore.training.rundir.sweep_stale`)."""
    run_dir = final.parent
    fsync_dir(run_dir)
    if final.exists():
        old = run_dir / f".{final.name}.{os.getpid()}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        fsync_dir(run_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_dir(run_dir)


# -- finding checkpoints ------------------------------------------------------------------------


def is_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a checkpoint folder (rather than a run directory)."""
    return path.is_dir() and (os.path.lexists(path / MANIFEST) or os.path.lexists(path / "model.safetensors"))


def run_dir_of(path: Path) -> Path:
    """The run directory of ``path``: its parent for a checkpoint folder, else ``path`` itself."""
    return path.parent if is_checkpoint(path) else path


def holds_checkpoints(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a ``latest`` pointer or a ``step-N`` folder."""
    if not run_dir.is_dir():
        return False
    return os.path.lexists(run_dir / LATEST) or any(STEP_NAME.fullmatch(p.name) for p in run_dir.iterdir())


def latest_checkpoint(run_dir: Path) -> Path:
    """The newest complete checkpoint of ``run_dir`` (or ``run_dir`` itself if it is one).

    ``latest`` must be a regular file (read with a bound; a FIFO or a device is refused, never
    waited on) holding the name of a ``step-XXXXXXXX`` folder of ``run_dir`` itself: a path
    elsewhere, absolute or through ``..``, or a symbolic link is refused."""
    if is_checkpoint(run_dir):
        return run_dir
    pointer = run_dir / LATEST
    if not os.path.lexists(pointer):
        raise UsageError(f"{run_dir} holds no checkpoint (no {LATEST} file); train with --out {run_dir} first, "
                         "or give a checkpoint folder RUN/step-N")
    fix = (f"write the name of one of its checkpoint folders into it, e.g. `ls {run_dir}` then "
           f"`echo step-00000500 > {pointer}`")
    raw = read_bytes(pointer, what="run pointer", limit=_LATEST_BYTES)
    try:
        name = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        name = ""
    if not STEP_NAME.fullmatch(name):
        raise UsageError(f"{pointer} must hold the name of a checkpoint folder of {run_dir} (step- and 8 "
                         f"digits), not {raw[:_LATEST_BYTES].decode('utf-8', 'replace').strip()!r}; {fix}")
    path = run_dir / name
    if path.is_symlink() or not path.is_dir():
        what = "a symbolic link" if path.is_symlink() else "missing"
        raise UsageError(f"{pointer} names {name}, which is {what}; the run directory was edited: {fix}")
    return path


def _other_steps(checkpoint: Path) -> str:
    """`` (its checkpoints: step-..., ...)`` for messages suggesting another checkpoint."""
    run_dir = checkpoint.parent
    try:
        names = sorted(p.name for p in run_dir.iterdir() if STEP_NAME.fullmatch(p.name) and p != checkpoint)
    except OSError:
        return ""
    return f" (its other checkpoints: {_listing(names)})" if names else ""


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


# -- reading and checking -----------------------------------------------------------------------


def read_manifest(path: Path) -> dict[str, Any]:
    """The checked ``checksums.json`` of the checkpoint folder ``path``: format, step and, per file,
    its ``sha256`` and ``bytes``."""
    file = path / MANIFEST
    if not os.path.lexists(file):
        raise UsageError(f"{path} has no {MANIFEST}: it is not a checkpoint of this diffcore (format {FORMAT}), "
                         "or an older one without checksums; train it again with this version")
    try:
        manifest = json.loads(read_bytes(file, what="checkpoint manifest", limit=_MANIFEST_BYTES),
                              parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{file} is not valid JSON ({exc}); the checkpoint is damaged: use another one"
                         f"{_other_steps(path)}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise UsageError(f"{file}: format {found!r}, expected {FORMAT!r}: the checkpoint was written by another "
                         "version of diffcore or another program; train it again with this version")
    entries = manifest.get("files")
    if not isinstance(entries, dict) or not all(_valid_entry(e) for e in entries.values()):
        raise UsageError(f"{file}: `files` must map each file name to its sha256 (64 hex digits) and bytes; "
                         f"the checkpoint is damaged: use another one{_other_steps(path)}")
    return manifest


def _valid_entry(entry: Any) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
            and re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]) is not None
            and type(entry.get("bytes")) is int and entry["bytes"] >= 0)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def read_verified(path: Path, name: str, manifest: dict[str, Any]) -> bytes:
    """The bytes of ``<name>.safetensors`` in the checkpoint folder ``path``, read once with the
    bounded reader and checked against its size and sha256 in the manifest."""
    file = path / f"{name}.safetensors"
    entry = manifest["files"].get(file.name)
    if entry is None:
        raise UsageError(f"{path / MANIFEST} lists no {file.name}: the checkpoint is incomplete; use another "
                         f"one{_other_steps(path)}")
    if not os.path.lexists(file):
        raise UsageError(f"checkpoint {path} lacks {file.name}; use another checkpoint{_other_steps(path)}")
    data = _read_whole(file)
    if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise UsageError(f"{file} is damaged: its {len(data)} bytes do not match the size and sha256 recorded in "
                         f"{MANIFEST} when it was written (a partial copy, bit rot or an edit); resume from an "
                         f"earlier checkpoint with `--resume {path.parent}/step-N`{_other_steps(path)}, or copy "
                         "the folder again from a good copy")
    return data


def _read_whole(file: Path) -> bytes:
    """The bytes of a checkpoint file, opened with the bounded reader (:func:`~diffcore.inputs.open_regular`:
    a regular file of at most :data:`~diffcore.limits.MAX_CHECKPOINT_BYTES`) and read to the size its
    ``stat`` gives (``read_bytes`` would reserve the whole limit, 64 GiB, up front)."""
    with open_regular(file, what="checkpoint file", limit=MAX_CHECKPOINT_BYTES) as handle:
        size = os.fstat(handle.fileno()).st_size
        data = handle.read(size + 1)
    if len(data) != size:
        raise UsageError(f"checkpoint file {file} changed while it was read; is a training writing into its run "
                         "directory? Try again when it is done")
    return data


def _header_metadata(file: Path, data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of safetensors ``data`` (an 8-byte little-endian header size, then the
    JSON header)."""
    size = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    try:
        if not 0 < size <= len(data) - 8:
            raise ValueError("bad header size")
        header = json.loads(data[8:8 + size])
        meta = (header.get("__metadata__") or {}) if isinstance(header, dict) else None
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise ValueError("metadata must map names to strings")
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{file} is not a readable safetensors file ({exc})") from None
    return meta


def decode_metadata(file: Path, raw: Mapping[str, str]) -> dict[str, Any]:
    """Decode and check the metadata of a checkpoint file: ``format`` must be :data:`FORMAT`,
    ``step`` a decimal integer in ``[0, MAX_STEPS]``, every other value JSON (no NaN or Inf), and
    the fields diffcore reads (``spec``, ``train``, ``scaling``, ``losses``, ``skipped``) of the
    right kind. Errors name the file and the field."""
    if raw.get("format") != FORMAT:
        raise UsageError(f"{file} is not a diffcore checkpoint of format {FORMAT!r} (format "
                         f"{raw.get('format')!r}); train it again with this version")
    step = raw.get("step", "")
    if not re.fullmatch(r"\d{1,9}", step) or int(step) > MAX_STEPS:
        raise UsageError(f"{file}: metadata field `step` is {step[:40]!r}, not an integer from 0 to {MAX_STEPS}; "
                         "the file was edited: use another checkpoint")
    meta: dict[str, Any] = {"format": FORMAT, "step": int(step)}
    for key, text in raw.items():
        if key in meta:
            continue
        try:
            meta[key] = json.loads(text, parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:
            raise UsageError(f"{file}: metadata field `{key}` is not valid JSON ({exc}); the file was not written "
                             "by diffcore train, or was edited: use another checkpoint") from None
    for key, check in _FIELD_CHECKS.items():
        if key in meta and (problem := check(meta[key])) is not None:
            raise UsageError(f"{file}: metadata field `{key}` {problem}; the file was not written by diffcore "
                             "train, or was edited: use another checkpoint")
    return meta


def _is_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _check_scaling(value: Any) -> str | None:
    if (isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value)
            and value[1] != 0):
        return None
    return f"must be [shift, mult], two finite numbers with mult not 0, got {json.dumps(value)[:80]}"


_FIELD_CHECKS: dict[str, Any] = {
    "spec": lambda v: None if isinstance(v, dict) else "must be a mapping (the spec of the run)",
    "train": lambda v: None if isinstance(v, dict) else "must be a mapping (the train section)",
    "scaling": _check_scaling,
    "losses": lambda v: None if isinstance(v, list) and all(_is_number(x) for x in v)
    else "must be a list of finite numbers",
    "skipped": lambda v: None if type(v) is int and 0 <= v <= MAX_STEPS else "must be a count of steps",
    "consecutive_skips": lambda v: None if type(v) is int and 0 <= v <= MAX_STEPS else "must be a count of steps",
}


def load_checkpoint(path: Path, names: tuple[str, ...] = ("model", "ema", "state"),
                    ) -> tuple[dict[str, dict[str, Tensor]], dict[str, Any]]:
    """Tensors of each file in ``names`` and the decoded, checked metadata of the checkpoint folder
    ``path`` (each file verified against ``checksums.json``; see :func:`decode_metadata`)."""
    manifest = read_manifest(path)
    files: dict[str, dict[str, Tensor]] = {}
    metadata: dict[str, Any] = {}
    for name in names:
        file = path / f"{name}.safetensors"
        data = read_verified(path, name, manifest)
        metadata = decode_metadata(file, _header_metadata(file, data))
        if metadata["step"] != manifest.get("step"):
            raise UsageError(f"{file} holds step {metadata['step']} but {MANIFEST} says {manifest.get('step')!r}; "
                             f"the checkpoint was assembled from different ones: use another{_other_steps(path)}")
        try:
            files[name] = load_safetensors(data)
        except Exception as exc:  # noqa: BLE001 - any parse failure means a damaged or foreign file
            raise UsageError(f"{file} is not a readable safetensors file ({exc})") from None
    if STEP_NAME.fullmatch(path.name) and metadata and path.name != step_name(metadata["step"]):
        raise UsageError(f"{path} holds step {metadata['step']}, not the step its name says; folders of a run "
                         f"directory were renamed: rename it {step_name(metadata['step'])}")
    return files, metadata


def check_tensors(file: Path, got: Mapping[str, Tensor], expected: Mapping[str, Tensor]) -> None:
    """Refuse tensors ``got`` (read from ``file``) unless they have exactly the keys of ``expected``,
    each with its shape, and hold no NaN or Inf: loading them would otherwise fail with a torch
    traceback, or silently run a model that is not the one the spec builds."""
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    shapes = [f"{k} {list(got[k].shape)} (expected {list(expected[k].shape)})"
              for k in sorted(set(got) & set(expected)) if got[k].shape != expected[k].shape]
    problems = ([f"missing {_listing(missing)}"] if missing else []) + (
        [f"unexpected {_listing(extra)}"] if extra else []) + ([f"wrong shape: {_listing(shapes)}"] if shapes else [])
    if problems:
        raise UsageError(f"{file} does not match the model of its spec ({'; '.join(problems)}): it was written for "
                         "another model or edited; use a checkpoint of this run")
    bad = sorted(k for k, v in got.items() if v.is_floating_point() and not bool(v.isfinite().all()))
    if bad:
        raise UsageError(f"{file} holds NaN or Inf in {_listing(bad)}; use an earlier checkpoint of the run"
                         f"{_other_steps(file.parent)}")


def spec_or_checkpoint(path: Path) -> tuple[dict[str, Any], Path | None, dict[str, Any]]:
    """What ``diffcore sample`` and ``train --resume`` accept: for a spec file, its mapping, ``None``
    and ``{}``; for a run directory or checkpoint folder, the spec saved in its newest checkpoint, that
    checkpoint's path and its checked metadata (``scaling``, ``step``, ...). Errors in the saved spec
    name the checkpoint's ``model.safetensors``."""
    from diffcore.spec import as_mapping, read_spec

    if not path.is_dir():
        return read_spec(path), None, {}
    checkpoint = latest_checkpoint(path)
    _, meta = load_checkpoint(checkpoint, names=("model",))
    return as_mapping(meta.get("spec"), source=saved_spec_source(checkpoint)), checkpoint, meta


def saved_spec_source(checkpoint: Path) -> str:
    """How messages name the spec saved in ``checkpoint``: its ``model.safetensors``."""
    return str(checkpoint / "model.safetensors")


def load_ema_weights(model: nn.Module, checkpoint: Path) -> None:
    """Load the EMA weights of ``checkpoint`` (a checkpoint folder) into ``model``.

    ``ema.safetensors`` holds the state of :class:`~diffcore.training.ema.ExponentialMovingAverage`
    (the layout of ``torch.optim.swa_utils.AveragedModel``): the model's weights under the ``module.``
    prefix, next to ``n_averaged``; only those weights, without the prefix, are loaded, after
    checking the keys and shapes against ``model``.
    """
    files, _ = load_checkpoint(checkpoint, names=("ema",))
    expected = {f"module.{k}": v for k, v in model.state_dict().items()}
    expected["n_averaged"] = torch.zeros((), dtype=torch.long)
    check_tensors(checkpoint / "ema.safetensors", files["ema"], expected)
    weights = {k.removeprefix("module."): v for k, v in files["ema"].items() if k.startswith("module.")}
    model.load_state_dict(weights)
