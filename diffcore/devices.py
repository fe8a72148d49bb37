"""The device a command runs on: ``--device`` as a :class:`torch.device`, checked."""

from __future__ import annotations

import torch

from diffcore.errors import UsageError


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """``name`` as a device (default: CUDA when available, else CPU).

    Raises :class:`~diffcore.errors.UsageError` for a name torch does not know and for CUDA where
    there is none; every command's ``--device`` goes through here.
    """
    if isinstance(name, torch.device):
        device = name
    elif name:
        try:
            device = torch.device(name)
        except RuntimeError as exc:
            raise UsageError(f"--device {name!r} is not a device ({exc}); use cpu or cuda") from None
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but CUDA is not available here; use --device cpu")
    return device
