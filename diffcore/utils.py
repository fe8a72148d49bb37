"""Small helpers shared by core and plugins: per-sample broadcasting, the one atomic file writer and the
one progress bar."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor


def bcast(coef: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample coefficient ``(B,)`` to ``(B, 1, ..., 1)`` so it broadcasts against ``x``
    of shape ``(B, *event)`` whatever the number of event dimensions; cast to ``x``'s dtype."""
    return coef.to(x.dtype).reshape(coef.shape[0], *([1] * (x.ndim - 1)))


def atomic_write(path: str | Path, content: str | bytes | Callable[[IO[bytes]], object]) -> Path:
    """Write ``content`` to ``path`` atomically and durably: a fresh temporary file in the same folder
    (unique per call, so concurrent writers never share one), flushed to disk, then renamed over
    ``path``. A reader sees the old file or the new one, never a partial one; a crash leaves no
    temporary file behind once the ``finally`` runs.

    ``content``: text (UTF-8), bytes, or a function writing to the open binary handle (e.g.
    ``lambda f: figure.savefig(f, format="png")``). Returns ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with tmp.open("xb") as handle:
            if isinstance(content, str):
                handle.write(content.encode())
            elif isinstance(content, bytes):
                handle.write(content)
            else:
                content(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def fsync_dir(path: str | Path) -> None:
    """Flush a directory's entries to disk (after a rename into it), where the OS supports it."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a directory; the rename itself is still atomic
    finally:
        os.close(fd)


def progress_bar(total: int | None, desc: str, unit: str, *, enabled: bool = True, initial: int = 0) -> Any:
    """The one progress bar of the command line: a tqdm bar on stderr, or ``None`` when ``enabled`` is
    false (e.g. not the main process) or stderr is not a terminal, so logs and pipes stay clean.
    ``total`` ``None``: the bar counts without a total (adaptive solvers)."""
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)
