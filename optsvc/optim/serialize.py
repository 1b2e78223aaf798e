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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

import optsvc.schedules  # noqa: F401  (fills SCHEDULE_FNS)
from optsvc.backends import Ops
from optsvc.optim.state import OptimizerState, SlotRecord, StateError
from optsvc.optim.step import RADAM_BUFFER_SLOTS
from optsvc.schedules.base import SCHEDULE_FNS, Schedule
from optsvc.schedules.thinc import PlateauState

FORMAT = "optsvc.optimizer"
VERSION = 1
_META = "__meta__"


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
        with loaded as npz:
            arrays = {name: npz[name] for name in npz.files}
    except Exception as err:  # a corrupt zip raises more than BadZipFile
        raise StateError(f"not a readable optsvc state archive ({err})") from None
    if _META not in arrays:
        raise StateError("not an optsvc state archive: the metadata member is missing")
    try:
        meta = json.loads(arrays.pop(_META).tobytes().decode())
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
    schedules = {
        name: schedule_from_json(js, name, like.get(name))
        for name, js in meta["schedules"].items()
    }
    records = (  # decoded one by one, as from_arrays checks each key's arrays
        SlotRecord(decode_key(entry["key"]), tuple(entry["shape"]), int(entry["nr"]))
        for entry in meta["keys"]
    )
    state = OptimizerState.from_arrays(
        records, arrays, use_averages=bool(meta["settings"]["use_averages"]), ops=ops
    )
    use_radam = bool(meta["settings"]["use_radam"])
    L2_is_weight_decay = bool(meta["settings"]["L2_is_weight_decay"])
    step = int(meta["step"])
    score = meta["last_score"]
    last_score = (int(score[0]), float(score[1])) if score else None
    radam_buffer = [list(b) for b in meta["radam_buffer"]]
    if len(radam_buffer) != RADAM_BUFFER_SLOTS or any(
        len(b) != 3 for b in radam_buffer
    ):
        raise StateError("optimizer state has a bad RAdam buffer")
    # Restored keys hold their own arrays; the next update_store with a
    # ParamStore lays their state out in flat buffers again.
    state.radam_buffer = radam_buffer
    return SavedOptimizer(
        schedules=schedules,
        step=step,
        last_score=last_score,
        use_radam=use_radam,
        L2_is_weight_decay=L2_is_weight_decay,
        state=state,
    )
