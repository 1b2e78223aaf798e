"""Files written so that a crash, `kill -9` or a full disk leaves the old
content or the new, never a torn file; files read only when they are regular
files of a bounded size, so that a FIFO, a device such as /dev/zero or a huge
file in their place never hangs optsvc or fills the memory."""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path

from optsvc.errors import StateError

# Configs and metrics logs are text a person could read; beyond this they are
# not what optsvc wrote.
TEXT_LIMIT = 256 * 2**20


def inflates(member: zipfile.ZipInfo, size: int) -> bool:
    """Whether a zip archive's `member` could unpack to more than `size`
    bytes (the archive's own size): compressed, or declaring more. optsvc
    stores its archives' members uncompressed, so such a member is not what
    optsvc wrote, and is refused before it is opened."""
    return member.compress_type != zipfile.ZIP_STORED or member.file_size > size


def read_regular(path, limit: int, what: str = "file") -> bytes:
    """The bytes of `path`, if it is a regular file of at most `limit` bytes.

    The file is opened without blocking (a FIFO would wait for a writer) and
    checked with fstat before anything is read, and never more than `limit`
    bytes are read, even if it grows meanwhile; StateError, one sentence
    naming `what` and the path, otherwise.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise StateError(f"{what} '{path}' does not exist; check the path") from None
    except OSError as err:
        raise StateError(
            f"cannot read {what} '{path}' ({err.strerror}); check the path"
        ) from None
    try:
        size = _check_opened(fd, path, limit, what)
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as f:
        try:
            # as much as fstat said (a buffer of `limit` bytes could be far
            # too large), then what it may have grown by, up to the limit
            data = f.read(size + 1)
            if len(data) > size:
                data += f.read(limit + 1 - len(data))
        except OSError as err:
            raise StateError(f"cannot read {what} '{path}' ({err.strerror})") from None
    if len(data) > limit:
        raise StateError(
            f"{what} '{path}' grew past the limit of {limit} bytes while being read"
        )
    return data


def _check_opened(fd: int, path: Path, limit: int, what: str) -> int:
    """The size of the regular file open as `fd`, if it is within `limit`."""
    info = os.fstat(fd)
    if stat.S_ISDIR(info.st_mode):
        raise StateError(f"{what} '{path}' is a folder; give the path of a file")
    if not stat.S_ISREG(info.st_mode):
        raise StateError(
            f"{what} '{path}' is not a regular file (a pipe or a device?); "
            "give a regular file"
        )
    if info.st_size > limit:
        raise StateError(
            f"{what} '{path}' is {info.st_size} bytes, over the limit of {limit}; "
            "is it the right file?"
        )
    return info.st_size


def write_atomic(path, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves the old file or the new
    one, never a torn one: temporary file, fsync, rename, fsync the folder."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


__all__ = ["write_atomic", "read_regular", "StateError", "TEXT_LIMIT"]
