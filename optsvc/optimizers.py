"""SGD, Adam and RAdam: one `Optimizer` class with Thinc's API and numbers.

The class does the bookkeeping (schedules, per-key state, update counts,
bias correction); the arithmetic is one fused kernel per backend
(`optsvc.backends.cpu_kernels` or `numpy_kernels`, `cuda_kernels`). Two ways
in: `optimizer(key, W, dW)` updates one parameter; `optimizer.update_store`
updates every parameter of a `ParamStore` in one pass, with the same numbers.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Hashable, Iterator, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from .backends import Ops, get_array_ops, get_ops
from .params import FlatState
from .schedules import Schedule, to_schedule

if TYPE_CHECKING:
    from .params import ParamStore

KeyT = Hashable
ScheduleT = Union[float, list, Any, Schedule]  # noqa: UP007 (a runtime alias)

# Hyperparameters by argument name, in the order the optimizer evaluates them.
HPARAMS = ("learn_rate", "L2", "beta1", "beta2", "eps", "grad_clip")

SGD_KIND, ADAM_KIND, MOMENTUM_KIND = 0, 1, 2

SGD_DEFAULTS: dict[str, Any] = {"L2": 0.0, "L2_is_weight_decay": True, "grad_clip": 1.0}
ADAM_DEFAULTS: dict[str, Any] = {
    "learn_rate": 0.001,
    "beta1": 0.9,
    "beta2": 0.999,
    "eps": 1e-08,
    "L2": 0.0,
    "grad_clip": 1.0,
    "L2_is_weight_decay": True,
}


def _check_range(name: str, value: float, where: str, *, finite_only=False) -> None:
    ok = math.isfinite(value)
    if finite_only:
        if not ok:
            raise ValueError(f"'{name}' must be finite, got {value!r} {where}")
        return
    if name in ("beta1", "beta2"):
        ok = ok and 0.0 <= value < 1.0
        expected = "in [0, 1)"
    elif name == "eps":
        ok = ok and value > 0.0
        expected = "> 0"
    else:
        ok = ok and value >= 0.0
        expected = ">= 0"
    if not ok:
        raise ValueError(f"'{name}' must be {expected}, got {value!r} {where}")


def _hparam_schedule(name: str, value: Any) -> Schedule:
    """`value` as a Schedule; every item of a list is range-checked now."""
    schedule = to_schedule(name, value)
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_range(name, float(item), f"(list item {i})")
    return schedule


class _Slot:
    """Per-key state: flat moments and average, the shape, the update count.

    A key of a `ParamStore` updated with `update_store` is bound to that
    store's `FlatState` (`group`, `index`): its arrays are views into the
    state's flat buffers and its update count lives in `group.nr`.
    """

    __slots__ = ("shape", "m", "v", "ema", "_nr", "group", "index")

    def __init__(self, shape: tuple) -> None:
        self.shape = shape
        self.m = None
        self.v = None
        self.ema = None
        self._nr = 0
        self.group: FlatState | None = None
        self.index = -1

    @property
    def nr(self) -> int:
        group = self.group
        return self._nr if group is None else int(group.nr[self.index])

    @nr.setter
    def nr(self, value: int) -> None:
        group = self.group
        if group is None:
            self._nr = value
        else:
            group.nr[self.index] = value

    def detach(self) -> None:
        """Keep the update count here, unbound from any FlatState."""
        if self.group is not None:
            self._nr = int(self.group.nr[self.index])
            self.group, self.index = None, -1


class _UpdateCounts(Mapping):
    """`optimizer.nr_update`: key -> number of updates so far (read-only)."""

    __slots__ = ("_opt",)

    def __init__(self, opt: Optimizer) -> None:
        self._opt = opt

    def __getitem__(self, key: KeyT) -> int:
        return self._opt._slots[key].nr

    def __iter__(self) -> Iterator[KeyT]:
        return iter(self._opt._slots)

    def __len__(self) -> int:
        return len(self._opt._slots)

    def __contains__(self, key: object) -> bool:
        return key in self._opt._slots

    def __repr__(self) -> str:
        return repr(dict(self))


class Optimizer:
    """Stochastic gradient descent with first- and second-moment momentum:
    SGD (beta1 = beta2 = 0), Adam, or RAdam (`use_radam`), as in Thinc.

    Every hyperparameter may be a number, a list (one value a step, the last
    repeats), a generator or a `Schedule`. Schedules are evaluated once per
    step (with `key=None` and `last_score`), not once per parameter.

    >>> import numpy as np
    >>> opt = Optimizer(0.001)
    >>> W, dW = np.ones(4, dtype="f"), np.full(4, 0.5, dtype="f")
    >>> W, dW = opt((0, "W"), W, dW)
    >>> bool(dW.any())
    False
    """

    def __init__(
        self,
        learn_rate: ScheduleT,
        *,
        L2: ScheduleT = ADAM_DEFAULTS["L2"],
        beta1: ScheduleT = ADAM_DEFAULTS["beta1"],
        beta2: ScheduleT = ADAM_DEFAULTS["beta2"],
        eps: ScheduleT = ADAM_DEFAULTS["eps"],
        grad_clip: ScheduleT = ADAM_DEFAULTS["grad_clip"],
        use_averages: bool = True,
        use_radam: bool = False,
        L2_is_weight_decay: bool = True,
        ops: Ops | None = None,
    ) -> None:
        self._schedules: dict[str, Schedule] = {}
        self._hp: tuple | None = None
        self._hp_step = -1
        self._hp_score: Any = None
        self._step = 0
        self._last_score: tuple[int, float] | None = None
        for name, value in zip(HPARAMS, (learn_rate, L2, beta1, beta2, eps, grad_clip)):
            self._schedules[name] = _hparam_schedule(name, value)
        self.use_radam = bool(use_radam)
        self.L2_is_weight_decay = bool(L2_is_weight_decay)
        self.mom1: dict[KeyT, Any] = {}
        self.mom2: dict[KeyT, Any] = {}
        self.averages: dict[KeyT, Any] | None = {} if use_averages else None
        self._slots: dict[KeyT, _Slot] = {}
        self._nr_update = _UpdateCounts(self)
        # id(store) -> the optimizer's state for that ParamStore's keys
        self._states: dict[int, FlatState] = {}
        self._ops: Ops | None = ops
        # Thinc's RAdam memoises (step, N_sma, step_size) in ten slots shared
        # by all keys; kept so that the numbers stay Thinc's.
        self._radam_buffer: list[list] = [[None, None, None] for _ in range(10)]
        self._current(full_check=True)  # check every first value now

    # --- hyperparameters -------------------------------------------------------

    def _current(self, *, full_check: bool = False) -> tuple:
        """The hyperparameters at this step, evaluated once per step. Values
        are range-checked when a schedule is set; later steps only need to
        be finite (Thinc's own schedules may leave the range, e.g.
        slanted_triangular past num_steps)."""
        if (
            self._hp is not None
            and self._hp_step == self._step
            and self._hp_score is self._last_score
        ):
            return self._hp
        step, score = self._step, self._last_score
        values = []
        for name in HPARAMS:
            value = self._schedules[name](step, key=None, last_score=score)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(
                    f"'{name}' schedule gave {value!r} at step {step}; "
                    "expected a number"
                )
            value = float(value)
            _check_range(name, value, f"(at step {step})", finite_only=not full_check)
            values.append(value)
        # Thinc's compiled CPU Adam forms 1 - beta in float32 from float32
        # betas; the kernels form float32(1 - beta). Passing betas rounded to
        # float32 makes the two agree exactly (1 - b is exact then).
        values += [float(np.float32(values[2])), float(np.float32(values[3]))]
        self._hp = tuple(values)
        self._hp_step, self._hp_score = step, score
        return self._hp

    def _set_hparam(self, name: str, value: Any) -> None:
        old = self._schedules[name]
        self._schedules[name] = _hparam_schedule(name, value)
        self._hp = None
        try:
            self._current(full_check=True)
        except ValueError:
            self._schedules[name] = old
            self._hp = None
            raise

    @property
    def schedules(self) -> Mapping[str, Schedule]:
        """Each hyperparameter's Schedule, by argument name (read-only)."""
        return MappingProxyType(self._schedules)

    @property
    def learn_rate(self) -> float:
        return self._current()[0]

    @learn_rate.setter
    def learn_rate(self, value: ScheduleT) -> None:
        self._set_hparam("learn_rate", value)

    @property
    def L2(self) -> float:
        return self._current()[1]

    @L2.setter
    def L2(self, value: ScheduleT) -> None:
        self._set_hparam("L2", value)

    @property
    def b1(self) -> float:
        return self._current()[2]

    @b1.setter
    def b1(self, value: ScheduleT) -> None:
        self._set_hparam("beta1", value)

    @property
    def b2(self) -> float:
        return self._current()[3]

    @b2.setter
    def b2(self, value: ScheduleT) -> None:
        self._set_hparam("beta2", value)

    @property
    def eps(self) -> float:
        return self._current()[4]

    @eps.setter
    def eps(self, value: ScheduleT) -> None:
        self._set_hparam("eps", value)

    @property
    def grad_clip(self) -> float:
        return self._current()[5]

    @grad_clip.setter
    def grad_clip(self, value: ScheduleT) -> None:
        self._set_hparam("grad_clip", value)

    # --- step and score ----------------------------------------------------------

    @property
    def step(self) -> int:
        """The schedule step: how many times `step_schedules()` was called."""
        return self._step

    def step_schedules(self) -> None:
        """Advance every schedule by one step."""
        self._step += 1

    @property
    def last_score(self) -> tuple[int, float] | None:
        """`(step, score)` of the last evaluation, or None; schedules such as
        `plateau` read it. Set a float (stored with the current step) or a
        `(step, score)` tuple."""
        return self._last_score

    @last_score.setter
    def last_score(self, score: float | tuple[int, float] | None) -> None:
        if score is None:
            self._last_score = None
            return
        if isinstance(score, tuple):
            if len(score) != 2 or not isinstance(score[0], int):
                raise ValueError(f"last_score must be (step, score), got {score!r}")
            step, value = score
        else:
            step, value = self._step, score
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"last_score must be a number, got {value!r}")
        self._last_score = (int(step), float(value))

    # --- the update ----------------------------------------------------------------

    @property
    def ops(self) -> Ops | None:
        """The backend holding the optimizer's state (None until the first update)."""
        return self._ops

    @property
    def nr_update(self) -> Mapping[KeyT, int]:
        """How many times each key was updated (a read-only mapping)."""
        return self._nr_update

    def __call__(
        self, key: KeyT, weights: Any, gradient: Any, *, lr_scale: float = 1.0
    ) -> tuple[Any, Any]:
        """Update `weights` in place from `gradient`, zero `gradient`, and
        return both. `key` names the parameter, usually `(node_id, "W")`."""
        if getattr(gradient, "size", 1) == 0:
            return weights, gradient
        ops = self._ops or get_array_ops(weights)
        slot = self._slots.get(key)
        self._check(key, weights, gradient, ops, slot)
        self._ops = ops
        lr, L2, b1, b2, eps, clip, b1_f32, b2_f32 = self._current()
        nr = (slot.nr if slot is not None else 0) + 1
        if self.use_radam:
            kind, c = self._radam_step(nr, b1, b2)
            c = c * lr * lr_scale
        elif b1 > 0.0 and b2 > 0.0:
            kind = ADAM_KIND
            c = lr * (1.0 - b2**nr) ** 0.5 / (1.0 - b1**nr) * lr_scale
            b1, b2 = b1_f32, b2_f32
        elif b2 > 0.0:
            raise ValueError(
                f"beta1 = 0 with beta2 = {b2} is not supported (key {key!r}); "
                "use beta1 > 0 for Adam or beta1 = beta2 = 0 for SGD"
            )
        else:
            kind, c = SGD_KIND, lr_scale * lr
        if slot is None:
            slot = self._new_slot(key, weights, ops)
        if kind != SGD_KIND and slot.m is None:
            slot.m = self.mom1[key] = ops.alloc((weights.size,))
            slot.v = self.mom2[key] = ops.alloc((weights.size,))
        decay = lr_scale * lr * L2 if self.L2_is_weight_decay else 0.0
        d = min((1.0 + nr) / (10.0 + nr), 0.9999)
        ops.fused_update(
            weights.reshape(-1),
            gradient.reshape(-1),
            slot.m,
            slot.v,
            slot.ema,
            kind=kind,
            lr=c,
            b1=b1,
            b2=b2,
            eps=eps,
            l2=0.0 if self.L2_is_weight_decay else L2,
            clip=clip,
            decay=decay,
            ema_rate=1.0 - d,
        )
        slot.nr = nr
        return weights, gradient

    def update_store(self, store: ParamStore, *, lr_scale: float = 1.0) -> None:
        """Update every parameter of `store` in one pass, and zero its gradients.

        The numbers are exactly those of calling
        ``self(key, store.weights(key), store.gradient(key), lr_scale=lr_scale)``
        for each key in store order: per-tensor clipping norms, per-key update
        counts and bias correction, weight decay, L2, averages, RAdam's
        rectification (its shared ten-slot buffer included); keys with no
        parameters are skipped. The optimizer keeps the state of the store's
        keys in flat buffers laid out like the store (`opt.mom1[key]`,
        `opt.mom2[key]`, `opt.averages[key]` are views into them), so the
        per-key call on a store key keeps working and shares that state, and
        keys the optimizer already knows (from per-key calls or another
        store) bring their state along. On numpy this is one compiled pass
        over the flat buffers (numba; without it, the numpy kernel per key);
        on cupy, one norm launch and one update launch for all tensors.

        >>> import numpy as np
        >>> from optsvc.params import ParamStore
        >>> store = ParamStore.from_arrays({(0, "W"): np.ones((2, 3), "f"),
        ...                                 (0, "b"): np.zeros(3, "f")})
        >>> store.flat_gradients[:] = 0.5
        >>> opt = Optimizer(0.001)
        >>> opt.update_store(store)
        >>> opt.nr_update[(0, "W")], bool(store.flat_gradients.any())
        (1, False)
        """
        ops = self._ops or store.ops
        if not ops.owns(store.flat_weights):
            raise ValueError(
                f"the parameter store is on {ops.device_of(store.flat_weights)}, "
                f"but the optimizer's state is on {_where(ops)}; move the store, or "
                "call optimizer.to_gpu() / optimizer.to_cpu() first"
            )
        lr, L2, b1, b2, eps, clip, b1_f32, b2_f32 = self._current()
        state = self._states.get(id(store))
        if state is None or state.stale or state.store_ref() is not store:
            keys = [key for key in store if store.size_of(key) > 0]
            if not keys:
                return
            first = keys[0]
        else:
            first = state.keys[0]
        if not self.use_radam and not (b1 > 0.0 and b2 > 0.0) and b2 > 0.0:
            raise ValueError(
                f"beta1 = 0 with beta2 = {b2} is not supported (key {first!r}); "
                "use beta1 > 0 for Adam or beta1 = beta2 = 0 for SGD"
            )
        if state is None or state.stale or state.store_ref() is not store:
            state = self._lay_out(store, keys, ops)
        self._ops = ops
        nr = state.nr + 1
        params = state.params
        kind = SGD_KIND
        for start, stop in state.runs(nr):
            n = int(nr[start])
            if self.use_radam:
                kind, c = self._radam_step(n, b1, b2)
                c = c * lr * lr_scale
            elif b1 > 0.0 and b2 > 0.0:
                kind = ADAM_KIND
                c = lr * (1.0 - b2**n) ** 0.5 / (1.0 - b1**n) * lr_scale
            else:
                c = lr_scale * lr
            params.lr[start:stop] = c
            params.kind[start:stop] = kind
            params.ema_rate[start:stop] = 1.0 - min((1.0 + n) / (10.0 + n), 0.9999)
        if not self.use_radam and b1 > 0.0 and b2 > 0.0:
            b1, b2 = b1_f32, b2_f32
        if kind != SGD_KIND and state.m is None:
            self._flat_moments(state, ops)
        ops.multi_update(
            store.flat_weights,
            store.flat_gradients,
            state.m,
            state.v,
            state.ema,
            layout=state.layout,
            params=params,
            b1=b1,
            b2=b2,
            eps=eps,
            l2=0.0 if self.L2_is_weight_decay else L2,
            clip=clip,
            decay=lr_scale * lr * L2 if self.L2_is_weight_decay else 0.0,
        )
        state.nr = nr

    def _lay_out(self, store: ParamStore, keys: list, ops: Ops) -> FlatState:
        """A FlatState for `store`, its keys' slots bound to it and their
        state (from per-key calls, another store, or a restore) copied in."""
        for key in keys:
            slot = self._slots.get(key)
            if slot is not None and slot.shape != store.shape(key):
                raise ValueError(
                    f"key {key!r} was first used with shape {slot.shape}, now with "
                    f"{store.shape(key)} in the parameter store; each parameter "
                    "needs its own key"
                )
        offsets = [store.offset(key) for key in keys]
        sizes = [store.size_of(key) for key in keys]
        state = FlatState(store, ops, keys, offsets, sizes)
        if self.averages is not None:
            state.ema = ops.alloc((store.size,))
        for index, key in enumerate(keys):
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = _Slot(store.shape(key))
            else:
                if slot.group is not None:
                    slot.group.stale = True
                state.nr[index] = slot.nr
                slot.detach()
            if state.ema is not None:
                ema = state.view(state.ema, index)
                if slot.ema is not None:
                    ema[...] = slot.ema
                slot.ema = ema
                self.averages[key] = ema.reshape(slot.shape)
            slot.group, slot.index = state, index
            state.slots.append(slot)
        if any(slot.m is not None for slot in state.slots):
            self._flat_moments(state, ops)
        self._states = {
            k: s for k, s in self._states.items() if s.store_ref() is not None
        }
        self._states[id(store)] = state
        return state

    def _flat_moments(self, state: FlatState, ops: Ops) -> None:
        state.m, state.v = ops.alloc((state.size,)), ops.alloc((state.size,))
        for index, (key, slot) in enumerate(zip(state.keys, state.slots)):
            m, v = state.view(state.m, index), state.view(state.v, index)
            if slot.m is not None:
                m[...], v[...] = slot.m, slot.v
            slot.m = self.mom1[key] = m
            slot.v = self.mom2[key] = v

    def _check(self, key, weights, gradient, ops: Ops, slot: _Slot | None) -> None:
        for what, array in (("weights", weights), ("gradient", gradient)):
            if not ops.owns(array):
                if not hasattr(array, "dtype") or not hasattr(array, "shape"):
                    raise TypeError(
                        f"{what} for key {key!r} must be an array, "
                        f"got {type(array).__name__}"
                    )
                raise ValueError(
                    f"{what} for key {key!r} are on {ops.device_of(array)}, but the "
                    f"optimizer's state is on {_where(ops)}; move the arrays, or call "
                    "optimizer.to_gpu() / optimizer.to_cpu() first"
                )
        if weights.shape != gradient.shape:
            raise ValueError(
                f"weights and gradient for key {key!r} differ in shape: "
                f"{weights.shape} vs {gradient.shape}"
            )
        if weights.dtype != gradient.dtype:
            raise ValueError(
                f"weights and gradient for key {key!r} differ in dtype: "
                f"{weights.dtype} vs {gradient.dtype}"
            )
        if weights.dtype != np.float32:
            raise ValueError(
                f"weights for key {key!r} are {weights.dtype}; optsvc updates float32 "
                "parameters (convert with .astype('float32'))"
            )
        if not (weights.flags.c_contiguous and gradient.flags.c_contiguous):
            raise ValueError(
                f"weights and gradient for key {key!r} must be C-contiguous arrays "
                "(the update is in place; use numpy.ascontiguousarray once, up front)"
            )
        if slot is not None and slot.shape != weights.shape:
            raise ValueError(
                f"key {key!r} was first used with shape {slot.shape}, now with "
                f"{weights.shape}; each parameter needs its own key"
            )

    def _new_slot(self, key: KeyT, weights, ops: Ops) -> _Slot:
        slot = self._slots[key] = _Slot(tuple(weights.shape))
        if self.averages is not None:
            self.averages[key] = ops.alloc(weights.shape)
            slot.ema = self.averages[key].reshape(-1)
        return slot

    def _radam_step(self, nr: int, beta1: float, beta2: float) -> tuple[int, float]:
        """RAdam's rectification, as Thinc computes it: the kernel kind and the
        step size (before the learning rate). Its step runs one ahead of `nr`."""
        step = nr + 1
        buffered = self._radam_buffer[step % 10]
        if buffered[0] == step:
            n_sma, step_size = buffered[1], buffered[2]
        else:
            beta2_t = beta2**step
            n_sma_max = 2 / (1 - beta2) - 1
            n_sma = n_sma_max - 2 * step * beta2_t / (1 - beta2_t)
            if n_sma >= 5:
                step_size = math.sqrt(
                    (1 - beta2_t)
                    * (n_sma - 4)
                    / (n_sma_max - 4)
                    * (n_sma - 2)
                    / n_sma
                    * n_sma_max
                    / (n_sma_max - 2)
                ) / (1 - beta1**step)
            else:
                step_size = 1.0 / (1 - beta1**step)
            buffered[:] = [step, n_sma, step_size]
        if n_sma >= 5:
            return ADAM_KIND, step_size
        return MOMENTUM_KIND, step_size

    # --- devices ---------------------------------------------------------------------

    def to_gpu(self, gpu_id: int = 0) -> Optimizer:
        """Move all state (moments, averages) to GPU `gpu_id` (cupy)."""
        self._move(get_ops("cupy", gpu_id=gpu_id))
        return self

    def to_cpu(self) -> Optimizer:
        """Move all state to the CPU (numpy)."""
        self._move(get_ops("numpy"))
        return self

    def _move(self, target: Ops) -> None:
        source = self._ops
        if source is target:
            return
        # The flat state of parameter stores stays behind: each key's arrays
        # move on their own, and the next update_store lays them out anew.
        for slot in self._slots.values():
            slot.detach()
        self._states = {}

        def move(array):
            host = source.to_numpy(array) if source is not None else np.asarray(array)
            return target.asarray(host)

        for key, slot in self._slots.items():
            if slot.m is not None:
                slot.m = self.mom1[key] = move(slot.m)
                slot.v = self.mom2[key] = move(slot.v)
            if slot.ema is not None:
                self.averages[key] = move(self.averages[key])
                slot.ema = self.averages[key].reshape(-1)
        self._ops = target

    # --- state -----------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """All state as bytes (an .npz archive with a JSON member; no pickle)."""
        from .serialize import optimizer_to_bytes

        return optimizer_to_bytes(self)

    def from_bytes(self, data: bytes) -> Optimizer:
        """Restore state written by `to_bytes`; returns self."""
        from .serialize import optimizer_from_bytes

        optimizer_from_bytes(self, data)
        return self

    def to_disk(self, path) -> None:
        """Write `to_bytes()` to `path` atomically (temporary file, fsync, rename)."""
        from .serialize import write_atomic

        write_atomic(path, self.to_bytes())

    def from_disk(self, path) -> Optimizer:
        """Restore state written by `to_disk`; returns self."""
        from pathlib import Path

        return self.from_bytes(Path(path).read_bytes())

    def __repr__(self) -> str:
        kind = "RAdam" if self.use_radam else ("SGD" if self.b1 == 0 else "Adam")
        return (
            f"<Optimizer {kind} step={self._step} keys={len(self._slots)} "
            f"learn_rate={self.learn_rate:.6g}>"
        )


def _where(ops: Ops) -> str:
    return f"gpu:{ops.gpu_id}" if hasattr(ops, "gpu_id") else "cpu"


def SGD(
    learn_rate: ScheduleT,
    *,
    L2: ScheduleT = SGD_DEFAULTS["L2"],
    grad_clip: ScheduleT = SGD_DEFAULTS["grad_clip"],
    L2_is_weight_decay: bool = SGD_DEFAULTS["L2_is_weight_decay"],
    use_averages: bool = True,
    ops: Ops | None = None,
) -> Optimizer:
    """Plain SGD, `w -= learn_rate * g` (registered as `SGD.v1`).

    >>> SGD(0.1).b1
    0.0
    """
    return Optimizer(
        learn_rate,
        L2=L2,
        grad_clip=grad_clip,
        L2_is_weight_decay=L2_is_weight_decay,
        beta1=0.0,
        beta2=0.0,
        use_averages=use_averages,
        ops=ops,
    )


def Adam(
    learn_rate: ScheduleT = ADAM_DEFAULTS["learn_rate"],
    *,
    L2: ScheduleT = ADAM_DEFAULTS["L2"],
    beta1: ScheduleT = ADAM_DEFAULTS["beta1"],
    beta2: ScheduleT = ADAM_DEFAULTS["beta2"],
    eps: ScheduleT = ADAM_DEFAULTS["eps"],
    grad_clip: ScheduleT = ADAM_DEFAULTS["grad_clip"],
    L2_is_weight_decay: bool = ADAM_DEFAULTS["L2_is_weight_decay"],
    use_averages: bool = True,
    ops: Ops | None = None,
) -> Optimizer:
    """Adam, or AdamW with `L2_is_weight_decay` (registered as `Adam.v1`).

    >>> Adam().learn_rate
    0.001
    """
    return Optimizer(
        learn_rate,
        L2=L2,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        grad_clip=grad_clip,
        L2_is_weight_decay=L2_is_weight_decay,
        use_averages=use_averages,
        ops=ops,
    )


def RAdam(
    learn_rate: ScheduleT = ADAM_DEFAULTS["learn_rate"],
    *,
    beta1: ScheduleT = ADAM_DEFAULTS["beta1"],
    beta2: ScheduleT = ADAM_DEFAULTS["beta2"],
    eps: ScheduleT = ADAM_DEFAULTS["eps"],
    weight_decay: ScheduleT | None = None,
    grad_clip: ScheduleT = ADAM_DEFAULTS["grad_clip"],
    use_averages: bool = True,
    L2: ScheduleT | None = None,
    L2_is_weight_decay: bool = ADAM_DEFAULTS["L2_is_weight_decay"],
    ops: Ops | None = None,
) -> Optimizer:
    """Rectified Adam (registered as `RAdam.v1`). `weight_decay` is the L2
    term applied as decoupled weight decay; Thinc 9's `L2` and
    `L2_is_weight_decay` are accepted too (not both `weight_decay` and `L2`).

    >>> RAdam(weight_decay=0.01).L2
    0.01
    """
    if weight_decay is not None and L2 is not None:
        raise ValueError(
            "RAdam: give 'weight_decay' or 'L2', not both ('weight_decay' is "
            "L2 applied as weight decay)"
        )
    if weight_decay is not None:
        L2, L2_is_weight_decay = weight_decay, True
    return Optimizer(
        learn_rate,
        L2=ADAM_DEFAULTS["L2"] if L2 is None else L2,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        grad_clip=grad_clip,
        L2_is_weight_decay=L2_is_weight_decay,
        use_averages=use_averages,
        use_radam=True,
        ops=ops,
    )


__all__ = [
    "Optimizer",
    "SGD",
    "Adam",
    "RAdam",
    "SGD_DEFAULTS",
    "ADAM_DEFAULTS",
    "HPARAMS",
]
