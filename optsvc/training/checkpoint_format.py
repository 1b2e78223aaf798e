"""What is in a checkpoint folder, file by file, and how it is checked.

`optsvc.training.checkpoints` saves and loads checkpoint folders (atomically, with crash
recovery and pruning); this module knows their contents: the file names and
folder names, the manifest (format, version, step, each file's size and
SHA-256, its own checksum), ``arrays.npz`` (numeric arrays only, written with
fixed timestamps and read without pickle, the header checked before the data),
and ``state.json`` (plain JSON data only). Encoding checks what the caller
gives and raises StateError naming what is wrong; decoding verifies what
is read and raises StateError naming the folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import stat
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from optsvc.errors import StateError
from optsvc.fileio import inflates, read_regular

FORMAT = "optsvc.checkpoint"
VERSION = 1
ARRAYS, OPTIMIZER, STATE = "arrays.npz", "optimizer.bin", "state.json"
MANIFEST = "manifest.json"
FILES = (ARRAYS, OPTIMIZER, STATE)

STEP_NAME = re.compile(r"step-(\d+)")
HIDDEN_NAME = re.compile(r"\.(tmp|old|del)-step-(\d+)-(\d+)")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_KINDS = "biufc"  # bool, integer, float, complex: no objects, strings or records
MANIFEST_LIMIT = 2**20  # a manifest lists four files: a few hundred bytes
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed, so that equal arrays give equal bytes


def _fail(path: Path, problem: str) -> StateError:
    return StateError(f"{path}: {problem}")


def step_name(step: int) -> str:
    """The folder name of a step's checkpoint.

    >>> step_name(1234)
    'step-00001234'
    """
    return f"step-{step:08d}"


# --- the manifest ---------------------------------------------------------------------


def manifest_to_bytes(manifest: dict) -> bytes:
    """The manifest as written: sorted, indented JSON with its own checksum."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    full = dict(body, manifest_sha256=_manifest_digest(body))
    return json.dumps(full, indent=1, sort_keys=True).encode()


def _manifest_digest(body: dict) -> str:
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def read_manifest(path: Path) -> dict:
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
        raw = read_regular(path / MANIFEST, MANIFEST_LIMIT, MANIFEST)
    except StateError as err:
        raise _fail(path, f"cannot read {MANIFEST}: {err}") from None
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
    match = STEP_NAME.fullmatch(name)
    if match:
        return int(match[1])
    match = HIDDEN_NAME.fullmatch(name)
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


def read_file(path: Path, name: str, entry: dict) -> bytes:
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
    if stat.S_ISREG(info.st_mode) and info.st_size != entry["size"]:
        cut = " (truncated)" if info.st_size < entry["size"] else ""
        raise _fail(
            path,
            f"{name} is {info.st_size} bytes, but {MANIFEST} says {entry['size']}{cut}",
        )
    try:
        data = read_regular(path / name, entry["size"], name)
    except StateError as err:
        raise _fail(path, f"cannot read {name}: {err}") from None
    if (
        len(data) != entry["size"]
        or hashlib.sha256(data).hexdigest() != entry["sha256"]
    ):
        raise _fail(path, f"{name} does not match its SHA-256 in {MANIFEST} (corrupt)")
    return data


# --- encoding what is saved, checked first --------------------------------------------


def check_step(step: Any) -> int:
    """`step` as an int, if it is one >= 0."""
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise StateError(f"step must be an int, got {step!r}")
    if step < 0:
        raise StateError(f"step must be >= 0, got {step}")
    return int(step)


def check_bytes(optimizer: Any) -> bytes:
    """The optimizer's state as bytes, if it is bytes-like."""
    if not isinstance(optimizer, (bytes, bytearray, memoryview)):
        raise StateError(
            "optimizer must be bytes, such as Optimizer.to_bytes(), got a "
            f"{type(optimizer).__name__}"
        )
    return bytes(optimizer)


def _check_array(name: Any, value: Any) -> np.ndarray:
    if not isinstance(name, str) or not name or "\x00" in name:
        raise StateError(
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
        raise StateError(
            f"arrays[{name!r}]: expected a numpy array, got {type(value).__name__}"
            + hint
        )
    if value.dtype.kind not in _KINDS:
        raise StateError(
            f"arrays[{name!r}] has dtype {value.dtype}; only bool, integer, float "
            "and complex arrays can be saved (no objects, strings or records)"
        )
    return value


def arrays_to_bytes(arrays: Any) -> bytes:
    """`arrays.npz`: each array checked, stored uncompressed, no pickle."""
    if not isinstance(arrays, Mapping):
        raise StateError(
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


def state_to_bytes(state: Any) -> bytes:
    """`state.json`: the caller's dict, if it is plain JSON data."""
    if not isinstance(state, dict):
        raise StateError(f"state must be a dict, got {type(state).__name__}")
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


# --- decoding what is read ------------------------------------------------------------


def arrays_from_bytes(path: Path, data: bytes) -> dict[str, np.ndarray]:
    """The arrays of `arrays.npz`, each header checked before its data."""
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
            arrays[name] = _read_member(path, zf, info, name, len(data))
    return arrays


def _read_member(
    path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, size: int
):
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
        if inflates(info, size):
            # Checkpoints store arrays uncompressed; a compressed member could
            # inflate to far more than the file, so it is not opened.
            raise _fail(
                path,
                f"{ARRAYS}: {name!r} is compressed or declares {info.file_size} "
                "bytes, more than the archive holds; refused",
            )
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
    except StateError:
        raise
    except Exception as err:  # a corrupt member raises many kinds of error
        raise _fail(
            path, f"{ARRAYS}: {name!r} is not readable ({type(err).__name__}: {err})"
        ) from None


def state_from_bytes(path: Path, data: bytes) -> dict:
    """The dict of `state.json`."""
    try:
        state = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as err:
        raise _fail(path, f"{STATE} is not valid JSON ({err})") from None
    if not isinstance(state, dict):
        raise _fail(path, f"{STATE} does not hold a JSON object")
    return state
