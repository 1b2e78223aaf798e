"""Bytes in and out: files written so that a crash, `kill -9` or a full disk
leaves the old content or the new, never a torn file; files read only when
they are regular files of a bounded size, so that a FIFO, a device such as
/dev/zero or a huge file in their place never hangs optsvc or fills the
memory; arrays as safetensors, whose header is checked before any data is
read and which never unpickles anything."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load, save

from optsvc.errors import StateError

# Configs and metrics logs are text a person could read; beyond this they are
# not what optsvc wrote.
TEXT_LIMIT = 256 * 2**20
# Arrays (weights, optimizer state) are read whole; 256 GiB is beyond any
# machine optsvc trains on.
ARRAYS_LIMIT = 2**38


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


def encode_arrays(arrays: Mapping[str, np.ndarray], meta: str | None = None) -> bytes:
    """`arrays` (numbers and booleans, each named) as safetensors bytes, with
    `meta` (text, e.g. JSON) in the header; StateError naming an array that
    cannot be saved."""
    if not isinstance(arrays, Mapping):
        raise StateError(
            f"arrays must be a dict of name -> numpy array, got {type(arrays).__name__}"
        )
    # safetensors reads an array's memory as it lies: a strided view must
    # be made contiguous first, or its bytes would be the wrong ones.
    flat = {
        name: np.require(_check(name, a), requirements="C")
        for name, a in arrays.items()
    }
    try:
        return save(flat, metadata=None if meta is None else {META: meta})
    except (SafetensorError, ValueError, TypeError) as err:
        raise StateError(f"cannot save these arrays: {err}") from None


def _check(name: object, array: object) -> np.ndarray:
    if not isinstance(name, str) or not name:
        raise StateError(f"array name {name!r}: names must be non-empty strings")
    if isinstance(array, np.generic):
        array = np.asarray(array)
    if not isinstance(array, np.ndarray):
        hint = (
            "; copy it to the host first (ops.to_numpy)"
            if hasattr(array, "__cuda_array_interface__")
            else ""
        )
        raise StateError(
            f"arrays[{name!r}]: expected a numpy array, got {type(array).__name__}"
            + hint
        )
    if array.dtype.kind not in "biuf":
        raise StateError(
            f"arrays[{name!r}] has dtype {array.dtype}; only bool, integer and float "
            "arrays can be saved (no objects, strings, records or complex numbers)"
        )
    return array


def decode_arrays(data: bytes, what: str) -> tuple[dict[str, np.ndarray], str | None]:
    """The arrays and the header text of safetensors bytes; for anything
    else, StateError: `what` (a sentence saying what is not readable) and
    safetensors' reason."""
    try:
        arrays = load(data)
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + size])
    except (SafetensorError, ValueError, TypeError) as err:
        raise StateError(f"{what} ({err})") from None
    meta = header.get("__metadata__") or {}
    return arrays, meta.get(META)


# The header entry that holds optsvc's own description of the arrays.
META = "optsvc"

__all__ = [
    "write_atomic",
    "read_regular",
    "encode_arrays",
    "decode_arrays",
    "TEXT_LIMIT",
    "ARRAYS_LIMIT",
]
