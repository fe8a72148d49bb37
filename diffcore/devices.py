"""The device a command runs on: ``--device`` as a :class:`torch.device`, checked."""

from __future__ import annotations

import torch

from diffcore.errors import UsageError

SUPPORTED = ("cpu", "cuda", "mps")
"""Device types a command runs on (``cuda:1`` picks a GPU)."""


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """``name`` as a device (default: CUDA when available, else CPU).

    Raises :class:`~diffcore.errors.UsageError` for a name torch does not know, a type diffcore
    does not run on (``meta``, ``xla``...) and a device this machine lacks; every command's
    ``--device`` goes through here.
    """
    if isinstance(name, torch.device):
        device = name
    elif name:
        try:
            device = torch.device(name)
        except RuntimeError:
            raise UsageError(f"--device {name!r} is not a device; use one of {', '.join(SUPPORTED)}, e.g. "
                             "--device cuda:0") from None
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type not in SUPPORTED:
        raise UsageError(f"--device {str(device)!r} is not supported; use one of {', '.join(SUPPORTED)}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda was asked for but CUDA is not available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {device} does not exist: this machine has {torch.cuda.device_count()} "
                             "CUDA device(s), numbered from 0")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps was asked for but Apple's MPS is not available here; use --device cpu")
    return device
