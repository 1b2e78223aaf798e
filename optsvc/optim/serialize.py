"""Optimizer state as bytes: safetensors arrays plus one JSON record.

`Optimizer.to_bytes` hands a `SavedOptimizer` to `encode_optimizer`;
`Optimizer.from_bytes` gets one back from `decode_optimizer` and takes it
over. The arrays (each key's state arrays by the rule's names, `m{i}`,
`v{i}`, `z{i}`, ..., and its average `ema{i}`) are safetensors; everything
else is the `SavedState` record in the header, with a SHA-256 over both that
is checked before anything is restored. Loading never runs code: safetensors
holds numbers only, the record is JSON, and schedules are rebuilt from their
names. Version 3 names the optimizer's rule and holds its settings and
running sums; version 2 (SGD, Adam and RAdam only) is still read.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field, StrictBool, StrictInt, StrictStr

import optsvc.schedules  # noqa: F401  (fills SCHEDULE_FNS)
from optsvc.backends import Ops
from optsvc.errors import ConfigError, StateError
from optsvc.fileio import decode_arrays, encode_arrays
from optsvc.optim.hyperparams import check_restored
from optsvc.optim.rules import RULES, THINC, Rule
from optsvc.optim.state import OptimizerState, SlotRecord
from optsvc.optim.step import RADAM_BUFFER_SLOTS
from optsvc.records import Count, Number, Record
from optsvc.schedules.base import SCHEDULE_FNS, Schedule
from optsvc.schedules.thinc import PlateauState
from optsvc.spec import MAX_INT

FORMAT = "optsvc.optimizer"
VERSION = 3
WHAT = "optimizer state"


class SavedKey(Record):
    key: StrictInt | StrictStr | list[Any]
    shape: list[Count]
    nr: Count


class SavedSchedule(Record):
    name: StrictStr
    attrs: dict[str, Any]


class _Common(Record):
    """What both versions of the header hold."""

    format: Literal["optsvc.optimizer"] = Field(description="what the bytes hold")
    use_averages: StrictBool
    step: Count = Field(description="the step of the schedules")
    last_score: tuple[Count, Number] | None = Field(
        description="the last score, [step, score]"
    )
    radam_buffer: list[tuple[Count | None, Number | None, Number | None]] = Field(
        min_length=RADAM_BUFFER_SLOTS,
        max_length=RADAM_BUFFER_SLOTS,
        description="RAdam's memo of its step sizes",
    )
    schedules: dict[str, SavedSchedule] = Field(
        description="each hyperparameter's schedule"
    )
    keys: list[SavedKey] = Field(description="each key's shape and update count")
    sha256: str = ""


class SavedState(_Common):
    """The header of saved optimizer state: everything but the arrays."""

    version: Literal[3] = Field(description=f"this optsvc reads version {VERSION}")
    rule: StrictStr = Field(description="the optimizer's rule (optsvc.optim.rules)")
    settings: dict[str, StrictBool | StrictInt] = Field(
        description="the rule's settings"
    )
    sums: list[Number] | None = Field(description="the rule's running sums")
    pending: list[Number] | None = Field(
        description="the sums after this step's updates, not yet taken"
    )


class SavedStateV2(_Common):
    """Version 2 of the header: Thinc's optimizers, their two settings."""

    version: Literal[2]
    use_radam: StrictBool
    L2_is_weight_decay: StrictBool

    def upgraded(self) -> SavedState:
        """The same state as a version 3 header."""
        data = self.model_dump(exclude={"version", "use_radam", "L2_is_weight_decay"})
        settings = {"use_radam": self.use_radam}
        settings["L2_is_weight_decay"] = self.L2_is_weight_decay
        return SavedState(
            **data, version=VERSION, rule=THINC.name, settings=settings, sums=None,
            pending=None,
        )  # fmt: skip


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
    if isinstance(data, list):
        return tuple(decode_key(k) for k in data)
    if isinstance(data, (str, int)) and not isinstance(data, bool):
        return data
    raise StateError(f"{WHAT} is corrupt: a key holds {data!r:.60}")


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


def _digest(arrays: Mapping[str, np.ndarray], meta: SavedState) -> str:
    """SHA-256 over the record (less its own checksum) and the arrays."""
    h = hashlib.sha256(meta.model_dump_json(exclude={"sha256"}).encode())
    for name in sorted(arrays):
        a = arrays[name]
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class SavedOptimizer:
    """Everything an optimizer needs to continue bit-identically: what
    `encode_optimizer` writes and `decode_optimizer` reads back. The rule is
    the state's (`state.rule`)."""

    schedules: Mapping[str, Schedule]
    step: int
    last_score: tuple[int, float] | None
    settings: Mapping[str, Any]
    pending: tuple[float, ...] | None
    state: OptimizerState

    @property
    def use_radam(self) -> bool:
        """Whether the state is RAdam's (Thinc's rule with `use_radam`)."""
        return bool(self.settings.get("use_radam", False))


def encode_optimizer(saved: SavedOptimizer) -> bytes:
    """`saved` as safetensors bytes: the state's arrays, and the record of
    everything else in the header, with a SHA-256 over both."""
    records, arrays = saved.state.to_arrays()
    state = saved.state
    meta = SavedState(
        format=FORMAT,
        version=VERSION,
        rule=state.rule.name,
        settings=dict(saved.settings),
        sums=None if state.sums is None else list(state.sums),
        pending=None if saved.pending is None else list(saved.pending),
        use_averages=saved.state.use_averages,
        step=saved.step,
        last_score=saved.last_score,
        radam_buffer=[tuple(slot) for slot in saved.state.radam_buffer],
        schedules={n: schedule_to_json(s, n) for n, s in saved.schedules.items()},
        keys=[
            SavedKey(key=encode_key(key), shape=list(shape), nr=nr)
            for key, shape, nr in records
        ],
    )
    meta.sha256 = _digest(arrays, meta)
    return encode_arrays(arrays, meta.model_dump_json())


def read_archive(data: bytes) -> tuple[SavedState, dict[str, np.ndarray]]:
    """The record and the arrays of saved state, checked; StateError if not."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise StateError(f"{WHAT} must be bytes, got a {type(data).__name__}")
    arrays, text = decode_arrays(bytes(data), "not a readable optsvc state archive")
    if text is None:
        raise StateError("not an optsvc state archive: its metadata is missing")
    record = _Version.parse(text, f"{WHAT} is corrupt: its metadata")
    header = SavedStateV2 if record.version == 2 else SavedState
    meta = header.parse(text, f"{WHAT} is corrupt: its metadata")
    if meta.sha256 != _digest(arrays, meta):
        raise StateError(f"{WHAT} is corrupt: its checksum does not match")
    return (meta.upgraded() if record.version == 2 else meta), arrays


class _Version(Record, extra="ignore"):
    """The version of a header, read before the rest."""

    version: Literal[2, 3] = Field(description=f"this optsvc reads version {VERSION}")


def decode_optimizer(
    data: bytes, *, like: Mapping[str, Schedule], ops: Ops, rule: Rule | None = None
) -> SavedOptimizer:
    """The optimizer saved in `data`, its arrays on `ops`; `like` (the
    target's schedules) supplies the functions of schedules that optsvc does
    not know by name. StateError if `data` is not such a state, or (with
    `rule`) not one of that rule."""
    meta, arrays = read_archive(data)
    try:
        return _saved_from(meta, arrays, like, ops, rule)
    except StateError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as err:
        raise StateError(f"{WHAT} is malformed ({type(err).__name__}: {err})") from None


def _saved_from(
    meta: SavedState,
    arrays: dict[str, np.ndarray],
    like: Mapping[str, Schedule],
    ops: Ops,
    target: Rule | None,
) -> SavedOptimizer:
    rule = RULES.get(meta.rule)
    if rule is None:
        raise StateError(f"{WHAT} is corrupt: it names no known rule ({meta.rule!r})")
    if target is not None and rule is not target:
        raise StateError(
            f"{WHAT} is {rule.title}'s; the optimizer it is for is {target.title}"
        )
    problem = rule.settings_problem(meta.settings)
    if problem is None and (meta.sums is None) != (rule.initial_sums is None):
        problem = "its running sums do not fit its rule"
    lengths = {len(x) for x in (meta.sums, meta.pending) if x is not None}
    if problem is None and lengths - {len(rule.initial_sums or ())}:
        problem = "its running sums do not fit its rule"
    if problem:
        raise StateError(f"{WHAT} is corrupt: {problem}")
    if set(meta.schedules) != set(like):
        raise StateError(
            f"{WHAT} is corrupt: it must hold the schedules of {sorted(like)}, it "
            f"holds {sorted(meta.schedules)}"
        )
    schedules = {
        name: schedule_from_json(s.model_dump(), name, like.get(name))
        for name, s in meta.schedules.items()
    }
    try:
        check_restored(schedules, step=meta.step, rule=rule, settings=meta.settings)
    except ConfigError as err:
        raise StateError(f"{WHAT} is corrupt: {err}") from None
    records = []
    for entry in meta.keys:
        key = decode_key(entry.key)
        if int(np.prod(entry.shape, dtype=object)) > MAX_INT:
            raise StateError(f"{WHAT} is corrupt: the size of key {key!r} overflows")
        records.append(SlotRecord(key, tuple(entry.shape), entry.nr))
    state = OptimizerState.from_arrays(
        rule,
        records,
        arrays,
        use_averages=meta.use_averages and rule.keeps_averages,
        ops=ops,
        radam_buffer=[list(slot) for slot in meta.radam_buffer],
        sums=None if meta.sums is None else tuple(meta.sums),
    )
    # Restored keys hold their own arrays; the next update_store with a
    # ParamStore lays their state out in flat buffers again.
    return SavedOptimizer(
        schedules=schedules,
        step=meta.step,
        last_score=meta.last_score,
        settings=dict(meta.settings),
        pending=None if meta.pending is None else tuple(meta.pending),
        state=state,
    )
