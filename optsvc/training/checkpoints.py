"""Training checkpoints: one folder per step, written atomically, verified on load.

A checkpoint is a folder ``DIR/step-00001234/`` holding

- ``arrays.safetensors``: named arrays (model weights, ...), numbers only;
- ``optimizer.safetensors``: opaque bytes, the optimizer's ``to_bytes()``;
- ``state.json``: the caller's plain JSON data (step, RNG state, data
  position, config hash, backend, ...);
- ``manifest.json``, written last: the `Manifest` record (format, version,
  step, the size and SHA-256 of each other file) and a checksum of itself.

`load_checkpoint` reads a folder once: the manifest first, then each file
within the size the manifest gives (a FIFO, a device or a grown file is never
read), each checked against its SHA-256 before it is decoded.

Crash safety (a ``kill -9`` or a power cut at any moment):

- A new checkpoint is written into ``DIR/.tmp-step-00001234-<pid>/``, every file
  and the folder fsynced, then renamed into place and ``DIR`` fsynced. Before the
  rename there is no ``step-`` folder for it; after, a complete one. A crash
  leaves at most a hidden ``.tmp-`` folder, which loading ignores.
- An existing ``step-N`` (a resumed run reaching the same step) is replaced by
  (1) renaming it to ``.old-step-N-<pid>``, (2) renaming the new folder to
  ``step-N``, (3) deleting the old one. Between (1) and (2) there is no
  ``step-N``, but a complete ``.old-`` folder: `newest_first` lists ``.old-``
  folders too (after any ``step-N`` of the same step), and the next save
  renames it back to ``step-N`` if that is still missing.
- Pruning renames ``step-N`` to ``.del-step-N-<pid>`` before deleting it, so a
  half-deleted folder never carries a checkpoint's name.
- Each save removes the hidden folders of writers that died (their pid is no
  longer running); those of live writers, and of this process, are left alone.

So every ``step-`` folder is complete unless the disk itself corrupts it, which
the SHA-256s detect: `load_latest_checkpoint` then warns and falls back to the
previous good checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import operator
import os
import re
import shutil
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import Field

from optsvc.about import __version__
from optsvc.errors import StateError
from optsvc.fileio import decode_arrays, encode_arrays, read_regular
from optsvc.records import Count, Record

FORMAT = "optsvc.checkpoint"
VERSION = 2
ARRAYS, OPTIMIZER, STATE = "arrays.safetensors", "optimizer.safetensors", "state.json"
MANIFEST = "manifest.json"
FILES = (ARRAYS, OPTIMIZER, STATE)

STEP_NAME = re.compile(r"step-(\d{8}|[1-9]\d{8,})")  # as step_name writes it
HIDDEN_NAME = re.compile(r"\.(tmp|old|del)-step-(\d+)-(\d+)")
MANIFEST_LIMIT = 2**20  # a manifest lists three files: a few hundred bytes

logger = logging.getLogger("optsvc")


class FileEntry(Record):
    size: Count
    sha256: Annotated[str, Field(pattern="^[0-9a-f]{64}$")]


class Manifest(Record):
    """manifest.json, less its own checksum (`manifest_sha256`)."""

    format: str
    version: int
    step: Count
    created_by: str
    files: dict[str, FileEntry]


@dataclasses.dataclass(eq=False)
class Checkpoint:
    """A checkpoint read back and verified by `load_checkpoint`."""

    path: Path
    step: int
    arrays: dict[str, np.ndarray] = dataclasses.field(repr=False)
    optimizer: bytes = dataclasses.field(repr=False)
    state: dict


def step_name(step: int) -> str:
    """The folder name of a step's checkpoint.

    >>> step_name(1234)
    'step-00001234'
    """
    return f"step-{step:08d}"


def _fail(path: Path, problem: str) -> StateError:
    return StateError(f"{path}: {problem}")


# --- encoding what is saved, checked first --------------------------------------------


def _check_inputs(step: Any, keep: Any, optimizer: Any, state: Any) -> int:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise StateError(f"step must be an int, got {step!r}")
    if step < 0:
        raise StateError(f"step must be >= 0, got {step}")
    if keep is not None and (isinstance(keep, bool) or operator.index(keep) < 1):
        raise ValueError(f"keep must be a positive int or None, got {keep!r}")
    if not isinstance(optimizer, (bytes, bytearray, memoryview)):
        raise StateError(
            "optimizer must be bytes, such as Optimizer.to_bytes(), got a "
            f"{type(optimizer).__name__}"
        )
    if not isinstance(state, dict):
        raise StateError(f"state must be a dict, got {type(state).__name__}")
    _check_plain(state, "state")
    return int(step)


def _check_plain(value: Any, where: str) -> None:
    """Refuse what JSON would not give back as it was (tuples, numpy scalars,
    non-string keys), naming where it is."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise StateError(
                    f"{where}: key {key!r} is not a string; JSON keys must be strings"
                )
            _check_plain(item, f"{where}.{key}")
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    raise StateError(
        f"{where}: a {type(value).__name__} is not plain JSON data (use dicts with "
        "string keys, lists, str, int, float, bool or None)"
    )


def manifest_to_bytes(manifest: dict) -> bytes:
    """The manifest as written: sorted, indented JSON with its own checksum."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    full = dict(body, manifest_sha256=_manifest_digest(body))
    return json.dumps(full, indent=1, sort_keys=True).encode()


def _manifest_digest(body: dict) -> str:
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# --- writing ------------------------------------------------------------------


def save_checkpoint(
    directory: str | os.PathLike,
    step: int,
    *,
    arrays: Mapping[str, np.ndarray],
    optimizer: bytes,
    state: dict,
    keep: int | None = 3,
) -> Path:
    """Write the checkpoint of `step` into `directory` atomically; return its folder.

    An existing checkpoint of the same step is replaced atomically. Afterwards
    the folder is pruned to the newest `keep` checkpoints that verify (the new
    one is never deleted; `keep=None` keeps all), and the temporary folders of
    writers that crashed are removed.
    """
    step = _check_inputs(step, keep, optimizer, state)
    files = {
        ARRAYS: encode_arrays(arrays),
        OPTIMIZER: bytes(optimizer),
        STATE: (json.dumps(state, indent=1) + "\n").encode(),
    }
    manifest = Manifest(
        format=FORMAT,
        version=VERSION,
        step=step,
        created_by=f"optsvc {__version__}",
        files={
            name: FileEntry(size=len(data), sha256=hashlib.sha256(data).hexdigest())
            for name, data in files.items()
        },
    )
    files[MANIFEST] = manifest_to_bytes(manifest.model_dump())

    directory = Path(directory)
    _ensure_folder(directory)
    pid = os.getpid()
    final = directory / step_name(step)
    tmp = directory / f".tmp-{final.name}-{pid}"
    aside = directory / f".old-{final.name}-{pid}"
    try:
        _settle(final, tmp, aside)  # leftovers of a failed save in this process
        _mkdir(tmp)
        for name, data in files.items():
            _write_file(tmp / name, data)
        _fsync_dir(tmp)
        if os.path.lexists(final):
            _rename(final, aside)
            _fsync_dir(directory)
        _rename(tmp, final)  # the commit
        _fsync_dir(directory)
    except BaseException:
        with contextlib.suppress(OSError):
            _settle(final, tmp, aside)
        raise
    # The checkpoint is saved; failing to tidy up is worth a warning, not an error.
    try:
        if os.path.lexists(aside):
            _remove_tree(aside)
        _remove_leftovers(directory, pid)
        if keep is not None:
            _prune(directory, keep, final, pid)
    except OSError as err:
        logger.warning(f"saved {final}, but could not tidy up {directory}: {err}")
    return final


def _settle(final: Path, tmp: Path, aside: Path) -> None:
    """Bring this process's leftovers for `final` to a clean state: the old
    checkpoint back in place if the new one never got there, no temp folder."""
    if os.path.lexists(aside):
        if os.path.lexists(final):
            _remove_tree(aside)
        else:
            _rename(aside, final)
            _fsync_dir(final.parent)
    if os.path.lexists(tmp):
        _remove_tree(tmp)


def _remove_leftovers(directory: Path, own_pid: int) -> None:
    """Remove the hidden folders of writers that died; an ``.old-`` folder whose
    step folder is missing (a crash mid-replace) is renamed back instead."""
    for name in sorted(n for n in os.listdir(directory) if n.startswith(".")):
        match = HIDDEN_NAME.fullmatch(name)
        if not match:
            continue
        kind, step, pid = match[1], int(match[2]), int(match[3])
        if pid == own_pid or _is_running(pid):
            continue
        path, final = directory / name, directory / step_name(step)
        if kind == "old" and not os.path.lexists(final) and _verifies(path):
            _rename(path, final)
            _fsync_dir(directory)
        else:
            _remove_tree(path)


# The checkpoint folders this process has verified, by folder: each is read
# once, when a prune first needs to count it, and a prune works on names, so
# a save costs about the same whether 3 or 1,000 checkpoints are kept. (One
# damaged after that is found by the resume that reads it, which falls back
# past it.)
_verified: dict[Path, set[str]] = {}


def _prune(directory: Path, keep: int, new: Path, pid: int) -> None:
    """Delete all but the newest `keep` checkpoints that verify (and `new`)."""
    names = _step_names(directory)
    verified = _verified.setdefault(directory, set())
    verified.intersection_update(names)
    if len(names) <= keep:  # nothing to delete, so nothing to count
        return
    kept = 0
    for name in reversed(names):
        if name == new.name:
            kept += 1
        elif kept >= keep:
            doomed = directory / f".del-{name}-{pid}"
            if os.path.lexists(doomed):
                _remove_tree(doomed)
            _rename(directory / name, doomed)
            _fsync_dir(directory)
            _remove_tree(doomed)
            verified.discard(name)
        elif name in verified or _verifies(directory / name):
            verified.add(name)
            kept += 1


def _is_running(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except OSError:  # e.g. PermissionError: it runs, as another user
        return True
    return True


def _verifies(path: Path) -> bool:
    try:
        load_checkpoint(path)
    except StateError:
        return False
    return True


def check_checkpoint_folder(directory: str | os.PathLike) -> None:
    """StateError, with the fix, unless `directory` is a folder that can
    hold checkpoints or does not exist yet (a file, a symlink loop or a
    dangling symlink in its place would fail only at the first save)."""
    directory = Path(directory)
    if os.path.lexists(directory) and not directory.is_dir():
        raise StateError(
            f"{directory}: not a folder (a file, or a broken or looping symlink?), so "
            "it cannot hold checkpoints; remove it, or start again with --overwrite"
        )


def _ensure_folder(directory: Path) -> None:
    if directory.is_dir():
        return
    if os.path.lexists(directory):
        raise StateError(f"{directory}: not a folder, cannot hold checkpoints")
    directory.mkdir(parents=True, exist_ok=True)
    _fsync_dir(directory.parent)


# The filesystem steps of a save, one helper each, so that the tests can make
# any one of them fail.


def _mkdir(path: Path) -> None:
    os.mkdir(path)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rename(src: Path, dst: Path) -> None:
    os.rename(src, dst)


def _remove_tree(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):  # someone else removed it first
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


# --- reading ------------------------------------------------------------------------


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """The checkpoint folders (``step-*``) in `directory`, oldest first; none if
    it does not exist. Temporary folders are ignored."""
    directory = Path(directory)
    if not os.path.lexists(directory):
        return []
    if not directory.is_dir():
        raise StateError(f"{directory}: not a folder, cannot hold checkpoints")
    return [directory / name for name in _step_names(directory)]


def _step_names(directory: Path) -> list[str]:
    """The names of the step folders in `directory`, by step."""
    found = map(STEP_NAME.fullmatch, os.listdir(directory))
    return [name for _, name in sorted((int(m[1]), m[0]) for m in found if m)]


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read the checkpoint in folder `path`, verifying its manifest, sizes and
    SHA-256s; StateError says what is wrong if anything is."""
    path = Path(path)
    manifest = read_manifest(path)
    data = {name: read_file(path, name, manifest.files[name]) for name in FILES}
    arrays, _ = decode_arrays(data[ARRAYS], f"{path}: {ARRAYS} is not readable")
    try:
        state = json.loads(data[STATE].decode("utf-8"))
    except (ValueError, RecursionError) as err:
        raise _fail(path, f"{STATE} is not valid JSON ({err})") from None
    if not isinstance(state, dict):
        raise _fail(path, f"{STATE} does not hold a JSON object")
    return Checkpoint(path, manifest.step, arrays, data[OPTIMIZER], state)


def read_manifest(path: Path) -> Manifest:
    """The manifest of the checkpoint in folder `path`, verified."""
    if not path.is_dir():
        if os.path.lexists(path):
            raise _fail(path, "not a folder (a checkpoint is a folder)")
        raise _fail(path, "no such checkpoint folder")
    if not os.path.lexists(path / MANIFEST):
        raise _fail(
            path, f"{MANIFEST} is missing (an empty or unfinished checkpoint folder)"
        )
    try:
        raw = json.loads(read_regular(path / MANIFEST, MANIFEST_LIMIT, MANIFEST))
    except StateError as err:
        raise _fail(path, f"cannot read {MANIFEST}: {err}") from None
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is one too
        raise _fail(path, f"{MANIFEST} is not valid JSON ({err})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else raw
        raise _fail(path, f"{MANIFEST} is not a checkpoint manifest ({found!r:.60})")
    if raw.get("version") != VERSION:
        raise _fail(
            path,
            f"{MANIFEST} has format version {raw.get('version')!r}; this optsvc "
            f"reads version {VERSION}",
        )
    body = {k: v for k, v in raw.items() if k != "manifest_sha256"}
    if raw.get("manifest_sha256") != _manifest_digest(body):
        raise _fail(path, f"{MANIFEST} is corrupt: its own checksum does not match")
    manifest = Manifest.parse(body, f"{path}: {MANIFEST} is malformed:")
    if set(manifest.files) != set(FILES):
        raise _fail(path, f"{MANIFEST} is malformed: 'files' should list {FILES}")
    folder_step = _folder_step(path.name)
    if folder_step is not None and folder_step != manifest.step:
        raise _fail(
            path,
            f"{MANIFEST} is for step {manifest.step}, but the folder is named for "
            f"step {folder_step}",
        )
    return manifest


def written_by_optsvc(directory: str | os.PathLike) -> int | None:
    """The format version of the newest step folder in `directory` whose
    manifest is optsvc's (of any version), or None: how to tell a run that
    optsvc wrote before its run folders had a run.json."""
    directory = Path(directory)
    if not (directory.is_dir() and not directory.is_symlink()):
        return None
    for name in reversed(_step_names(directory)):
        with contextlib.suppress(StateError, ValueError, RecursionError):
            raw = json.loads(
                read_regular(directory / name / MANIFEST, MANIFEST_LIMIT, MANIFEST)
            )
            if isinstance(raw, dict) and raw.get("format") == FORMAT:
                return raw.get("version") if type(raw.get("version")) is int else 0
    return None


def is_own(name: str) -> bool:
    """Whether a name in checkpoints/ is one optsvc writes (a step folder, or
    a temporary, old or deleted one)."""
    return _folder_step(name) is not None


def _folder_step(name: str) -> int | None:
    match = STEP_NAME.fullmatch(name)
    if match:
        return int(match[1])
    match = HIDDEN_NAME.fullmatch(name)
    return int(match[2]) if match else None


def read_file(path: Path, name: str, entry: FileEntry) -> bytes:
    """File `name` of the checkpoint in `path`, checked against its manifest
    `entry` (size and SHA-256)."""
    # The size is checked before anything is read, and no more than the
    # manifest's size is ever read: a FIFO, a device or a grown file in a
    # checkpoint never hangs the resume or fills the memory.
    try:
        info = os.stat(path / name)
    except FileNotFoundError:
        raise _fail(path, f"{name} is missing") from None
    except OSError as err:
        raise _fail(path, f"cannot read {name} ({err})") from None
    if stat.S_ISREG(info.st_mode) and info.st_size != entry.size:
        cut = " (truncated)" if info.st_size < entry.size else ""
        raise _fail(
            path,
            f"{name} is {info.st_size} bytes, but {MANIFEST} says {entry.size}{cut}",
        )
    try:
        data = read_regular(path / name, entry.size, name)
    except StateError as err:
        raise _fail(path, f"cannot read {name}: {err}") from None
    if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
        raise _fail(path, f"{name} does not match its SHA-256 in {MANIFEST} (corrupt)")
    return data


def newest_first(directory: str | os.PathLike) -> list[Path]:
    """Step folders and, for a crash mid-replace, ``.old-`` folders; newest
    step first, a step folder before an ``.old-`` folder of the same step."""
    directory = Path(directory)
    found = [(int(p.name[5:]), 1, p) for p in list_checkpoints(directory)]
    if not directory.is_dir():
        return []
    for name in os.listdir(directory):
        match = HIDDEN_NAME.fullmatch(name)
        if match and match[1] == "old":
            found.append((int(match[2]), 0, directory / name))
    return [path for *_, path in sorted(found, key=lambda f: f[:2], reverse=True)]


def load_latest_checkpoint(
    directory: str | os.PathLike,
    *,
    warn: Callable[[str], None] | None = None,
    read: Callable[[Checkpoint], Any] | None = None,
) -> Any:
    """The newest checkpoint in `directory` that verifies, or None if there is
    none; with `read`, what `read` makes of the newest one it does not refuse
    (with a StateError, like a corrupt checkpoint). Each bad newer one is
    skipped with a message to `warn` (default: the "optsvc" logger's warning);
    StateError if none verifies."""
    warn = warn if warn is not None else logger.warning
    errors = []
    for path in newest_first(directory):
        try:
            checkpoint = load_checkpoint(path)
            return checkpoint if read is None else read(checkpoint)
        except StateError as err:
            errors.append(err)
            warn(f"skipping a bad checkpoint: {err}")
    if errors:
        raise StateError(
            f"{directory}: none of its {len(errors)} checkpoints verifies "
            f"(the newest: {errors[0]})"
        )
    return None
