"""Writing outputs so that a failure never leaves a partial file behind."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

from .errors import SdliteError


def check_replaceable(path: Path) -> None:
    """Refuses to replace anything but a regular file (or a link to one): a device such as /dev/full, a
    FIFO, a socket or a directory would otherwise become a regular file, as root even a device node."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return  # nothing there (or a dangling link, which the rename replaces)
    except OSError as exc:
        raise SdliteError(f"cannot write {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        kind = ("a directory" if stat.S_ISDIR(mode) else "a character device" if stat.S_ISCHR(mode)
                else "a block device" if stat.S_ISBLK(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
        raise SdliteError(f"{path} is {kind}: sdlite only replaces regular files")


def write_atomic(path: Path, data: bytes, replace: bool = True) -> None:
    """Write to a temporary file beside `path`, then move it to `path` in one step. With `replace`
    False an existing `path` is never replaced, not even one that appears while writing: FileExistsError.
    Only a regular file is ever replaced (SdliteError otherwise)."""
    path = Path(path)
    if replace:
        check_replaceable(path)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(descriptor, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, 0o666 & ~_umask())
        if replace:
            os.replace(temporary, path)
        else:
            _move_without_replacing(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _move_without_replacing(temporary: str, path: Path) -> None:
    try:
        os.link(temporary, path)  # fails with FileExistsError when `path` exists, atomically
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: check, then rename (a small race remains)
        if path.exists():
            raise FileExistsError(errno.EEXIST, "File exists", str(path)) from None
        os.rename(temporary, path)
        return
    os.unlink(temporary)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
