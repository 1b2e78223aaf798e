"""What resume restores: everything a checkpoint records, and how it is read back.

A training checkpoint (see `optsvc.training.checkpoints` for the folder) holds

- the model's weights: one array `w:KEY` each in ``arrays.npz``
  (`weight_arrays`, restored by `restore_model`);
- the optimizer's state: ``optimizer.bin``, `Optimizer.to_bytes()` (moments,
  averages, update counts, the schedule step, the last score and the state of
  every schedule, such as plateau's patience), restored by `restore_model`;
- `TrainState`: everything else that decides what happens next. The data
  position (epoch, cursor and this epoch's order of the examples, the array
  ``data_order``), the random generator that draws the next order, the loss
  summed since the last evaluation, the skipped-step count, the evaluations
  (last score, best score, evaluations since the best: early stopping), the
  best evaluation's weights (what ``best.npz`` holds, the arrays
  ``best:NAME``) and whether and why the run ended.
  `TrainState.to_checkpoint` writes it, `TrainState.from_checkpoint` reads
  it back and checks every value.

Before anything is restored, `check_fits` checks what a checkpoint holds
against the run (its model, its optimizer as the config builds it, the data):
a checkpoint that passes its checksums but does not fit is skipped like a
corrupt one, for the previous good one.

Nothing else is restored: a resumed run that ends, with the same config, as
an uninterrupted one did, bit for bit on the CPU, is the test of this list.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from optsvc.about import __version__
from optsvc.backends import get_ops
from optsvc.config import SystemSection, TrainingSection
from optsvc.errors import StateError
from optsvc.optim import Optimizer, ParamStore
from optsvc.optim.serialize import decode_optimizer, schedule_to_json
from optsvc.training.checkpoints import Checkpoint, config_hash

EARLY_STOP, MAX_STEPS = "early_stop", "max_steps"
STOP_REASONS = (EARLY_STOP, MAX_STEPS)
DATA_ORDER = "data_order"  # the array in arrays.npz
BEST = "best:"  # the prefix of the best evaluation's arrays in arrays.npz
# Counters are saved as JSON ints; beyond int64 they could not be real.
_MAX_COUNT = 2**63 - 1

# The counters of state.json that every checkpoint has had, and the numbers.
_COUNTERS = ("step", "epoch", "cursor", "loss_count", "evals_since_best",
             "skipped_steps")  # fmt: skip
_SCORES = ("score", "best_score")


# Settings that change how a run is recorded, not what it computes.
NOT_RELEVANT = {("training", "checkpoint_frequency"), ("training", "keep_checkpoints"),
                ("training", "max_steps"), ("training", "logger"),
                ("system", "gpu_id")}  # fmt: skip


def relevant_config(config: dict) -> dict:
    """The config without the settings in NOT_RELEVANT."""
    out = json.loads(json.dumps(config))
    for section, key in NOT_RELEVANT:
        if isinstance(out.get(section), dict):
            out[section].pop(key, None)
    return out


def comparable(relevant: dict) -> dict:
    """A training-relevant config with the defaults of [system] and [training]
    written out, so that a run's own filled config.cfg compares equal to the
    config it was started from."""
    out = json.loads(json.dumps(relevant))
    defaults = {"system": SystemSection(), "training": TrainingSection()}
    for name, section in defaults.items():
        if isinstance(out.get(name), dict):
            out[name] = {**section.model_dump(), **out[name]}
    return relevant_config(out)


def same_config(saved: dict, relevant: dict) -> bool:
    """Whether a checkpoint's recorded config and the run's training-relevant
    config are the same run's, with the defaults of [system] and [training]
    written out on both sides."""
    return config_hash(comparable(saved)) == config_hash(comparable(relevant))


def key_name(key: tuple) -> str:
    """A parameter key as it is named in checkpoints and final.npz.

    >>> key_name((0, "W"))
    '0/W'
    """
    return "/".join(str(k) for k in key)


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
    stopped: str | None = None  # None while running, else one of STOP_REASONS
    # The best evaluation's weights, as best.npz holds them (`run_weights`).
    best: dict[str, np.ndarray] | None = None
    # What the run was started with: resume refuses another config with a diff.
    config: dict | None = None  # the training-relevant config
    max_steps: int | None = None
    backend: str = field(default="numpy")

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
        """The record as `state.json` data and arrays for ``arrays.npz``."""
        state = {
            "step": self.step, "epoch": self.epoch, "cursor": self.cursor,
            "rng": self.rng.bit_generator.state, "loss_sum": self.loss_sum,
            "loss_count": self.loss_count, "best_score": self.best_score,
            "evals_since_best": self.evals_since_best, "score": self.score,
            "skipped_steps": self.skipped_steps, "stopped": self.stopped,
            "config": self.config, "max_steps": self.max_steps,
            "config_hash": None if self.config is None else config_hash(self.config),
            "backend": self.backend, "optsvc": __version__,
        }  # fmt: skip
        best = {f"{BEST}{name}": array for name, array in (self.best or {}).items()}
        return state, {DATA_ORDER: np.asarray(self.order), **best}

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint) -> TrainState:
        """The record a checkpoint holds, every value checked; StateError
        (a checkpoint to skip, like a corrupt one) naming what is wrong."""
        raw, where = checkpoint.state, checkpoint.path

        def bad(problem: str) -> StateError:
            return StateError(f"{where}: state.json {problem}")

        for name in (*_COUNTERS, "loss_sum", *_SCORES, "rng"):
            if name not in raw:
                raise bad(f"has no '{name}'")
        counts = {name: _count(raw[name], name, bad) for name in _COUNTERS}
        if counts["step"] != checkpoint.step:
            raise bad(
                f"is for step {counts['step']}, the checkpoint for {checkpoint.step}"
            )
        order = _order(checkpoint.arrays.get(DATA_ORDER), bad)
        if counts["cursor"] > order.size:
            raise bad(f"has a data position {counts['cursor']} past the data")
        best_score = _score(raw["best_score"], "best_score", bad)
        return cls(
            order=order,
            rng=_generator(raw["rng"], bad),
            loss_sum=_number(raw["loss_sum"], "loss_sum", bad),
            score=_score(raw["score"], "score", bad),
            best_score=best_score,
            best=_best(checkpoint.arrays, best_score, counts["step"], bad),
            stopped=_stop_reason(raw.get("stopped"), bad),
            config=_config(raw.get("config"), bad),
            max_steps=_max_steps(raw.get("max_steps"), bad),
            backend=str(raw.get("backend", "numpy")),
            **counts,
        )


def _count(value: Any, name: str, bad) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(f"has a bad '{name}' ({value!r:.60})")
    if not 0 <= value <= _MAX_COUNT:
        raise bad(f"has '{name}' = {value:.3g} out of range")
    return value


def _number(value: Any, name: str, bad) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad(f"has a bad '{name}' ({value!r:.60})")
    if isinstance(value, int) and abs(value) > _MAX_COUNT:
        raise bad(f"has '{name}' = {value:.3g} out of range")
    if math.isnan(value):
        raise bad(f"has '{name}' = NaN")
    return value


def _score(value: Any, name: str, bad) -> float | None:
    return None if value is None else _number(value, name, bad)


def _stop_reason(value: Any, bad) -> str | None:
    if value is not None and value not in STOP_REASONS:
        raise bad(f"has a bad 'stopped' ({value!r:.60})")
    return value


def _config(value: Any, bad) -> dict | None:
    if value is not None and not isinstance(value, dict):
        raise bad(f"has a bad 'config' ({value!r:.60})")
    return value


def _max_steps(value: Any, bad) -> int | None:
    return None if value is None else _count(value, "max_steps", bad)


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
    written before the first evaluation, or by earlier optsvc versions), checked
    against its best score and step."""
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
    """The weights as checkpoints and final.npz name them (`w:KEY`), on the host."""
    return {f"w:{key_name(k)}": ops.to_numpy(store.weights(k)) for k in store}


def run_weights(
    store: ParamStore, ops, averages, *, step: int, score: float
) -> dict[str, np.ndarray]:
    """What final.npz and best.npz hold: the weights (`w:KEY`), their averages
    when the optimizer keeps them (`avg:KEY`, what the dev score is computed
    with), the step and the dev score: copies on the host, which later
    updates leave as they are."""
    arrays = {name: np.array(a) for name, a in weight_arrays(store, ops).items()}
    for key in store:
        if averages and key in averages:
            arrays[f"avg:{key_name(key)}"] = np.array(ops.to_numpy(averages[key]))
    arrays["step"] = np.asarray(step, dtype=np.int64)
    arrays["score"] = np.asarray(score, dtype=np.float64)
    return arrays


def restore_model(
    checkpoint: Checkpoint,
    store: ParamStore,
    optimizer: Optimizer,
    ops,
    *,
    n_train: int,
) -> None:
    """Load the checkpoint's weights into `store` and its state into
    `optimizer`, after checking that they fit the model and the data of
    `n_train` examples; StateError, naming what does not fit, leaves the
    weights untouched."""
    arrays, names = checkpoint.arrays, {f"w:{key_name(k)}": k for k in store}
    _check_model(checkpoint, store, n_train)
    try:
        optimizer.from_bytes(checkpoint.optimizer)
    except ValueError as err:  # StateError
        raise StateError(f"its optimizer state is refused: {err}") from None
    for key in store:
        average = (optimizer.averages or {}).get(key)
        moment = optimizer.mom1.get(key)
        if (average is not None and average.shape != store.shape(key)) or (
            moment is not None and moment.size != store.size_of(key)
        ):
            raise StateError(
                f"its optimizer state for parameter {key} does not fit the model"
            )
    for name, key in names.items():
        store.weights(key)[...] = ops.asarray(arrays[name])


def check_fits(
    checkpoint: Checkpoint,
    store: ParamStore,
    optimizer: Optimizer,
    *,
    n_train: int,
    config: dict | None = None,
) -> TrainState:
    """The checkpoint's TrainState, after checking that what it holds fits
    the run: weights (keys, shapes, dtypes, all finite), the data order, and
    the optimizer state (its kind, schedules and options as the run's
    `optimizer` has them, its keys and shapes as the model's, finite moments,
    counters in range). A checkpoint that passes its checksums but fails a
    check lies, and is treated like a corrupt one: StateError naming what
    is wrong, so that `load_latest_checkpoint` falls back to an older one.

    A checkpoint of another config (not `same_config` as `config`, the
    run's training-relevant config) is not checked against the model: the
    resume refuses it with the difference instead (`check_resumable`).
    """
    saved = TrainState.from_checkpoint(checkpoint)
    if config is not None and saved.config is not None:
        if not same_config(saved.config, config):
            return saved

    def bad(problem: str) -> StateError:
        return StateError(f"{checkpoint.path}: {problem}")

    try:
        _check_model(checkpoint, store, n_train)
    except StateError as err:
        raise bad(str(err)) from None
    for name, array in checkpoint.arrays.items():
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            raise bad(f"arrays.npz: '{name}' holds NaN or infinite values")
    _check_optimizer(checkpoint, store, optimizer, bad)
    return saved


def _check_optimizer(checkpoint, store: ParamStore, optimizer: Optimizer, bad):
    try:
        saved = decode_optimizer(
            checkpoint.optimizer, like=optimizer.schedules, ops=get_ops("numpy")
        )
    except Exception as err:  # a refused state, or one that breaks the decoder
        raise bad(
            f"its optimizer state is refused ({type(err).__name__}: {err})"
        ) from None
    kinds = {True: "RAdam", False: "Adam or SGD"}
    if saved.use_radam != optimizer.use_radam:
        raise bad(
            f"optimizer.bin holds {kinds[saved.use_radam]} state, but the run's "
            f"optimizer is {kinds[optimizer.use_radam]}"
        )
    if saved.L2_is_weight_decay != optimizer.L2_is_weight_decay:
        raise bad("optimizer.bin has another L2_is_weight_decay than the run's")
    if saved.state.use_averages != (optimizer.averages is not None):
        raise bad("optimizer.bin disagrees with the run's use_averages")
    for name, schedule in optimizer.schedules.items():
        mine = _schedule_form(schedule, name)
        if name not in saved.schedules or mine != _schedule_form(
            saved.schedules[name], name
        ):
            raise bad(f"optimizer.bin has another '{name}' than the run's config")
    if not 0 <= saved.step <= _MAX_COUNT:
        raise bad(f"optimizer.bin has a step count {saved.step} out of range")
    _check_slots(saved.state, store, checkpoint.step, bad)


def _check_slots(state, store: ParamStore, step: int, bad) -> None:
    keys, model = set(state.slots), set(store)
    if keys and keys != model:
        raise bad(
            "optimizer.bin holds state for other parameters than the model's "
            f"({len(keys - model)} unknown, {len(model - keys)} missing)"
        )
    for key, slot in state.slots.items():
        if tuple(slot.shape) != tuple(store.shape(key)):
            raise bad(f"optimizer.bin: the state of {key} has another shape")
        if not 0 <= slot.nr <= max(step, 0):
            raise bad(f"optimizer.bin: the update count of {key} is {slot.nr}")
        for what in ("m", "v", "ema"):
            array = getattr(slot, what)
            if array is not None and not np.isfinite(np.asarray(array)).all():
                raise bad(f"optimizer.bin: the {what} of {key} is not finite")
        if slot.v is not None and (np.asarray(slot.v) < 0).any():
            raise bad(f"optimizer.bin: the second moment of {key} is negative")


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


def _check_model(checkpoint: Checkpoint, store: ParamStore, n_train: int) -> None:
    arrays, names = checkpoint.arrays, {f"w:{key_name(k)}": k for k in store}
    for name, key in names.items():
        _check_weights(arrays.get(name), key, store)
    extra = sorted(n for n in arrays if n.startswith("w:") and n not in names)
    if extra:
        raise StateError(
            f"it holds weights the model does not have ({', '.join(extra[:3])})"
        )
    best = {n for n in arrays if n.startswith(f"{BEST}w:")}
    if best and best != {f"{BEST}{name}" for name in names}:
        raise StateError("its best weights are not the model's parameters")
    for name, key in names.items():
        for kind in ("w", "avg"):
            saved = arrays.get(f"{BEST}{kind}:{name[2:]}")
            if saved is not None and saved.shape != store.shape(key):
                raise StateError(f"its best weights for {key} have another shape")
    order = arrays.get(DATA_ORDER)
    if order is None or order.size != n_train:
        raise StateError(
            f"its data_order is not an ordering of the {n_train} training examples"
        )


def _check_weights(saved: np.ndarray | None, key: tuple, store: ParamStore) -> None:
    if saved is None:
        raise StateError(f"it holds no weights for parameter {key}")
    dtype = store.flat_weights.dtype
    if saved.shape != store.shape(key) or saved.dtype != dtype:
        raise StateError(
            f"its weights for parameter {key} are {saved.dtype} of shape "
            f"{saved.shape}, but the model's are {dtype} of shape {store.shape(key)}"
        )


__all__ = [
    "TrainState",
    "StateError",
    "EARLY_STOP",
    "MAX_STEPS",
    "weight_arrays",
    "run_weights",
    "restore_model",
    "check_fits",
    "key_name",
    "NOT_RELEVANT",
    "relevant_config",
    "comparable",
    "same_config",
]
