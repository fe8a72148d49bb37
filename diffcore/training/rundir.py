"""One writer per run directory, and failures that every ``torchrun`` rank hears about.

:func:`hold_run_dir` takes an exclusive lock on ``RUN/.lock`` (``flock``, so the operating system
releases it when the process dies: a lock is never stale) for as long as a training writes into
``RUN``; a second training into the same directory is refused with a message naming the holder.
Holding the lock means nobody else is writing, so stale temporary folders of interrupted writes are
swept when it is taken (:func:`sweep_stale`).

Under ``torchrun`` only rank 0 locks and writes, through :func:`~diffcore.distributed.on_main_rank`:
a failure there makes every rank raise a :class:`~diffcore.errors.DiffcoreError` instead of leaving
the others waiting in a collective.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from diffcore.distributed import World, on_main_rank
from diffcore.errors import UsageError

LOCK = ".lock"
_STALE_FOLDER = re.compile(r"\.(step-\d{8})\.\d+\.(tmp|old)")
_STALE_FILE = re.compile(r"\..+\.\d+\.[0-9a-f]{12}\.tmp")  # diffcore.utils.atomic_write's temporaries
_HOLDER_BYTES = 1 << 16

# -- the lock -----------------------------------------------------------------------------------


@dataclass
class RunLock:
    """An exclusive ``flock`` on ``RUN/.lock``, taken by :meth:`acquire`, given back by
    :meth:`release`. The file holds JSON naming the holder (pid, host, command line, start time)."""

    path: Path
    fd: int

    @classmethod
    def acquire(cls, run_dir: Path) -> RunLock:
        """Create ``run_dir`` if needed and lock it, or raise :class:`~diffcore.errors.UsageError`
        naming the training that holds it."""
        import fcntl

        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LOCK
        while True:
            fd = _open_lock_file(path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe_holder(fd)
                os.close(fd)
                raise UsageError(f"run directory {run_dir} is in use by another training ({holder}; lock file "
                                 f"{path}); wait for it to finish, or give another --out") from None
            except OSError as exc:
                os.close(fd)
                raise UsageError(f"cannot lock {path}: {exc.strerror or exc}; the file system of {run_dir} does "
                                 "not support locks (flock): give an --out on a local disk") from None
            if _still_named(fd, path):  # not unlinked by a holder that released it meanwhile
                break
            os.close(fd)
        lock = cls(path, fd)
        lock._write_holder()
        return lock

    def _write_holder(self) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": sys.argv,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        data = json.dumps(info).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def release(self) -> None:
        """Remove the lock file, then unlock (in that order: a process that opened the old file
        and then gets the lock sees that the name is gone and tries again)."""
        try:
            if _still_named(self.fd, self.path):
                self.path.unlink()
        finally:
            os.close(self.fd)


def _open_lock_file(path: Path) -> int:
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_NONBLOCK", 0), 0o644)
    except OSError as exc:
        raise UsageError(f"cannot open the lock file {path}: {exc.strerror or exc}; it must be a regular file "
                         "(not a link) in a writable run directory") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UsageError(f"the lock file {path} is not a regular file; remove it")
    return fd


def _still_named(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        named = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _describe_holder(fd: int) -> str:
    """``pid 123 on host h, started ..., command ...`` from the lock file, read with a bound."""
    try:
        info = json.loads(os.pread(fd, _HOLDER_BYTES, 0))
        command = " ".join(str(part) for part in info["command"])
        return (f"pid {int(info['pid'])} on host {info['host']}, started {info['started']}, "
                f"command: {command[:300]}")
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its name yet"


_HELD: dict[str, list[int]] = {}  # run directory -> [depth]; per process, on every rank


@contextmanager
def hold_run_dir(run_dir: Path, world: World) -> Iterator[None]:
    """Hold the lock of ``run_dir`` (rank 0 takes it, every rank agrees) for the ``with`` block.

    Re-entrant within a process (``run_training`` holds it around ``Trainer.run``, which holds it
    around each save): the inner holds do nothing. On first acquisition, stale temporary folders
    are swept (:func:`sweep_stale`). Every rank must enter and leave together.
    """
    key = os.path.realpath(run_dir)
    if key in _HELD:
        _HELD[key][0] += 1
        try:
            yield
        finally:
            _HELD[key][0] -= 1
        return

    def take() -> RunLock:
        lock = RunLock.acquire(run_dir)
        try:
            sweep_stale(run_dir)
        except BaseException:
            lock.release()
            raise
        return lock

    lock = on_main_rank(world, take, f"locking the run directory {run_dir}")
    _HELD[key] = [1]
    try:
        yield
    finally:
        del _HELD[key]
        if lock is not None:
            lock.release()


def sweep_stale(run_dir: Path) -> list[str]:
    """Remove what interrupted writes left in ``run_dir`` (call it holding the lock): temporary
    checkpoint folders ``.step-N.PID.tmp`` and ``latest`` files ``.latest.PID.X.tmp``, and
    ``.step-N.PID.old`` copies of a replaced checkpoint, except that an ``.old`` copy whose
    ``step-N`` is missing (a crash between the two renames of a re-save) is complete and is moved
    back. Returns the names handled."""
    handled = []
    for entry in sorted(run_dir.iterdir()):
        folder = _STALE_FOLDER.fullmatch(entry.name)
        if folder is not None and entry.is_dir() and not entry.is_symlink():
            final = run_dir / folder.group(1)
            if folder.group(2) == "old" and not os.path.lexists(final):
                os.replace(entry, final)
            else:
                shutil.rmtree(entry, ignore_errors=True)
        elif _STALE_FILE.fullmatch(entry.name) and not entry.is_dir():
            entry.unlink(missing_ok=True)
        else:
            continue
        handled.append(entry.name)
    return handled
