"""Optimizer state as bytes: an .npz archive of arrays plus one JSON member.

`Optimizer.to_bytes` hands a `SavedOptimizer` record to `encode_optimizer`;
`Optimizer.from_bytes` gets one back from `decode_optimizer` and takes it
over. Loading never runs code: arrays are read with `allow_pickle=False`, the
rest is JSON, schedules are rebuilt from their names, and a SHA-256 of the
arrays recorded in the JSON is checked before anything is restored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

import optsvc.schedules  # noqa: F401  (fills SCHEDULE_FNS)
from optsvc.backends import Ops
from optsvc.errors import ConfigError, StateError
from optsvc.fileio import inflates
from optsvc.optim.hyperparams import check_last_score, check_restored
from optsvc.optim.state import OptimizerState, SlotRecord
from optsvc.optim.step import RADAM_BUFFER_SLOTS
from optsvc.schedules.base import SCHEDULE_FNS, Schedule
from optsvc.schedules.thinc import PlateauState
from optsvc.spec import MAX_INT, show

FORMAT = "optsvc.optimizer"
VERSION = 1
_META = "__meta__"
# Saved schedules nest a few levels each (plateau around a warmup around a
# constant is about 15); far deeper metadata is damage, refused before parsing
# (Python's json and the decoders here recurse once per level).
MAX_DEPTH = 100
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(rb"[\[\]{}]")


# --- keys ---------------------------------------------------------------------


def encode_key(key: Any) -> Any:
    if isinstance(key, (str, int)) and not isinstance(key, bool):
        return key
    if isinstance(key, tuple):
        return [encode_key(k) for k in key]
    raise StateError(
        f"cannot save parameter key {key!r}: keys must be ints, strings or "
        "tuples of them, such as (node_id, 'W')"
    )


def decode_key(data: Any) -> Any:
    return tuple(decode_key(k) for k in data) if isinstance(data, list) else data


# --- schedules ------------------------------------------------------------------


def schedule_to_json(schedule: Schedule, hparam: str) -> dict:
    """A JSON-able description of `schedule`, its state included."""
    if schedule.name == "generator":
        raise StateError(
            f"cannot save '{hparam}': it comes from a Python generator, whose "
            "position cannot be saved; give a list or a Schedule instead"
        )
    return {
        "name": schedule.name,
        "attrs": {k: _encode(v, hparam) for k, v in schedule.attrs.items()},
    }


def _encode(value: Any, hparam: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Schedule):
        return {"__schedule__": schedule_to_json(value, hparam)}
    if isinstance(value, PlateauState):
        return {"__plateau_state__": dataclasses.asdict(value)}
    if isinstance(value, (list, tuple)):
        return [_encode(v, hparam) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"__dict__": {k: _encode(v, hparam) for k, v in value.items()}}
    if isinstance(value, np.generic):
        return value.item()
    raise StateError(
        f"cannot save the schedule of '{hparam}': it holds a {type(value).__name__} "
        f"({value!r}), which is not plain data"
    )


def schedule_from_json(data: dict, hparam: str, like: Any = None) -> Schedule:
    """Rebuild a schedule; `like` (the schedule it replaces, if any) supplies
    the function of a schedule that optsvc does not know by name."""
    name = data["name"]
    # The target's own schedule of that name first: a user's schedule may
    # share a name with a built-in one.
    if isinstance(like, Schedule) and like.name == name:
        fn = like.function
    else:
        fn = SCHEDULE_FNS.get(name)
    if fn is None:
        raise StateError(
            f"cannot restore the '{name}' schedule of '{hparam}': its function is "
            "not known; build the optimizer with the same schedule, then load"
        )
    like_attrs = like.attrs if isinstance(like, Schedule) else {}
    attrs = {k: _decode(v, hparam, like_attrs.get(k)) for k, v in data["attrs"].items()}
    return Schedule(name, fn, attrs=attrs)


def _decode(value: Any, hparam: str, like: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v, hparam, None) for v in value]
    if isinstance(value, dict):
        if "__schedule__" in value:
            return schedule_from_json(value["__schedule__"], hparam, like)
        if "__plateau_state__" in value:
            return PlateauState(**value["__plateau_state__"])
        if "__dict__" in value:
            return {k: _decode(v, hparam, None) for k, v in value["__dict__"].items()}
        raise StateError(f"unexpected object in the saved schedule of '{hparam}'")
    return value


# --- the optimizer -------------------------------------------------------------


def _digest(arrays: dict[str, np.ndarray], meta: dict) -> str:
    """SHA-256 over the arrays and the metadata (less its own checksum)."""
    h = hashlib.sha256()
    rest = {k: v for k, v in meta.items() if k != "sha256"}
    h.update(json.dumps(rest, sort_keys=True).encode())
    for name in sorted(arrays):
        a = arrays[name]
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class SavedOptimizer:
    """Everything an optimizer needs to continue bit-identically: what
    `encode_optimizer` writes and `decode_optimizer` reads back."""

    schedules: Mapping[str, Schedule]
    step: int
    last_score: tuple[int, float] | None
    use_radam: bool
    L2_is_weight_decay: bool
    state: OptimizerState


def encode_optimizer(saved: SavedOptimizer) -> bytes:
    """`saved` as bytes: an .npz archive of the state's arrays plus the JSON
    of everything else, with a SHA-256 over both."""
    records, arrays = saved.state.to_arrays()
    keys = [
        {"key": encode_key(key), "shape": list(shape), "nr": nr}
        for key, shape, nr in records
    ]
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "settings": {
            "use_radam": saved.use_radam,
            "L2_is_weight_decay": saved.L2_is_weight_decay,
            "use_averages": saved.state.use_averages,
        },
        "step": saved.step,
        "last_score": list(saved.last_score) if saved.last_score else None,
        "radam_buffer": saved.state.radam_buffer,
        "schedules": {n: schedule_to_json(s, n) for n, s in saved.schedules.items()},
        "keys": keys,
        "sha256": "",
    }
    meta["sha256"] = _digest(arrays, meta)
    arrays[_META] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def read_archive(data: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """The JSON and the arrays of a saved state, checked; StateError if not."""
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("a single array, not an .npz archive")
        with loaded as npz:  # only the zip's directory is read so far
            for member in npz.zip.infolist():
                if inflates(member, len(data)):
                    raise StateError(
                        f"member {member.filename!r} is compressed or declares "
                        f"{member.file_size} bytes, more than the archive holds; "
                        "refused"
                    )
            arrays = {name: npz[name] for name in npz.files}
    except StateError:
        raise
    except Exception as err:  # a corrupt zip raises more than BadZipFile
        raise StateError(f"not a readable optsvc state archive ({err})") from None
    if _META not in arrays:
        raise StateError("not an optsvc state archive: the metadata member is missing")
    raw = arrays.pop(_META).tobytes()
    if _depth(raw) > MAX_DEPTH:
        raise StateError(
            f"optimizer state is corrupt: its metadata nests deeper than {MAX_DEPTH} "
            "levels"
        )
    try:
        meta = json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StateError(f"corrupt optsvc state metadata ({err})") from None
    if not isinstance(meta, dict):
        raise StateError("not optimizer state: the metadata is not a JSON object")
    if meta.get("format") != FORMAT:
        raise StateError(f"not optimizer state: format is {meta.get('format')!r}")
    if meta.get("version") != VERSION:
        raise StateError(
            f"optimizer state version {meta.get('version')!r} is not supported "
            f"(this optsvc reads version {VERSION})"
        )
    if meta.get("sha256") != _digest(arrays, meta):
        raise StateError("optimizer state is corrupt: its checksum does not match")
    return meta, arrays


def _depth(raw: bytes) -> int:
    """How deep the JSON text `raw` nests, strings skipped, without parsing it."""
    depth = deepest = 0
    for bracket in _BRACKET.findall(_STRING.sub(b"", raw)):
        depth += 1 if bracket in b"[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _count(value: Any, what: str) -> int:
    """A saved counter, checked: a whole number in [0, 2**63)."""
    if type(value) is not int or not 0 <= value <= MAX_INT:
        raise StateError(
            f"optimizer state is corrupt: {what} must be a whole number in "
            f"[0, 2**63), got {show(value)}"
        )
    return value


def _flag(settings: Any, name: str) -> bool:
    value = settings[name]
    if not isinstance(value, bool):
        raise StateError(
            f"optimizer state is corrupt: setting '{name}' must be true or false, "
            f"got {show(value)}"
        )
    return value


def _shape(entry: dict, key: Any) -> tuple[int, ...]:
    shape = entry["shape"]
    if not isinstance(shape, list):
        raise StateError(f"optimizer state is corrupt: key {key!r} has no shape")
    dims = tuple(_count(d, f"the shape of key {key!r}") for d in shape)
    size = 1
    for d in dims:
        size *= d
    _count(size, f"the size of key {key!r}")
    return dims


def decode_optimizer(
    data: bytes, *, like: Mapping[str, Schedule], ops: Ops
) -> SavedOptimizer:
    """The optimizer saved in `data`, its arrays on `ops`; `like` (the
    target's schedules) supplies the functions of schedules that optsvc does
    not know by name. StateError if `data` is not such a state."""
    meta, arrays = read_archive(data)
    try:
        return _saved_from(meta, arrays, like, ops)
    except StateError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as err:
        raise StateError(
            f"optimizer state is malformed ({type(err).__name__}: {err})"
        ) from None


def _saved_from(
    meta: dict, arrays: dict[str, np.ndarray], like: Mapping[str, Schedule], ops: Ops
) -> SavedOptimizer:
    # In the order the format lists them, so that the first fault is reported.
    saved = meta["schedules"]
    if not isinstance(saved, dict) or set(saved) != set(like):
        found = sorted(saved) if isinstance(saved, dict) else show(saved)
        raise StateError(
            f"optimizer state is corrupt: it must hold the schedules of "
            f"{sorted(like)}, it holds {found}"
        )
    schedules = {
        name: schedule_from_json(js, name, like.get(name)) for name, js in saved.items()
    }
    settings = meta["settings"]
    use_radam = _flag(settings, "use_radam")
    L2_is_weight_decay = _flag(settings, "L2_is_weight_decay")
    use_averages = _flag(settings, "use_averages")
    step = _count(meta["step"], "the step")
    last_score = _last_score(meta["last_score"])
    try:
        check_restored(schedules, step=step, use_radam=use_radam)
    except ConfigError as err:
        raise StateError(f"optimizer state is corrupt: {err}") from None
    records = []
    for entry in meta["keys"]:
        key = decode_key(entry["key"])
        nr = _count(entry["nr"], f"the update count of key {key!r}")
        records.append(SlotRecord(key, _shape(entry, key), nr))
    state = OptimizerState.from_arrays(
        records, arrays, use_averages=use_averages, ops=ops
    )
    state.radam_buffer = _radam_buffer(meta["radam_buffer"])
    # Restored keys hold their own arrays; the next update_store with a
    # ParamStore lays their state out in flat buffers again.
    return SavedOptimizer(
        schedules=schedules,
        step=step,
        last_score=last_score,
        use_radam=use_radam,
        L2_is_weight_decay=L2_is_weight_decay,
        state=state,
    )


def _last_score(score: Any) -> tuple[int, float] | None:
    if score is None:
        return None
    if not isinstance(score, list):
        raise StateError(f"optimizer state is corrupt: last_score is {show(score)}")
    try:
        return check_last_score(tuple(score), 0)
    except ConfigError as err:
        raise StateError(f"optimizer state is corrupt: {err}") from None


def _radam_buffer(data: Any) -> list[list]:
    """RAdam's memo: ten [step, N_sma, step_size] slots of numbers or Nones."""
    buffer = [list(b) for b in data]
    if len(buffer) != RADAM_BUFFER_SLOTS or any(
        len(b) != 3
        or not all(
            x is None or (isinstance(x, (int, float)) and not isinstance(x, bool))
            for x in b
        )
        for b in buffer
    ):
        raise StateError("optimizer state has a bad RAdam buffer")
    return buffer
