"""Training checkpoints: one folder per step, written atomically, verified on load.

A checkpoint is a folder ``DIR/step-00001234/`` holding

- ``arrays.npz``: named numeric arrays (model weights, ...), read without pickle;
- ``optimizer.bin``: opaque bytes, the optimizer's ``to_bytes()``;
- ``state.json``: the caller's plain data (step, RNG state, data position,
  config hash, backend, ...);
- ``manifest.json``, written last: format, version, step, the size and SHA-256
  of each other file, and a checksum of the manifest itself.

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
import io
import json
import logging
import math
import operator
import os
import re
import shutil
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .about import __version__

FORMAT = "optsvc.checkpoint"
VERSION = 1
ARRAYS, OPTIMIZER, STATE = "arrays.npz", "optimizer.bin", "state.json"
MANIFEST = "manifest.json"
FILES = (ARRAYS, OPTIMIZER, STATE)

_STEP_NAME = re.compile(r"step-(\d+)")
_HIDDEN_NAME = re.compile(r"\.(tmp|old|del)-step-(\d+)-(\d+)")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_KINDS = "biufc"  # bool, integer, float, complex: no objects, strings or records
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed, so that equal arrays give equal bytes

logger = logging.getLogger("optsvc")


class CheckpointError(ValueError):
    """A checkpoint that cannot be written, or read back and verified."""


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
            raise CheckpointError(
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
    step = _check_step(step)
    if keep is not None and (isinstance(keep, bool) or operator.index(keep) < 1):
        raise ValueError(f"keep must be a positive int or None, got {keep!r}")
    files = {
        ARRAYS: _arrays_to_bytes(arrays),
        OPTIMIZER: _check_bytes(optimizer),
        STATE: _state_to_bytes(state),
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


def manifest_to_bytes(manifest: dict) -> bytes:
    """The manifest as written: sorted, indented JSON with its own checksum."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    full = dict(body, manifest_sha256=_manifest_digest(body))
    return json.dumps(full, indent=1, sort_keys=True).encode()


def _manifest_digest(body: dict) -> str:
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


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
        match = _HIDDEN_NAME.fullmatch(name)
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


def _prune(directory: Path, keep: int, new: Path, pid: int) -> None:
    """Delete all but the newest `keep` checkpoints that verify (and `new`)."""
    kept = 0
    for path in reversed(list_checkpoints(directory)):
        if path == new:
            kept += 1
        elif kept >= keep:
            doomed = directory / f".del-{path.name}-{pid}"
            if os.path.lexists(doomed):
                _remove_tree(doomed)
            _rename(path, doomed)
            _fsync_dir(directory)
            _remove_tree(doomed)
        elif _verifies(path):
            kept += 1


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
    except CheckpointError:
        return False
    return True


def _ensure_folder(directory: Path) -> None:
    if directory.is_dir():
        return
    if os.path.lexists(directory):
        raise CheckpointError(f"{directory}: not a folder, cannot hold checkpoints")
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


# --- checking what is saved -------------------------------------------------------


def _check_step(step: Any) -> int:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise CheckpointError(f"step must be an int, got {step!r}")
    if step < 0:
        raise CheckpointError(f"step must be >= 0, got {step}")
    return int(step)


def _check_bytes(optimizer: Any) -> bytes:
    if not isinstance(optimizer, (bytes, bytearray, memoryview)):
        raise CheckpointError(
            "optimizer must be bytes, such as Optimizer.to_bytes(), got a "
            f"{type(optimizer).__name__}"
        )
    return bytes(optimizer)


def _check_array(name: Any, value: Any) -> np.ndarray:
    if not isinstance(name, str) or not name or "\x00" in name:
        raise CheckpointError(
            f"array name {name!r}: names must be non-empty strings without NUL"
        )
    if isinstance(value, np.generic):
        value = np.asarray(value)
    if not isinstance(value, np.ndarray):
        hint = (
            "; copy it to the host first (ops.to_numpy)"
            if hasattr(value, "__cuda_array_interface__")
            else ""
        )
        raise CheckpointError(
            f"arrays[{name!r}]: expected a numpy array, got {type(value).__name__}"
            + hint
        )
    if value.dtype.kind not in _KINDS:
        raise CheckpointError(
            f"arrays[{name!r}] has dtype {value.dtype}; only bool, integer, float "
            "and complex arrays can be saved (no objects, strings or records)"
        )
    return value


def _arrays_to_bytes(arrays: Any) -> bytes:
    if not isinstance(arrays, Mapping):
        raise CheckpointError(
            f"arrays must be a dict of name -> numpy array, got {type(arrays).__name__}"
        )
    checked = {name: _check_array(name, value) for name, value in arrays.items()}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, array in checked.items():
            info = zipfile.ZipInfo(name + ".npy", date_time=_ZIP_DATE)
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, array, allow_pickle=False)
    return buf.getvalue()


def _state_to_bytes(state: Any) -> bytes:
    if not isinstance(state, dict):
        raise CheckpointError(f"state must be a dict, got {type(state).__name__}")
    _check_plain(state, "state")
    return (json.dumps(state, indent=1) + "\n").encode()


def _check_plain(value: Any, where: str) -> None:
    """Refuse what JSON would not give back as it was (tuples, numpy scalars,
    non-string keys), naming where it is."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise CheckpointError(
                    f"{where}: key {key!r} is not a string; JSON keys must be strings"
                )
            _check_plain(item, f"{where}.{key}")
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    raise CheckpointError(
        f"{where}: a {type(value).__name__} is not plain JSON data (use dicts with "
        "string keys, lists, str, int, float, bool or None)"
    )


# --- reading ------------------------------------------------------------------------


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """The checkpoint folders (``step-*``) in `directory`, oldest first; none if
    it does not exist. Temporary folders are ignored."""
    directory = Path(directory)
    if not os.path.lexists(directory):
        return []
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a folder, cannot hold checkpoints")
    found = []
    for name in os.listdir(directory):
        match = _STEP_NAME.fullmatch(name)
        if match and name == step_name(int(match[1])):
            found.append((int(match[1]), directory / name))
    return [path for _, path in sorted(found)]


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read the checkpoint in folder `path`, verifying its manifest, sizes and
    SHA-256s; CheckpointError says what is wrong if anything is."""
    path = Path(path)
    manifest = _read_manifest(path)
    data = {name: _read_file(path, name, manifest["files"][name]) for name in FILES}
    return Checkpoint(
        path=path,
        step=manifest["step"],
        arrays=_arrays_from_bytes(path, data[ARRAYS]),
        optimizer=data[OPTIMIZER],
        state=_state_from_bytes(path, data[STATE]),
    )


def load_latest_checkpoint(
    directory: str | os.PathLike, *, warn: Callable[[str], None] | None = None
) -> Checkpoint | None:
    """The newest checkpoint in `directory` that verifies, or None if there is
    none. Each bad newer one is skipped with a message to `warn` (default: the
    "optsvc" logger's warning); CheckpointError if none verifies."""
    warn = warn if warn is not None else logger.warning
    directory = Path(directory)
    candidates = _candidates(directory)
    errors = []
    for path in candidates:
        try:
            return load_checkpoint(path)
        except CheckpointError as err:
            errors.append(err)
            warn(f"skipping a bad checkpoint: {err}")
    if errors:
        raise CheckpointError(
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
        match = _HIDDEN_NAME.fullmatch(name)
        if match and match[1] == "old":
            found.append((int(match[2]), 0, directory / name))
    return [path for *_, path in sorted(found, key=lambda f: f[:2], reverse=True)]


def _fail(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(f"{path}: {problem}")


def _read_manifest(path: Path) -> dict:
    if not path.is_dir():
        if os.path.lexists(path):
            raise _fail(path, "not a folder (a checkpoint is a folder)")
        raise _fail(path, "no such checkpoint folder")
    try:
        raw = (path / MANIFEST).read_bytes()
    except FileNotFoundError:
        raise _fail(
            path, f"{MANIFEST} is missing (an empty or unfinished checkpoint folder)"
        ) from None
    except OSError as err:
        raise _fail(path, f"cannot read {MANIFEST} ({err})") from None
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is one too
        raise _fail(path, f"{MANIFEST} is not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else manifest
        raise _fail(path, f"{MANIFEST} is not a checkpoint manifest ({found!r:.60})")
    if not _is_int(manifest.get("version")) or manifest["version"] != VERSION:
        raise _fail(
            path,
            f"{MANIFEST} has format version {manifest.get('version')!r}; this "
            f"optsvc reads version {VERSION}",
        )
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    if manifest.get("manifest_sha256") != _manifest_digest(body):
        raise _fail(path, f"{MANIFEST} is corrupt: its own checksum does not match")
    problem = _manifest_problem(body)
    if problem:
        raise _fail(path, f"{MANIFEST} is malformed: {problem}")
    folder_step = _folder_step(path.name)
    if folder_step is not None and folder_step != body["step"]:
        raise _fail(
            path,
            f"{MANIFEST} is for step {body['step']}, but the folder is named for "
            f"step {folder_step}",
        )
    return body


def _folder_step(name: str) -> int | None:
    match = _STEP_NAME.fullmatch(name)
    if match:
        return int(match[1])
    match = _HIDDEN_NAME.fullmatch(name)
    return int(match[2]) if match else None


def _manifest_problem(body: dict) -> str | None:
    expected = {"format", "version", "step", "created_by", "files"}
    if set(body) != expected:
        return f"its keys are {sorted(body)}, expected {sorted(expected)}"
    if not _is_int(body["step"]) or body["step"] < 0:
        return f"step {body['step']!r} is not an int >= 0"
    files = body["files"]
    if not isinstance(files, dict) or set(files) != set(FILES):
        return f"'files' should list {', '.join(FILES)}"
    for name, entry in files.items():
        if (
            not isinstance(entry, dict)
            or set(entry) != {"size", "sha256"}
            or not _is_int(entry["size"])
            or entry["size"] < 0
            or not isinstance(entry["sha256"], str)
            or not _SHA256.fullmatch(entry["sha256"])
        ):
            return f"the entry of {name} should be {{'size': int, 'sha256': hex}}"
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_file(path: Path, name: str, entry: dict) -> bytes:
    try:
        with open(path / name, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size != entry["size"]:
                cut = " (truncated)" if size < entry["size"] else ""
                raise _fail(
                    path,
                    f"{name} is {size} bytes, but {MANIFEST} says {entry['size']}{cut}",
                )
            data = f.read()
    except FileNotFoundError:
        raise _fail(path, f"{name} is missing") from None
    except OSError as err:
        raise _fail(path, f"cannot read {name} ({err})") from None
    if (
        len(data) != entry["size"]
        or hashlib.sha256(data).hexdigest() != entry["sha256"]
    ):
        raise _fail(path, f"{name} does not match its SHA-256 in {MANIFEST} (corrupt)")
    return data


def _arrays_from_bytes(path: Path, data: bytes) -> dict[str, np.ndarray]:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise _fail(path, f"{ARRAYS} is not a readable .npz archive ({err})") from None
    arrays: dict[str, np.ndarray] = {}
    with zf:
        for info in zf.infolist():
            name = info.filename.removesuffix(".npy")
            if name == info.filename or name in arrays:
                raise _fail(path, f"{ARRAYS}: unexpected member {info.filename!r}")
            arrays[name] = _read_member(path, zf, info, name)
    return arrays


def _read_member(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str):
    fmt = np.lib.format
    try:
        # The header first: the dtype decides whether the data may be read at all.
        with zf.open(info) as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = fmt.read_array_header_2_0(f)
            else:
                raise _fail(path, f"{ARRAYS}: {name!r} uses .npy version {version}")
        if dtype.hasobject:
            raise _fail(
                path,
                f"{ARRAYS}: {name!r} is an object array, which only pickle could "
                "load; refused",
            )
        if dtype.kind not in _KINDS:
            raise _fail(path, f"{ARRAYS}: {name!r} has unsupported dtype {dtype}")
        if math.prod(shape) * dtype.itemsize > info.file_size:
            raise _fail(path, f"{ARRAYS}: {name!r} is shorter than its shape says")
        with zf.open(info) as f:
            return fmt.read_array(f, allow_pickle=False)
    except CheckpointError:
        raise
    except Exception as err:  # a corrupt member raises many kinds of error
        raise _fail(
            path, f"{ARRAYS}: {name!r} is not readable ({type(err).__name__}: {err})"
        ) from None


def _state_from_bytes(path: Path, data: bytes) -> dict:
    try:
        state = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as err:
        raise _fail(path, f"{STATE} is not valid JSON ({err})") from None
    if not isinstance(state, dict):
        raise _fail(path, f"{STATE} does not hold a JSON object")
    return state
