"""Training checkpoints: one folder per step, written atomically, verified on load.

A checkpoint is a folder ``DIR/step-00001234/`` holding

- ``arrays.npz``: named numeric arrays (model weights, ...), read without pickle;
- ``optimizer.bin``: opaque bytes, the optimizer's ``to_bytes()``;
- ``state.json``: the caller's plain data (step, RNG state, data position,
  config hash, backend, ...);
- ``manifest.json``, written last: format, version, step, the size and SHA-256
  of each other file, and a checksum of the manifest itself.

How each file is encoded, checked and verified is `optsvc.training.checkpoint_format`;
this module writes and reads the folders.

Crash safety (a ``kill -9`` or a power cut at any moment):

- A new checkpoint is written into ``DIR/.tmp-step-00001234-<pid>/``, every file
  and the folder fsynced, then renamed into place and ``DIR`` fsynced. Before the
  rename there is no ``step-`` folder for it; after, a complete one. A crash
  leaves at most a hidden ``.tmp-`` folder, which loading ignores.
- An existing ``step-N`` (a resumed run reaching the same step) is replaced by
  (1) renaming it to ``.old-step-N-<pid>``, (2) renaming the new folder to
  ``step-N``, (3) deleting the old one. Between (1) and (2) there is no
  ``step-N``, but a complete ``.old-`` folder: `load_latest_checkpoint` looks
  at ``.old-`` folders too (after any ``step-N`` of the same step), and the next
  save renames it back to ``step-N`` if that is still missing.
- Pruning renames ``step-N`` to ``.del-step-N-<pid>`` before deleting it, so a
  half-deleted folder never carries a checkpoint's name.
- Each save removes the hidden folders of writers that died (their pid is no
  longer running); those of live writers, and of this process, are left alone.

So every ``step-`` folder is complete unless the disk itself corrupts it, which
the SHA-256s detect: `load_latest_checkpoint` then warns and falls back to the
previous good checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import operator
import os
import shutil
import stat
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from optsvc.about import __version__
from optsvc.training.checkpoint_format import (
    ARRAYS,
    FILES,
    FORMAT,
    HIDDEN_NAME,
    MANIFEST,
    OPTIMIZER,
    STATE,
    STEP_NAME,
    VERSION,
    StateError,
    arrays_from_bytes,
    arrays_to_bytes,
    check_bytes,
    check_step,
    manifest_to_bytes,
    read_file,
    read_manifest,
    state_from_bytes,
    state_to_bytes,
    step_name,
)

logger = logging.getLogger("optsvc")


@dataclasses.dataclass(eq=False)
class Checkpoint:
    """A checkpoint read back and verified by `load_checkpoint`."""

    path: Path
    step: int
    arrays: dict[str, np.ndarray] = dataclasses.field(repr=False)
    optimizer: bytes = dataclasses.field(repr=False)
    state: dict


def config_hash(config: str | bytes | Mapping) -> str:
    """SHA-256 (hex) of a config's text, or of a dict's canonical JSON form.

    >>> config_hash({"b": 1, "a": [1, 2]}) == config_hash({"a": [1, 2], "b": 1})
    True
    >>> config_hash("")[:16]
    'e3b0c44298fc1c14'
    """
    if isinstance(config, str):
        data = config.encode("utf-8")
    elif isinstance(config, (bytes, bytearray)):
        data = bytes(config)
    elif isinstance(config, Mapping):
        try:
            text = json.dumps(
                dict(config), sort_keys=True, separators=(",", ":"), ensure_ascii=False
            )
        except (TypeError, ValueError) as err:
            raise StateError(
                f"config_hash: the config is not JSON data ({err})"
            ) from None
        data = text.encode("utf-8")
    else:
        raise TypeError(
            "config_hash takes the config's text or a dict, got "
            + type(config).__name__
        )
    return hashlib.sha256(data).hexdigest()


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
    step = check_step(step)
    if keep is not None and (isinstance(keep, bool) or operator.index(keep) < 1):
        raise ValueError(f"keep must be a positive int or None, got {keep!r}")
    files = {
        ARRAYS: arrays_to_bytes(arrays),
        OPTIMIZER: check_bytes(optimizer),
        STATE: state_to_bytes(state),
    }
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "step": step,
        "created_by": f"optsvc {__version__}",
        "files": {
            name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            for name, data in files.items()
        },
    }
    files[MANIFEST] = manifest_to_bytes(manifest)

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
        try:
            _settle(final, tmp, aside)
        except OSError:
            pass
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
    for name in sorted(os.listdir(directory)):
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


# Checkpoint folders this process has verified, by path, with the identity
# (inode, mtime, size) of each of their files then: a save re-reads only what
# is new or was changed since, so `keep = 1000` costs a few stats per kept
# checkpoint, not a read of each.
_verified: dict[Path, tuple] = {}


def _prune(directory: Path, keep: int, new: Path, pid: int) -> None:
    """Delete all but the newest `keep` checkpoints that verify (and `new`)."""
    kept = 0
    listed = list_checkpoints(directory)
    for gone in [p for p in _verified if p.parent == directory and p not in listed]:
        del _verified[gone]
    for path in reversed(listed):
        if path == new:
            kept += 1
        elif kept >= keep:
            doomed = directory / f".del-{path.name}-{pid}"
            if os.path.lexists(doomed):
                _remove_tree(doomed)
            _rename(path, doomed)
            _fsync_dir(directory)
            _remove_tree(doomed)
        elif _verifies_cached(path):
            kept += 1


def _verifies_cached(path: Path) -> bool:
    try:
        stats = [os.stat(path / name) for name in (MANIFEST, *FILES)]
    except OSError:
        return False
    identity = tuple((s.st_ino, s.st_mtime_ns, s.st_size) for s in stats)
    if _verified.get(path) == identity:
        return True
    if not _verifies(path):
        return False
    _verified[path] = identity
    return True


def _is_running(pid: int) -> bool:
    if pid <= 0:
        return False
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process there
        return True
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
    if not os.path.lexists(directory):
        return
    try:
        info = os.stat(directory)
    except OSError as err:
        raise StateError(
            f"{directory}: cannot be used for checkpoints ({err.strerror}, a broken "
            "or looping symlink?); remove it, or start again with --overwrite"
        ) from None
    if not stat.S_ISDIR(info.st_mode):
        raise StateError(
            f"{directory}: not a folder, cannot hold checkpoints; remove it, or "
            "start again with --overwrite"
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
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:  # someone else removed it first
        pass


# --- reading ------------------------------------------------------------------------


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """The checkpoint folders (``step-*``) in `directory`, oldest first; none if
    it does not exist. Temporary folders are ignored."""
    directory = Path(directory)
    if not os.path.lexists(directory):
        return []
    if not directory.is_dir():
        raise StateError(f"{directory}: not a folder, cannot hold checkpoints")
    found = []
    for name in os.listdir(directory):
        match = STEP_NAME.fullmatch(name)
        if match and name == step_name(int(match[1])):
            found.append((int(match[1]), directory / name))
    return [path for _, path in sorted(found)]


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read the checkpoint in folder `path`, verifying its manifest, sizes and
    SHA-256s; StateError says what is wrong if anything is."""
    path = Path(path)
    manifest = read_manifest(path)
    data = {name: read_file(path, name, manifest["files"][name]) for name in FILES}
    return Checkpoint(
        path=path,
        step=manifest["step"],
        arrays=arrays_from_bytes(path, data[ARRAYS]),
        optimizer=data[OPTIMIZER],
        state=state_from_bytes(path, data[STATE]),
    )


def load_latest_checkpoint(
    directory: str | os.PathLike,
    *,
    warn: Callable[[str], None] | None = None,
    check: Callable[[Checkpoint], object] | None = None,
) -> Checkpoint | None:
    """The newest checkpoint in `directory` that verifies, or None if there is
    none. Each bad newer one is skipped with a message to `warn` (default: the
    "optsvc" logger's warning); StateError if none verifies. `check`, if
    given, looks at what a checkpoint holds: a StateError from it makes
    that checkpoint a bad one too."""
    warn = warn if warn is not None else logger.warning
    directory = Path(directory)
    candidates = _candidates(directory)
    errors = []
    for path in candidates:
        try:
            checkpoint = load_checkpoint(path)
            if check is not None:
                check(checkpoint)
            return checkpoint
        except StateError as err:
            errors.append(err)
            warn(f"skipping a bad checkpoint: {err}")
    if errors:
        raise StateError(
            f"{directory}: none of its {len(errors)} checkpoints verifies "
            f"(the newest: {errors[0]})"
        )
    return None


def _candidates(directory: Path) -> list[Path]:
    """Step folders and, for a crash mid-replace, ``.old-`` folders; newest
    step first, a step folder before an ``.old-`` folder of the same step."""
    found = [(int(p.name[5:]), 1, p) for p in list_checkpoints(directory)]
    if not directory.is_dir():
        return []
    for name in os.listdir(directory):
        match = HIDDEN_NAME.fullmatch(name)
        if match and match[1] == "old":
            found.append((int(match[2]), 0, directory / name))
    return [path for *_, path in sorted(found, key=lambda f: f[:2], reverse=True)]
