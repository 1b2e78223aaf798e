"""One training process per run folder.

The lock is an advisory `flock` on `RUN/.lock`, which the kernel releases
when the holder exits for any reason, kill -9 included: a lock left by a
killed run is never stale. The file also records the holder's pid, for the
message another process sees.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from optsvc.errors import OptsvcError


class LockedError(OptsvcError, RuntimeError):
    """Another live process is using the run folder."""


class RunLock:
    """An exclusive lock on a run folder, taken at construction.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     lock = RunLock(d)
    ...     lock.release()
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / ".lock"
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise LockedError(
                f"another optsvc train (pid {holder}) is using '{self.path.parent}'; "
                "wait for it to finish, or use another folder with -o"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
