"""SGD, Adam and RAdam: one `Optimizer` class with Thinc's API and numbers.

The class does the bookkeeping (schedules, per-key state, update counts,
bias correction); the arithmetic is one fused kernel per backend
(`optsvc.backends.numba_kernels` or `numpy_kernels`, `cuda_kernels`). Two ways
in: `optimizer(key, W, dW)` updates one parameter; `optimizer.update_store`
updates every parameter of a `ParamStore` in one pass, with the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np

from optsvc import registries
from optsvc.backends import Ops, get_array_ops, get_ops
from optsvc.backends.ops import ADAM, MOMENTUM, SGD
from optsvc.optim.hyperparams import (
    ADAM_DEFAULTS,
    HPARAMS,
    SGD_DEFAULTS,
    ScheduledHyperparams,
    ScheduleT,
    _check_lr_scale,
    _hparam_schedule,
)
from optsvc.optim.state import FlatState, KeyT, _Slot, _UpdateCounts
from optsvc.schedules.base import Schedule
from optsvc.spec import Arg, checked

if TYPE_CHECKING:
    from optsvc.optim.params import ParamStore

SGD_KIND, ADAM_KIND, MOMENTUM_KIND = SGD, ADAM, MOMENTUM  # the kernels' kinds


def averaging_rate(nr: int) -> float:
    """1 - d, with Thinc's decay d = min((1 + t) / (10 + t), 0.9999) of the
    parameter averages at a key's t-th update."""
    return 1.0 - min((1.0 + nr) / (10.0 + nr), 0.9999)


class Optimizer(ScheduledHyperparams):
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
        _, _, b1, b2, *_ = self._current(full_check=True)  # check first values now
        self._check_betas(b1, b2, None)

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
        lr_scale = _check_lr_scale(lr_scale)
        if getattr(gradient, "size", 1) == 0:
            return weights, gradient
        ops = self._ops or get_array_ops(weights)
        try:
            slot = self._slots.get(key)
        except TypeError:
            raise TypeError(
                f"key {key!r} must be hashable, such as a (node_id, name) tuple"
            ) from None
        self._check(key, weights, gradient, ops, slot)
        self._ops = ops
        lr, L2, b1, b2, eps, clip, b1_f32, b2_f32 = self._current()
        self._check_betas(b1, b2, key)
        nr = (slot.nr if slot is not None else 0) + 1
        kind, c = self._step_size(nr, lr, b1, b2, lr_scale)
        if kind == ADAM_KIND and not self.use_radam:
            b1, b2 = b1_f32, b2_f32
        if slot is None:
            slot = self._new_slot(key, weights, ops)
        if kind != SGD_KIND and slot.m is None:
            slot.m = self.mom1[key] = ops.alloc((weights.size,))
            slot.v = self.mom2[key] = ops.alloc((weights.size,))
        decay = lr_scale * lr * L2 if self.L2_is_weight_decay else 0.0
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
            ema_rate=averaging_rate(nr),
        )
        slot.nr = nr
        return weights, gradient

    def _check_betas(self, b1: float, b2: float, key: KeyT | None) -> None:
        if not self.use_radam and b1 <= 0.0 < b2:
            where = f" (key {key!r})" if key is not None else ""
            raise ValueError(
                f"'beta1' = 0 with 'beta2' = {b2} is not supported{where}; "
                "use beta1 > 0 for Adam or beta1 = beta2 = 0 for SGD"
            )

    def _step_size(
        self, nr: int, lr: float, b1: float, b2: float, lr_scale: float
    ) -> tuple[int, float]:
        """The kernel kind and the multiplier c of a key's nr-th update
        (w -= c * direction), computed in float64 as Thinc computes them."""
        if self.use_radam:
            kind, c = self._radam_step(nr, b1, b2)
            return kind, c * lr * lr_scale
        if b1 > 0.0 and b2 > 0.0:  # Adam: bias correction folded into c
            return ADAM_KIND, lr * (1.0 - b2**nr) ** 0.5 / (1.0 - b1**nr) * lr_scale
        return SGD_KIND, lr_scale * lr

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
        >>> from optsvc.optim.params import ParamStore
        >>> store = ParamStore.from_arrays({(0, "W"): np.ones((2, 3), "f"),
        ...                                 (0, "b"): np.zeros(3, "f")})
        >>> store.flat_gradients[:] = 0.5
        >>> opt = Optimizer(0.001)
        >>> opt.update_store(store)
        >>> opt.nr_update[(0, "W")], bool(store.flat_gradients.any())
        (1, False)
        """
        lr_scale = _check_lr_scale(lr_scale)
        # Imported here: multi_tensor imports this module.
        from optsvc.optim.multi_tensor import update_store

        update_store(self, store, lr_scale)

    def _check(self, key, weights, gradient, ops: Ops, slot: _Slot | None) -> None:
        for what, array in (("weights", weights), ("gradient", gradient)):
            if not ops.owns(array):
                if isinstance(array, np.generic) or not (
                    hasattr(array, "dtype") and hasattr(array, "shape")
                ):
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
        if not (weights.flags.writeable and gradient.flags.writeable):
            raise ValueError(
                f"weights and gradient for key {key!r} must be writeable arrays "
                "(the update is in place)"
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
        from optsvc.optim.serialize import optimizer_to_bytes

        return optimizer_to_bytes(self)

    def from_bytes(self, data: bytes) -> Optimizer:
        """Restore state written by `to_bytes`; returns self."""
        from optsvc.optim.serialize import optimizer_from_bytes

        optimizer_from_bytes(self, data)
        return self

    def to_disk(self, path) -> None:
        """Write `to_bytes()` to `path` atomically (temporary file, fsync, rename)."""
        from optsvc.fileio import write_atomic

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


# Each argument's type, range and meaning, declared once for SGD, Adam and
# RAdam and so for their config schemas (see optsvc.spec).
_BETA = "exponential decay rate of the {} moment estimate"
LearnRate = Annotated[ScheduleT, Arg("learning rate", ge=0)]
L2Penalty = Annotated[
    ScheduleT, Arg("L2 penalty (weight decay when L2_is_weight_decay)", ge=0)
]
Beta1 = Annotated[ScheduleT, Arg(_BETA.format("first"), ge=0, lt=1)]
Beta2 = Annotated[ScheduleT, Arg(_BETA.format("second"), ge=0, lt=1)]
Eps = Annotated[
    ScheduleT, Arg("added to the denominator for numerical stability", gt=0)
]
GradClip = Annotated[
    ScheduleT, Arg("clip each gradient to this L2 norm (0: off)", ge=0)
]
WeightDecay = Annotated[
    ScheduleT, Arg("decoupled weight decay (RAdam's name for L2)", ge=0)
]
L2IsWeightDecay = Annotated[bool, Arg("apply L2 as decoupled weight decay (AdamW)")]
UseAverages = Annotated[bool, Arg("keep moving averages of the parameters")]


@registries.optimizers.register("SGD.v1")
@checked()
def SGD(
    learn_rate: LearnRate,
    *,
    L2: L2Penalty = SGD_DEFAULTS["L2"],
    grad_clip: GradClip = SGD_DEFAULTS["grad_clip"],
    L2_is_weight_decay: L2IsWeightDecay = SGD_DEFAULTS["L2_is_weight_decay"],
    use_averages: UseAverages = True,
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


@registries.optimizers.register("Adam.v1")
@checked()
def Adam(
    learn_rate: LearnRate = ADAM_DEFAULTS["learn_rate"],
    *,
    L2: L2Penalty = ADAM_DEFAULTS["L2"],
    beta1: Beta1 = ADAM_DEFAULTS["beta1"],
    beta2: Beta2 = ADAM_DEFAULTS["beta2"],
    eps: Eps = ADAM_DEFAULTS["eps"],
    grad_clip: GradClip = ADAM_DEFAULTS["grad_clip"],
    L2_is_weight_decay: L2IsWeightDecay = ADAM_DEFAULTS["L2_is_weight_decay"],
    use_averages: UseAverages = True,
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


@registries.optimizers.register("RAdam.v1")
@checked()
def RAdam(
    learn_rate: LearnRate = ADAM_DEFAULTS["learn_rate"],
    *,
    beta1: Beta1 = ADAM_DEFAULTS["beta1"],
    beta2: Beta2 = ADAM_DEFAULTS["beta2"],
    eps: Eps = ADAM_DEFAULTS["eps"],
    weight_decay: WeightDecay | None = None,
    grad_clip: GradClip = ADAM_DEFAULTS["grad_clip"],
    use_averages: UseAverages = True,
    L2: L2Penalty | None = None,
    L2_is_weight_decay: L2IsWeightDecay = ADAM_DEFAULTS["L2_is_weight_decay"],
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
