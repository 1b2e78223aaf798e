"""What resume restores: everything a checkpoint records, and how it is read back.

A training checkpoint (see `optsvc.training.checkpoints` for the folder) holds

- the model's weights: one array `w:KEY` each in ``arrays.safetensors``
  (`weight_arrays`);
- the optimizer's state: ``optimizer.safetensors``, `Optimizer.to_bytes()`
  (moments, averages, update counts, the schedule step, the last score and
  the state of every schedule, such as plateau's patience);
- `TrainState`: everything else that decides what happens next. The data
  position (epoch, cursor and this epoch's order of the examples, the array
  ``data_order``), the random generator that draws the next order, the loss
  summed since the last evaluation, the skipped-step count, the evaluations
  (last score, best score, evaluations since the best: early stopping), the
  best evaluation's weights (what ``best.safetensors`` holds, the arrays
  ``best:NAME``) and whether and why the run ended. Its ``state.json`` is
  the `StateRecord`.

`open_checkpoint` reads a checkpoint once: it checks that everything in it
fits the run (its model, its optimizer as the config builds it, the data) and
hands back the decoded `Resumable`; a checkpoint that passes its checksums
but does not fit is refused like a corrupt one, for the previous good one.
`restore` then only assigns.

Nothing else is restored: a resumed run that ends, with the same config, as
an uninterrupted one did, bit for bit on the CPU, is the test of this list.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from optsvc.about import __version__
from optsvc.backends import get_ops
from optsvc.config.schema import SECTIONS
from optsvc.errors import StateError
from optsvc.optim import Optimizer, ParamStore
from optsvc.optim.serialize import SavedOptimizer, decode_optimizer, schedule_to_json
from optsvc.records import Count, Number, Record
from optsvc.training.checkpoints import OPTIMIZER, STATE, Checkpoint

EARLY_STOP, MAX_STEPS = "early_stop", "max_steps"
DATA_ORDER = "data_order"  # the array in arrays.safetensors
BEST = "best:"  # the prefix of the best evaluation's arrays in arrays.safetensors

# Settings that change how a run is recorded, not what it computes.
NOT_RELEVANT = {("training", "checkpoint_frequency"), ("training", "keep_checkpoints"),
                ("training", "max_steps"), ("training", "logger"),
                ("system", "gpu_id")}  # fmt: skip


def config_hash(config: str | bytes | Mapping) -> str:
    """SHA-256 (hex) of a config's text, or of a dict's canonical JSON form.

    >>> config_hash({"b": 1, "a": [1, 2]}) == config_hash({"a": [1, 2], "b": 1})
    True
    >>> config_hash("")[:16]
    'e3b0c44298fc1c14'
    """
    data = config
    if isinstance(config, Mapping):
        try:
            data = json.dumps(
                dict(config), sort_keys=True, separators=(",", ":"), ensure_ascii=False
            )
        except (TypeError, ValueError) as err:
            raise StateError(
                f"config_hash: the config is not JSON data ({err})"
            ) from None
    if isinstance(data, str):
        data = data.encode("utf-8")
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError(
            f"config_hash takes the config's text or a dict, got {type(data).__name__}"
        )
    return hashlib.sha256(data).hexdigest()


def relevant_config(config: dict) -> dict:
    """The config without the settings in NOT_RELEVANT."""
    out = json.loads(json.dumps(config))
    for section, key in NOT_RELEVANT:
        if isinstance(out.get(section), dict):
            out[section].pop(key, None)
    return out


def with_defaults(config: dict) -> dict:
    """A copy of a training config with every setting of [system] and
    [training] that it leaves out written out as its default: what the run's
    config.cfg holds."""
    out = json.loads(json.dumps(config))
    for name, section in SECTIONS.items():
        out[name] = {**section().model_dump(), **out.get(name, {})}
    return out


def same_config(saved: dict, relevant: dict) -> bool:
    """Whether a checkpoint's recorded config and the run's training-relevant
    config are the same run's, with the defaults written out on both sides
    (`comparable`)."""
    return config_hash(comparable(saved)) == config_hash(comparable(relevant))


def comparable(relevant: dict) -> dict:
    """A training-relevant config with the defaults written out, so that a
    run's own filled config.cfg compares equal to the config it was started
    from."""
    return relevant_config(with_defaults(relevant))


def key_name(key: tuple) -> str:
    """A parameter key as it is named in checkpoints and weights files.

    >>> key_name((0, "W"))
    '0/W'
    """
    return "/".join(str(k) for k in key)


class StateRecord(Record):
    """state.json: the JSON part of a `TrainState`."""

    step: Count
    epoch: Count
    cursor: Count
    rng: dict[str, Any]
    loss_sum: Number
    loss_count: Count
    score: Number | None
    best_score: Number | None
    evals_since_best: Count
    skipped_steps: Count
    stopped: Literal["early_stop", "max_steps"] | None = None
    config: dict[str, Any] | None = None
    max_steps: Count | None = None
    config_hash: str | None = None
    backend: str = "numpy"
    optsvc: str = ""


# What state.json holds beside the fields of a TrainState.
_NOT_FIELDS = {"rng", "config_hash", "optsvc"}


@dataclass(eq=False)
class TrainState:
    """The loop's state apart from the weights and the optimizer: one record,
    written into each checkpoint and read back on resume.

    >>> state = TrainState.start(n_train=4, seed=0)
    >>> (state.step, state.epoch, state.cursor, state.stopped)
    (0, 0, 4, None)
    """

    order: np.ndarray  # this epoch's order of the training examples
    rng: np.random.Generator  # draws the next epoch's order
    step: int = 0
    epoch: int = 0
    cursor: int = 0  # position in `order`; at its end, a new epoch comes first
    loss_sum: float = 0.0  # over the steps since the last evaluation
    loss_count: int = 0
    skipped_steps: int = 0
    score: float | None = None  # of the last evaluation
    best_score: float | None = None
    evals_since_best: int = 0
    stopped: str | None = None  # None while running, else EARLY_STOP or MAX_STEPS
    # The best evaluation's weights, as best.safetensors holds them.
    best: dict[str, np.ndarray] | None = None
    # What the run was started with: resume refuses another config with a diff.
    config: dict | None = None  # the training-relevant config
    max_steps: int | None = None
    backend: str = "numpy"

    @classmethod
    def start(cls, n_train: int, seed: int) -> TrainState:
        """The state of a fresh run: step 0, a new epoch due first."""
        return cls(
            order=np.arange(n_train),
            rng=np.random.default_rng(seed),
            cursor=n_train,
        )

    def ended_by(self, max_steps: int, patience: int) -> str | None:
        """Why the run is over (EARLY_STOP or MAX_STEPS), or None.

        A run that stopped early stays stopped. Checkpoints written before
        the reason was recorded tell by their count of evaluations without
        improvement: the loop stops as soon as it reaches `patience`.
        """
        if self.stopped == EARLY_STOP or (
            patience and self.evals_since_best >= patience
        ):
            return EARLY_STOP
        return MAX_STEPS if self.step >= max_steps else None

    # --- into a checkpoint and back --------------------------------------------------

    def to_checkpoint(self) -> tuple[dict, dict[str, np.ndarray]]:
        """The record as `state.json` data and arrays for ``arrays.safetensors``."""
        fields = StateRecord.model_fields.keys() - _NOT_FIELDS
        record = StateRecord(
            **{name: getattr(self, name) for name in fields},
            rng=self.rng.bit_generator.state,
            config_hash=None if self.config is None else config_hash(self.config),
            optsvc=__version__,
        )
        best = {f"{BEST}{name}": array for name, array in (self.best or {}).items()}
        return record.model_dump(), {DATA_ORDER: np.asarray(self.order), **best}

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint) -> TrainState:
        """The record a checkpoint holds, every value checked; StateError
        (a checkpoint to skip, like a corrupt one) naming what is wrong."""
        where = f"{checkpoint.path}: {STATE}"
        record = StateRecord.parse(checkpoint.state, where)

        def bad(problem: str) -> StateError:
            return StateError(f"{where} {problem}")

        if record.step != checkpoint.step:
            raise bad(
                f"is for step {record.step}, the checkpoint for {checkpoint.step}"
            )
        order = _order(checkpoint.arrays.get(DATA_ORDER), bad)
        if record.cursor > order.size:
            raise bad(f"has a data position {record.cursor} past the data")
        values = record.model_dump(exclude=_NOT_FIELDS)
        return cls(
            order=order,
            rng=_generator(record.rng, bad),
            best=_best(checkpoint.arrays, record.best_score, record.step, bad),
            **values,
        )


def _order(order: Any, bad) -> np.ndarray:
    if order is None:
        raise bad(f"has no array '{DATA_ORDER}' beside it")
    if (
        order.ndim != 1
        or order.dtype.kind not in "iu"
        or not np.array_equal(np.sort(order), np.arange(order.size))
    ):
        raise bad(f"has a '{DATA_ORDER}' that is not an ordering of the examples")
    return order


def _best(arrays: dict, best_score: float | None, step: int, bad):
    """The best evaluation's weights a checkpoint holds (None in checkpoints
    written before the first evaluation), checked against its best score and
    step."""
    best = {n[len(BEST) :]: a for n, a in arrays.items() if n.startswith(BEST)}
    if not best:
        return None
    meta = {name: best.get(name) for name in ("step", "score")}
    if any(a is None or a.shape != () for a in meta.values()) or (
        meta["step"].dtype.kind not in "iu" or meta["score"].dtype.kind != "f"
    ):
        raise bad("has best weights without their step and score")
    if best_score is None or float(meta["score"]) != best_score:
        raise bad(f"has best weights of another score than its best ({best_score})")
    if not 0 <= int(meta["step"]) <= step:
        raise bad(f"has best weights of step {int(meta['step'])}, after step {step}")
    return best


def _generator(value: Any, bad) -> np.random.Generator:
    rng = np.random.default_rng(0)
    try:
        rng.bit_generator.state = value
    except Exception as err:  # numpy refuses a bad state in many ways
        raise bad(f"has a malformed random generator state ({err})") from None
    return rng


# --- the model's weights and the optimizer -------------------------------------------


def weight_arrays(store: ParamStore, ops) -> dict[str, np.ndarray]:
    """The weights as checkpoints and weights files name them (`w:KEY`), on
    the host."""
    return {f"w:{key_name(k)}": ops.to_numpy(store.weights(k)) for k in store}


def run_weights(
    store: ParamStore, ops, averages, *, step: int, score: float
) -> dict[str, np.ndarray]:
    """What final.safetensors and best.safetensors hold: the weights
    (`w:KEY`), their averages when the optimizer keeps them (`avg:KEY`, what
    the dev score is computed with), the step and the dev score: copies on
    the host, which later updates leave as they are."""
    arrays = {name: np.array(a) for name, a in weight_arrays(store, ops).items()}
    for key in store:
        if averages and key in averages:
            arrays[f"avg:{key_name(key)}"] = np.array(ops.to_numpy(averages[key]))
    arrays["step"] = np.asarray(step, dtype=np.int64)
    arrays["score"] = np.asarray(score, dtype=np.float64)
    return arrays


@dataclass(eq=False)
class Resumable:
    """A checkpoint read once and found to fit the run: its TrainState and
    its decoded optimizer state, which `restore` assigns. `optimizer` is None
    for a checkpoint of another config, which the resume refuses with a diff
    (`run_folder.check_resumable`) and so never restores."""

    checkpoint: Checkpoint
    state: TrainState
    optimizer: SavedOptimizer | None


def open_checkpoint(
    checkpoint: Checkpoint,
    store: ParamStore,
    optimizer: Optimizer,
    *,
    n_train: int,
    config: dict,
) -> Resumable:
    """Everything the checkpoint holds, checked once against the run: the
    weights (keys, shapes, dtypes, all finite), the data order, and the
    optimizer state (its kind, schedules and options as the run's `optimizer`
    has them; a slot for every parameter, of its shape, with as many updates
    as the run made; the schedule step; finite moments and averages). A
    checkpoint that passes its checksums but fails a check lies, and is
    refused like a corrupt one: StateError naming what is wrong."""
    state = TrainState.from_checkpoint(checkpoint)
    if state.config is not None and not same_config(state.config, config):
        return Resumable(checkpoint, state, None)

    def bad(problem: str) -> StateError:
        return StateError(f"{checkpoint.path}: {problem}")

    _check_model(checkpoint.arrays, store, n_train, bad)
    try:
        saved = decode_optimizer(
            checkpoint.optimizer,
            like=optimizer.schedules,
            ops=get_ops("numpy"),
            rule=optimizer.rule,
        )
    except Exception as err:  # a refused state, or one that breaks the decoder
        raise bad(
            f"its optimizer state is refused ({type(err).__name__}: {err})"
        ) from None
    _check_optimizer(saved, optimizer, bad)
    _check_slots(saved, store, state, bad)
    return Resumable(checkpoint, state, saved)


def restore(resumable: Resumable, store: ParamStore, optimizer: Optimizer, ops):
    """Load what `open_checkpoint` checked: the weights into `store`, the
    optimizer's state into `optimizer`."""
    optimizer.restore(resumable.optimizer)
    arrays = resumable.checkpoint.arrays
    for key in store:
        store.weights(key)[...] = ops.asarray(arrays[f"w:{key_name(key)}"])


def _check_optimizer(saved: SavedOptimizer, optimizer: Optimizer, bad) -> None:
    ours, theirs = optimizer.settings, saved.settings
    if saved.state.rule is not optimizer.rule or saved.use_radam != ours.get(
        "use_radam", False
    ):
        raise bad(
            f"{OPTIMIZER} holds {_kind(saved.state.rule, saved.use_radam)} state, "
            f"but the run's optimizer is "
            f"{_kind(optimizer.rule, ours.get('use_radam', False))}"
        )
    for name, value in theirs.items():
        if value != ours[name]:
            raise bad(f"{OPTIMIZER} has another {name} than the run's")
    if saved.state.use_averages != optimizer.state.use_averages:
        raise bad(f"{OPTIMIZER} disagrees with the run's use_averages")
    for name, schedule in optimizer.schedules.items():
        if _schedule_form(schedule, name) != _schedule_form(
            saved.schedules[name], name
        ):
            raise bad(f"{OPTIMIZER} has another '{name}' than the run's config")


def _kind(rule, use_radam: bool) -> str:
    """An optimizer's kind in words: Thinc's rule by its settings."""
    if rule.name == "thinc":
        return "RAdam" if use_radam else "Adam or SGD"
    return rule.title


def _check_slots(saved: SavedOptimizer, store: ParamStore, state: TrainState, bad):
    """A slot for every parameter with elements, each of the parameter's
    shape and updated once a step that was not skipped; the schedules at the
    run's step."""
    updates = state.step - state.skipped_steps
    slots, model = saved.state.slots, {k for k in store if store.size_of(k) > 0}
    if saved.step != state.step:
        raise bad(f"{OPTIMIZER} is at step {saved.step}, the run at {state.step}")
    unknown = set(slots) - model
    if unknown:
        raise bad(f"{OPTIMIZER} holds state for parameters the model does not have")
    for key in model:
        slot = slots.get(key)
        if slot is None and updates == 0:
            continue
        if slot is None:
            raise bad(f"{OPTIMIZER} holds no state for parameter {key}")
        if tuple(slot.shape) != tuple(store.shape(key)):
            raise bad(f"{OPTIMIZER}: the state of {key} has another shape")
        if slot.nr != updates:
            raise bad(
                f"{OPTIMIZER}: {key} was updated {slot.nr} times, but the run made "
                f"{updates} updates"
            )


def _schedule_form(schedule, name: str):
    """A schedule as saved, less what changes while it runs (plateau's state)."""
    try:
        form = schedule_to_json(schedule, name)
    except Exception:  # a generator: nothing to compare with
        return None

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "__plateau_state__"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(form)


def _check_model(arrays: dict, store: ParamStore, n_train: int, bad) -> None:
    names = {f"w:{key_name(k)}": k for k in store}
    dtype = store.flat_weights.dtype
    for name, key in names.items():
        saved = arrays.get(name)
        if saved is None:
            raise bad(f"it holds no weights for parameter {key}")
        if saved.shape != store.shape(key) or saved.dtype != dtype:
            raise bad(
                f"its weights for parameter {key} are {saved.dtype} of shape "
                f"{saved.shape}, but the model's are {dtype} of shape "
                f"{store.shape(key)}"
            )
        for kind in ("w", "avg"):
            best = arrays.get(f"{BEST}{kind}:{name[2:]}")
            if best is not None and best.shape != store.shape(key):
                raise bad(f"its best weights for {key} have another shape")
    extra = sorted(n for n in arrays if n.startswith("w:") and n not in names)
    if extra:
        raise bad(f"it holds weights the model does not have ({', '.join(extra[:3])})")
    best = {n for n in arrays if n.startswith(f"{BEST}w:")}
    if best and best != {f"{BEST}{name}" for name in names}:
        raise bad("its best weights are not the model's parameters")
    if arrays[DATA_ORDER].size != n_train:  # TrainState checked that it is there
        raise bad(
            f"its data_order is not an ordering of the {n_train} training examples"
        )
    for name, array in arrays.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise bad(f"{name} holds NaN or infinite values")
