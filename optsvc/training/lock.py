"""One training process per run folder.

The lock is an advisory `flock` on the run folder itself (its directory),
which the kernel releases when the holder exits for any reason, kill -9
included: a lock left by a killed run is never stale. Locking the folder, not
a file in it, means that deleting or replacing a file cannot let a second
writer in. ``RUN/.lock`` records the holder's pid, for the message another
process sees, and is flocked too, as earlier versions expect.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from optsvc.errors import OptsvcError, RunError
from optsvc.fileio import read_regular


def lock_holder(folder: str | os.PathLike) -> str:
    """What the run folder's ``.lock`` records (its holder's pid, unstripped),
    or '' when it cannot be read; at most 64 bytes are read."""
    try:
        data = read_regular(Path(folder) / ".lock", 64, "lock file")
    except OptsvcError:
        return ""
    return data.decode(errors="replace")


class RunLock:
    """An exclusive lock on a run folder, taken at construction.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     lock = RunLock(d)
    ...     lock.release()
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder) / ".lock"
        dir_fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            fcntl.flock(dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK, 0o644)
        except BlockingIOError:
            os.close(dir_fd)
            raise self._locked() from None
        except BaseException:
            os.close(dir_fd)
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            os.close(dir_fd)
            raise self._locked() from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd: int | None = fd
        self._dir_fd: int | None = dir_fd

    def _locked(self) -> RunError:
        holder = lock_holder(self.path.parent)
        return RunError(
            f"another optsvc train (pid {holder.strip() or '?'}) is using "
            f"'{self.path.parent}'; wait for it to finish, or use another folder "
            "with -o"
        )

    def release(self) -> None:
        for name in ("_fd", "_dir_fd"):
            fd = getattr(self, name)
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                setattr(self, name, None)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
