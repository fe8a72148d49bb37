"""Checkpoints: safetensors only, every write atomic, never unpickled.

A run directory holds one folder per checkpoint and a ``latest`` pointer::

    run/
      latest                      # text: name of the newest complete checkpoint
      step-00000500/
        model.safetensors         # weights; metadata: the whole spec (JSON), the step
        ema.safetensors           # EMA weights, same metadata
        state.safetensors         # optimiser tensors, batch-generator state; metadata: JSON of the rest

A checkpoint folder is written under a temporary name and renamed when complete, then ``latest`` is
replaced atomically (``os.replace``): a crash at any moment leaves the previous checkpoint and the
pointer to it intact. Loading reads tensors with safetensors and metadata with ``json`` only.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from diffcore.errors import UsageError
from diffcore.utils import atomic_write

FORMAT = "diffcore-checkpoint-1"
LATEST = "latest"


def save_checkpoint(run_dir: Path, step: int, files: dict[str, dict[str, Tensor]], metadata: dict[str, Any]) -> Path:
    """Write ``files`` (``name -> tensors``) as ``<name>.safetensors`` in ``run_dir/step-XXXXXXXX``,
    each with ``metadata`` (JSON-encoded values) plus the format and step; then point ``latest`` at it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"step-{step:08d}"
    tmp = run_dir / f".{final.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    meta = {"format": FORMAT, "step": str(step), **{k: json.dumps(v) for k, v in metadata.items()}}
    for name, tensors in files.items():
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp / f"{name}.safetensors",
                  metadata=meta)
    if final.exists():  # the same step saved again: swap (a crash between the two renames leaves the
        # complete copy under the .old name; Trainer never re-saves a step it saved or loaded)
        old = run_dir / f".{final.name}.{os.getpid()}.old"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    atomic_write(run_dir / LATEST, final.name + "\n")
    return final


def latest_checkpoint(run_dir: Path) -> Path:
    """The newest complete checkpoint of ``run_dir`` (or ``run_dir`` itself if it is one)."""
    if (run_dir / "model.safetensors").exists():
        return run_dir
    pointer = run_dir / LATEST
    if not pointer.exists():
        raise UsageError(f"{run_dir} holds no checkpoint (no {LATEST} file); train with --out {run_dir} first")
    path = run_dir / pointer.read_text().strip()
    if not (path / "model.safetensors").exists():
        raise UsageError(f"{pointer} points at {path.name}, which is missing; the run directory was edited")
    return path


def load_checkpoint(path: Path, names: tuple[str, ...] = ("model", "ema", "state"),
                    ) -> tuple[dict[str, dict[str, Tensor]], dict[str, Any]]:
    """Tensors of each file in ``names`` and the decoded metadata of the checkpoint folder ``path``."""
    files: dict[str, dict[str, Tensor]] = {}
    metadata: dict[str, Any] = {}
    for name in names:
        file = path / f"{name}.safetensors"
        if not file.exists():
            raise UsageError(f"checkpoint {path} lacks {file.name}")
        try:
            files[name] = load_file(file)
            with safe_open(file, "pt") as handle:
                raw = handle.metadata() or {}
        except Exception as exc:  # noqa: BLE001 - any parse failure means a damaged or foreign file
            raise UsageError(f"{file} is not a readable safetensors file ({exc})") from None
        if raw.get("format") != FORMAT:
            raise UsageError(f"{file} is not a diffcore checkpoint (format {raw.get('format')!r})")
        metadata = {k: (int(v) if k == "step" else v if k == "format" else json.loads(v)) for k, v in raw.items()}
    return files, metadata


def spec_or_checkpoint(path: Path) -> tuple[dict[str, Any], Path | None, dict[str, Any]]:
    """What ``diffcore sample`` and ``train --resume`` accept: for a spec file, its mapping, ``None``
    and ``{}``; for a run directory or checkpoint folder, the spec saved in its newest checkpoint, that
    checkpoint's path and its metadata (``scaling``, ``step``, ...)."""
    from diffcore.spec import as_mapping, read_spec

    if not path.is_dir():
        return read_spec(path), None, {}
    checkpoint = latest_checkpoint(path)
    _, meta = load_checkpoint(checkpoint, names=("model",))
    return as_mapping(meta.get("spec"), source=str(checkpoint)), checkpoint, meta


def load_ema_weights(model: nn.Module, checkpoint: Path) -> None:
    """Load the EMA weights of ``checkpoint`` (a checkpoint folder) into ``model``.

    ``ema.safetensors`` holds the state of :class:`~diffcore.training.ema.ExponentialMovingAverage`
    (the layout of ``torch.optim.swa_utils.AveragedModel``): the model's weights under the ``module.``
    prefix, next to ``n_averaged``; only those weights, without the prefix, are loaded.
    """
    files, _ = load_checkpoint(checkpoint, names=("ema",))
    weights = {k.removeprefix("module."): v for k, v in files["ema"].items() if k.startswith("module.")}
    model.load_state_dict(weights)
