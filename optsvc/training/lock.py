"""One training process per run folder, and whether one is training there.

The lock is an advisory `flock` on the run folder itself (its directory),
which the kernel releases when the holder exits for any reason, kill -9
included: a lock left by a killed run is never stale. Locking the folder, not
a file in it, means that deleting or replacing a file cannot let a second
writer in. ``RUN/.lock`` records the holder's pid, for the message another
process sees, and is flocked too: that is the lock `lock_held` tests (never
the folder's), with a shared lock let go at once, so the holder takes it
waiting, not failing, while a probe holds it for that instant.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from optsvc.errors import OptsvcError, RunError
from optsvc.fileio import read_regular

LOCK = ".lock"
# Never follow a planted symlink out of the run folder.
_OPEN = os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def lock_holder(folder: str | os.PathLike) -> str:
    """The pid that the run folder's ``.lock`` records, or '' when it cannot
    be read or is not a pid; at most 64 bytes are read."""
    try:
        text = read_regular(Path(folder) / LOCK, 64, "lock file").decode()
    except (OptsvcError, UnicodeDecodeError):
        return ""
    pid = text.strip()
    return pid if pid.isascii() and pid.isdigit() else ""


def lock_held(folder: str | os.PathLike) -> bool | None:
    """Whether a live process holds the run's lock: True, False, or None when
    the lock file cannot be read. Never creates the file; a shared lock is
    tried and released at once, so a training process is not kept waiting."""
    try:
        fd = os.open(Path(folder) / LOCK, os.O_RDONLY | _OPEN)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False  # the shared lock goes with the descriptor, closed now
    except BlockingIOError:  # EWOULDBLOCK: held
        return True
    except OSError:
        return None
    finally:
        os.close(fd)


class RunLock:
    """An exclusive lock on a run folder, taken at construction.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     lock = RunLock(d)
    ...     lock.release()
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        dir_fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        fd = None
        try:
            fcntl.flock(dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fd = os.open(Path(folder) / LOCK, os.O_RDWR | os.O_CREAT | _OPEN, 0o644)
            # The folder's lock is ours, so only a probe can hold this one,
            # for an instant: wait for it rather than fail.
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BlockingIOError:
            os.close(dir_fd)
            holder = lock_holder(folder) or "?"
            raise RunError(
                f"another optsvc train (pid {holder}) is using '{folder}'; wait for "
                "it to finish, or use another folder with -o"
            ) from None
        except BaseException:
            if fd is not None:
                os.close(fd)
            os.close(dir_fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fds: list[int] = [fd, dir_fd]

    def release(self) -> None:
        while self._fds:
            fd = self._fds.pop()
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
