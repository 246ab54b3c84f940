"""File writing shared by every module that saves something: one atomic-write helper."""

import contextlib
import os
import secrets
from pathlib import Path

__all__ = ["atomic_write"]


def atomic_write(path, write, *, text=False):
    """Call ``write(f)`` on a new temporary file next to ``path``, flush it to disk, then rename
    it over ``path`` (atomic on POSIX and Windows), so a reader never sees a half-written file and
    an interrupted write leaves the old file (if any) intact.

    The temporary file is ``<name>.<pid>.<random>.tmp`` in the same folder, created with the usual
    permissions (umask), and removed if ``write`` raises. An error creating it names ``path``, not
    the temporary file.
    """
    target = Path(os.fspath(path))
    tmp = target.with_name(f"{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        f = open(tmp, "x" if text else "xb", **({"encoding": "utf-8"} if text else {}))  # noqa: SIM115
    except OSError as e:
        raise type(e)(e.errno, e.strerror, str(target)) from None
    try:
        with f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
