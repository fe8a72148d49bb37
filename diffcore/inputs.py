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

import math
import os
import stat
import zipfile
from pathlib import Path
from typing import IO

import numpy as np

from diffcore.errors import DiffcoreError, UsageError
from diffcore.limits import MAX_ARRAY_BYTES


def _describe_mode(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"


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
        data = handle.read(os.fstat(handle.fileno()).st_size + 1)
    if len(data) > limit:  # the file grew between the check and the read
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


_NPY_MAGIC = b"\x93NUMPY"


def load_npy(path: str | Path, *, what: str, limit: int = MAX_ARRAY_BYTES, kinds: str = "f") -> np.ndarray:
    """A ``.npy`` array of plain numbers, never unpickled, checked before its data is read (see
    :func:`read_npy`)."""
    with open_regular(path, what=what, limit=limit) as handle:
        return read_npy(handle, os.fstat(handle.fileno()).st_size, what=f"{what} {str(path)!r}", kinds=kinds)


def load_npz(path: str | Path, keys: list[str], *, what: str, limit: int = MAX_ARRAY_BYTES,
             kinds: str = "biuf") -> list[np.ndarray]:
    """The arrays ``keys`` of a ``.npz`` archive, each read like a ``.npy`` file (:func:`read_npy`,
    against the member's stated size), so neither a pickle nor a header claiming terabytes is ever
    loaded. A missing key is refused with the keys present."""
    with open_regular(path, what=what, limit=limit) as handle:
        try:
            archive = zipfile.ZipFile(handle)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise UsageError(f"{what} {str(path)!r} is not a .npz archive ({exc}); save it with numpy.savez") from None
        with archive:
            present = {name.removesuffix(".npy"): name for name in archive.namelist()}
            missing = [k for k in keys if k not in present]
            if missing:
                raise UsageError(f"{what} {str(path)!r} has no key {missing[0]!r}; keys present: "
                                 f"{', '.join(sorted(present)) or 'none'}")
            arrays = []
            for key in keys:
                info = archive.getinfo(present[key])
                try:
                    with archive.open(info) as member:
                        arrays.append(read_npy(member, info.file_size, what=f"{what} {str(path)!r}[{key!r}]",
                                               kinds=kinds))
                except (zipfile.BadZipFile, OSError, EOFError) as exc:  # a damaged member (CRC, truncation)
                    raise UsageError(f"{what} {str(path)!r}[{key!r}] is damaged ({exc})") from None
            return arrays


def read_npy(handle: IO[bytes], size: int, *, what: str, kinds: str = "f") -> np.ndarray:
    """Read one ``.npy`` array of ``size`` bytes from ``handle``, checking the header first.

    The data must start with the ``.npy`` magic (not a ``.npz`` archive or anything else), its dtype
    be plain numbers of a kind in ``kinds`` (``"f"``: float; ``"biuf"``: any real number) with at
    most 8 bytes per value (no float128, no objects, which would need unpickling), and its shape
    match ``size`` (a header claiming 2e13 values is refused, not allocated). Big-endian data is
    converted to the machine's byte order. Returns a writable C-contiguous array in native byte order.
    """
    magic = handle.read(len(_NPY_MAGIC))
    if magic != _NPY_MAGIC:
        kind = "a .npz archive (zip)" if magic.startswith(b"PK") else "not a .npy array"
        raise UsageError(f"{what} is {kind}; save one array with numpy.save")
    try:
        version = (handle.read(1)[0], handle.read(1)[0])
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(handle)
        header_bytes = handle.tell()
    except Exception as exc:  # noqa: BLE001 - numpy's header parser raises assorted errors on damaged bytes
        # (ValueError, SyntaxError, tokenize.TokenError...; the fuzzer found the last one)
        raise UsageError(f"{what} has a damaged .npy header ({type(exc).__name__}: {exc}); save it again with "
                         "numpy.save") from None
    if dtype.hasobject or dtype.kind not in kinds or dtype.itemsize > 8 or dtype.fields is not None:
        wanted = "float16, float32 or float64" if kinds == "f" else "bool, integers or floats of at most 64 bits"
        raise UsageError(f"{what} holds {dtype} values, which are not plain numbers of a supported kind; store "
                         f"{wanted}")
    count = math.prod(shape)
    data_bytes = size - header_bytes
    if count < 0 or count * dtype.itemsize != data_bytes:
        raise UsageError(f"{what}: its header claims shape {shape} ({count * dtype.itemsize} bytes of data) but "
                         f"the file holds {data_bytes}; the file is truncated or damaged")
    flat = np.frombuffer(handle.read(data_bytes), dtype=dtype, count=count)
    array = flat.reshape(shape, order="F" if fortran else "C")
    return np.array(array, dtype=dtype.newbyteorder("="), order="C")  # a writable, native-order copy
