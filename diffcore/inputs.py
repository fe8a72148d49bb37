"""The one boundary for files users hand to diffcore: specs, arrays, checkpoints, run pointers and
output paths.

Every read goes through :func:`read_bytes` or :func:`open_regular`: only regular files are opened
(a FIFO, a device such as ``/dev/zero`` or a directory is refused before a single byte is read, so
nothing hangs or fills memory), and the size is checked against a limit from its ``stat`` before
reading. Every output path goes through :func:`output_file`: it must name a file, and an existing
path that is not a regular file (a device, a FIFO, a directory) or that is a symbolic link is never
replaced. Failures raise the given :class:`~diffcore.errors.DiffcoreError` subclass with a message
naming the file and the fix.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import IO

from diffcore.errors import DiffcoreError, UsageError


def _describe_mode(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | Path, *, what: str, limit: int,
                 error: type[DiffcoreError] = UsageError) -> IO[bytes]:
    """Open ``path`` for reading if it is a regular file of at most ``limit`` bytes.

    ``what`` names the input in messages (``"spec"``, ``"--latents"``). The file is opened without
    blocking (a FIFO cannot stall the open) and checked with ``fstat`` on the open descriptor, so
    what is checked is what is read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise error(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}; check the path") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{what} {str(path)!r} is {_describe_mode(info.st_mode)}, not a regular file; "
                        "give the path of a file")
        if info.st_size > limit:
            raise error(f"{what} {str(path)!r} has {info.st_size} bytes, more than the {limit} allowed; "
                        "check that this is the right file")
        if hasattr(os, "O_NONBLOCK"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str | Path, *, what: str, limit: int, error: type[DiffcoreError] = UsageError) -> bytes:
    """The content of the regular file ``path`` (at most ``limit`` bytes; see :func:`open_regular`)."""
    with open_regular(path, what=what, limit=limit, error=error) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:  # the file grew while being read
        raise error(f"{what} {str(path)!r} has more than the {limit} bytes allowed")
    return data


def output_file(path: str | Path, *, what: str = "--out") -> Path:
    """Check that ``path`` can be written as a file: it names a file (not ``''``, ``.`` or a folder),
    its folder exists, and if it exists it is a regular file and not a symbolic link (which would be
    followed somewhere else). Returns it as a :class:`~pathlib.Path`."""
    text = str(path)
    if not text.strip() or Path(text).name in ("", ".", ".."):
        raise UsageError(f"{what} {text!r} does not name a file; give a file name such as samples.npy")
    out = Path(text)
    if out.is_symlink():
        raise UsageError(f"{what} {text!r} is a symbolic link (to {os.readlink(out)!r}); it is not followed: "
                         "give the target path itself, or remove the link")
    if out.exists():
        mode = out.stat().st_mode
        if not stat.S_ISREG(mode):
            fix = "name a file inside it" if stat.S_ISDIR(mode) else "choose a regular file"
            raise UsageError(f"{what} {text!r} is {_describe_mode(mode)}, which is never replaced; {fix}")
    elif not out.parent.is_dir():
        raise UsageError(f"{what} {text!r}: the folder {str(out.parent)!r} does not exist; create it first")
    return out
