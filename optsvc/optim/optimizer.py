"""One `Optimizer` class with Thinc's API, for SGD, Adam and RAdam (Thinc's
numbers) and for the optimizers of `optsvc.optim.extra`.

The class holds its rule (`rules`: what differs between optimizers), the
hyperparameters (`hyperparams`: schedules, evaluated once per step into the
rule's scalars record) and one `OptimizerState` (`state`: every key's
arrays, averages and update count). Each key's update kind and per-tensor
scalars come from the rule (for Thinc's: `step`, bias correction and RAdam's
rectification); the arithmetic is one fused kernel per backend
(`optsvc.backends.numba_kernels` or `numpy_kernels`, `cuda_kernels`). Two
ways in: `optimizer(key, W, dW)` updates one parameter;
`optimizer.update_store` updates every parameter of a `ParamStore` in one
pass (`multi_tensor`), with the same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any

import numpy as np

from optsvc import registries
from optsvc.backends import STATE_ARRAYS, Ops, get_array_ops, get_ops
from optsvc.errors import ConfigError, StateError
from optsvc.fileio import ARRAYS_LIMIT, read_regular, write_atomic
from optsvc.optim import multi_tensor
from optsvc.optim.hyperparams import (
    ADAM_DEFAULTS,
    HPARAM_ARGS,
    HPARAMS,
    SGD_DEFAULTS,
    ScheduledHyperparams,
    ScheduleT,
    check_lr_scale,
)
from optsvc.optim.params import ParamStore
from optsvc.optim.rules import RULES, THINC, Rule
from optsvc.optim.state import (
    EvaluationPoint,
    KeySlot,
    KeyT,
    OptimizerState,
    device_mismatch,
    shape_conflict,
)
from optsvc.optim.step import averaging_rate
from optsvc.spec import Arg, checked, unchecked

# Each argument's type, range and meaning, declared once for Optimizer, SGD,
# Adam and RAdam and so for the config check (see optsvc.spec); the
# hyperparameters' `Arg`s are those the setters check against (HPARAM_ARGS).
LearnRate = Annotated[ScheduleT, HPARAM_ARGS["learn_rate"]]
L2Penalty = Annotated[ScheduleT, HPARAM_ARGS["L2"]]
Beta1 = Annotated[ScheduleT, HPARAM_ARGS["beta1"]]
Beta2 = Annotated[ScheduleT, HPARAM_ARGS["beta2"]]
Eps = Annotated[ScheduleT, HPARAM_ARGS["eps"]]
GradClip = Annotated[ScheduleT, HPARAM_ARGS["grad_clip"]]
WeightDecay = Annotated[
    ScheduleT, Arg("decoupled weight decay (RAdam's name for L2)", ge=0)
]
L2IsWeightDecay = Annotated[bool, Arg("apply L2 as decoupled weight decay (AdamW)")]
UseAverages = Annotated[bool, Arg("keep moving averages of the parameters")]
UseRAdam = Annotated[bool, Arg("RAdam's rectification of Adam's update")]


class Optimizer(ScheduledHyperparams):
    """Stochastic gradient descent with first- and second-moment momentum:
    SGD (beta1 = beta2 = 0), Adam, or RAdam (`use_radam`), as in Thinc.
    `optsvc.Lion`, `AdEMAMix`, `ScheduleFreeAdamW` and `ScheduleFreeSGD`
    make Optimizers of other rules (`rule`), with the same API.

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

    @checked()
    def __init__(
        self,
        learn_rate: LearnRate,
        *,
        L2: L2Penalty = ADAM_DEFAULTS["L2"],
        beta1: Beta1 = ADAM_DEFAULTS["beta1"],
        beta2: Beta2 = ADAM_DEFAULTS["beta2"],
        eps: Eps = ADAM_DEFAULTS["eps"],
        grad_clip: GradClip = ADAM_DEFAULTS["grad_clip"],
        use_averages: UseAverages = True,
        use_radam: UseRAdam = False,
        L2_is_weight_decay: L2IsWeightDecay = ADAM_DEFAULTS["L2_is_weight_decay"],
        ops: Ops | None = None,
    ) -> None:
        if ops is not None and not isinstance(ops, Ops):
            raise TypeError(
                f"'ops' must be a backend such as optsvc.backends.get_ops('numpy'), "
                f"or None for the arrays' own, got {type(ops).__name__} {ops!r:.60}"
            )
        values = (learn_rate, L2, beta1, beta2, eps, grad_clip)
        settings = {"use_radam": bool(use_radam)}
        settings["L2_is_weight_decay"] = bool(L2_is_weight_decay)
        self._start(THINC, dict(zip(HPARAMS, values)), settings, use_averages, ops)

    def _start(
        self, rule: Rule, values: dict, settings: dict, use_averages: bool, ops
    ) -> None:
        """Set up an optimizer of `rule` (the constructors' common part)."""
        self._state = OptimizerState(rule, use_averages=use_averages, ops=ops)
        self._init_hyperparams(rule, values, settings)
        # (scalars, nr, lr_scale, (kind, lr, ema_rate, bc1, bc2, n_state))
        # of the last per-key call: what the next key with the same nr and
        # scale reuses; (scalars, lr_scale, host array) likewise.
        self._step_memo: tuple = (None, 0, 0.0, None)
        self._host_memo: tuple = (None, 0.0, None)

    @classmethod
    def _of(cls, rule: Rule, arguments: dict[str, Any]) -> Optimizer:
        """An Optimizer of `rule` from a registered function's arguments
        (its `locals()`), which its signature has checked: the rule's
        hyperparameters and settings, `use_averages`, `ops`."""
        optimizer = cls.__new__(cls)
        values = {name: arguments[name] for name in rule.hparams}
        settings = {name: arguments[name] for name in rule.settings}
        use_averages = rule.keeps_averages and arguments.get("use_averages", False)
        optimizer._start(rule, values, settings, use_averages, arguments.get("ops"))
        return optimizer

    @property
    def rule(self) -> Rule:
        """What this optimizer computes (`optsvc.optim.rules`): SGD, Adam and
        RAdam share Thinc's rule; Lion, AdEMAMix and Schedule-Free have
        their own."""
        return self._rule

    @property
    def settings(self) -> Mapping[str, Any]:
        """The options that are not hyperparameters: `use_averages` (for
        rules that keep parameter averages) and the rule's own (Thinc's
        `use_radam` and `L2_is_weight_decay`, Schedule-Free's
        `warmup_steps`), read-only."""
        settings = dict(self._settings)
        if self._rule.keeps_averages:
            settings = {"use_averages": self._state.use_averages, **settings}
        return MappingProxyType(settings)

    # --- the state, read-only ------------------------------------------------------

    @property
    def state(self) -> OptimizerState:
        """All state: per-key moments, averages and update counts, their flat
        layout for parameter stores, RAdam's memo and the backend."""
        return self._state

    @property
    def ops(self) -> Ops | None:
        """The backend holding the optimizer's state (None until the first update)."""
        return self._state.ops

    @property
    def mom1(self) -> Mapping[KeyT, Any]:
        """Each key's first moment, flat (a read-only view of the state)."""
        return self._state.mom1

    @property
    def mom2(self) -> Mapping[KeyT, Any]:
        """Each key's second moment, flat (a read-only view of the state)."""
        return self._state.mom2

    @property
    def averages(self) -> Mapping[KeyT, Any] | None:
        """Each key's parameter average, shaped like the parameter (a
        read-only view of the state), or None without `use_averages`. As on
        Thinc's optimizer, assigning None stops averaging and `{}` starts it
        afresh. For a rule without parameter averages (Schedule-Free), the
        evaluation point of each key, computed when read (`EvaluationPoint`):
        what to evaluate and save, as `optsvc train` and spaCy do."""
        rule = self._rule
        if rule.keeps_averages:
            return self._state.averages
        return EvaluationPoint(
            self._state.slots, rule.evaluation_weight(self._scalars())
        )

    @averages.setter
    def averages(self, value: Mapping | None) -> None:
        if not self._rule.keeps_averages:
            raise TypeError(
                f"{self._rule.title}'s averages are its evaluation point, "
                "computed from its state; they cannot be switched off or reset"
            )
        if value is not None and (not isinstance(value, Mapping) or value):
            raise TypeError(
                "assign None (no averages) or {} (averages from now on) to "
                f"optimizer.averages, not {type(value).__name__}"
            )
        self._state.keep_averages(value is not None)

    def attach(self, params: ParamStore | Mapping[KeyT, Any]) -> None:
        """Say where the weights of known keys are (a `ParamStore`'s, or a
        mapping of key -> weights array), as an update does: what a
        Schedule-Free optimizer needs to compute its averages after
        `from_bytes` or a device move, before the keys' next update. Keys
        the optimizer has not updated are left out; other optimizers keep
        nothing else from it.

        >>> import numpy as np
        >>> from optsvc import ScheduleFreeSGD
        >>> opt = ScheduleFreeSGD(0.1)
        >>> W = np.ones(3, "f")
        >>> _ = opt((0, "W"), W, np.full(3, 0.5, "f"))
        >>> again = ScheduleFreeSGD(0.1).from_bytes(opt.to_bytes())
        >>> again.attach({(0, "W"): W})
        >>> bool((again.averages[(0, "W")] == opt.averages[(0, "W")]).all())
        True
        """
        store = isinstance(params, ParamStore)
        for key in params:
            slot = self._state.slots.get(key)
            if slot is None:
                continue
            weights = params.weights(key) if store else params[key]
            if tuple(getattr(weights, "shape", ())) != slot.shape:
                raise shape_conflict(key, slot.shape, getattr(weights, "shape", ()))
            slot.weights = weights.reshape(-1)

    def __reduce__(self):
        # Pickling and copy.deepcopy go through the optimizer's own state
        # (to_bytes); its schedules travel as objects, with their functions.
        return (_unpickle, (self._rule.name, dict(self._schedules), self.to_bytes()))

    @property
    def nr_update(self) -> Mapping[KeyT, int]:
        """How many times each key was updated (a read-only mapping)."""
        return self._state.nr_update

    # --- the update ----------------------------------------------------------------

    def __call__(
        self, key: KeyT, weights: Any, gradient: Any, *, lr_scale: float = 1.0
    ) -> tuple[Any, Any]:
        """Update `weights` in place from `gradient`, zero `gradient`, and
        return both. `key` names the parameter, usually `(node_id, "W")`."""
        lr_scale = check_lr_scale(lr_scale)
        if getattr(gradient, "size", 1) == 0:
            return weights, gradient
        state = self._state
        ops = state.ops or get_array_ops(weights)
        try:
            slot = state.slots.get(key)
        except TypeError:
            raise TypeError(
                f"key {key!r} must be hashable, such as a (node_id, name) tuple"
            ) from None
        if slot is None and _holds_nan(key):  # never equal to itself: a new slot a call
            raise TypeError(f"key {key!r} holds NaN; use a (node_id, name) tuple")
        _check_arrays(key, weights, gradient, ops, slot)
        state.ops = ops
        s = self._scalars()
        rule = self._rule
        if not s.betas_supported:
            raise rule.unsupported(s, key)
        nr = (slot.nr if slot is not None else 0) + 1
        memo = self._step_memo
        if memo[0] is s and memo[1] == nr and memo[2] == lr_scale:
            kind, lr, rate, bc1, bc2, n_state = memo[3]
        else:
            kind, lr, bc1, bc2 = rule.tensor(s, nr, lr_scale, state.radam_buffer)
            rate, n_state = averaging_rate(nr), STATE_ARRAYS[kind]
            # The keys of one step mostly share nr: their scalars are computed
            # once. Not for RAdam (its memo is written on every call, as
            # Thinc's is) nor a zero scale (the sign of a zero step matters).
            if lr_scale and rule.memoizable(s):
                self._step_memo = (s, nr, lr_scale, (kind, lr, rate, bc1, bc2, n_state))
        host_memo = self._host_memo
        if host_memo[0] is s and host_memo[1] == lr_scale and lr_scale:
            host = host_memo[2]
        else:
            host = rule.host(s, lr_scale)
            self._host_memo = (s, lr_scale, host)
        flat = weights.reshape(-1)
        if slot is None:
            slot = state.new_slot(key, weights.shape, weights.size, ops)
        if n_state and slot.state is None:
            state.add_state(slot, ops, flat)
        ops.fused_update(
            flat,
            gradient.reshape(-1),
            slot.state or (),
            slot.ema,
            kind=kind,
            lr=lr,
            ema_rate=rate,
            bc1=bc1,
            bc2=bc2,
            host=host,
        )
        slot.nr = nr
        slot.weights = flat
        self._pending = s.sums_after
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
        >>> from optsvc.optim.params import ParamStore
        >>> store = ParamStore.from_arrays({(0, "W"): np.ones((2, 3), "f"),
        ...                                 (0, "b"): np.zeros(3, "f")})
        >>> store.flat_gradients[:] = 0.5
        >>> opt = Optimizer(0.001)
        >>> opt.update_store(store)
        >>> opt.nr_update[(0, "W")], bool(store.flat_gradients.any())
        (1, False)
        """
        lr_scale = check_lr_scale(lr_scale)
        if not isinstance(store, ParamStore):
            raise TypeError(
                f"update_store needs a ParamStore (optsvc.optim.params), got "
                f"{type(store).__name__}; update single arrays with "
                "optimizer(key, weights, gradient)"
            )
        ops = self._state.ops or store.ops
        if not ops.owns(store.flat_weights):
            where = ops.device_of(store.flat_weights)
            raise device_mismatch("the parameter store is", where, ops, "the store")
        s = self._scalars()
        multi_tensor.update_store(self._state, s, store, ops, lr_scale)
        self._pending = s.sums_after

    # --- devices ---------------------------------------------------------------------

    def to_gpu(self, gpu_id: int = 0) -> Optimizer:
        """Move all state (moments, averages) to GPU `gpu_id` (cupy)."""
        self._state.move(get_ops("cupy", gpu_id=gpu_id))
        return self

    def to_cpu(self) -> Optimizer:
        """Move all state to the CPU (numpy)."""
        self._state.move(get_ops("numpy"))
        return self

    # --- saving ----------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """All state as bytes (safetensors with a JSON header; no pickle)."""
        from optsvc.optim.serialize import SavedOptimizer, encode_optimizer

        saved = SavedOptimizer(
            schedules=self.schedules,
            step=self.step,
            last_score=self.last_score,
            settings=dict(self._settings),
            pending=self._pending,
            state=self._state,
        )
        return encode_optimizer(saved)

    def from_bytes(self, data: bytes) -> Optimizer:
        """Restore state written by `to_bytes`; returns self. Nothing changes
        unless all of `data` reads back (StateError otherwise)."""
        from optsvc.optim.serialize import decode_optimizer

        ops = self._state.ops or get_ops("numpy")
        saved = decode_optimizer(data, like=self.schedules, ops=ops, rule=self._rule)
        self.restore(saved)
        return self

    def restore(self, saved) -> Optimizer:
        """Take over a decoded `SavedOptimizer` (`optsvc.optim.serialize`),
        checked when it was decoded; returns self. StateError if it holds
        another rule's state (Lion's for an Adam, say)."""
        if saved.state.rule is not self._rule:
            raise StateError(
                f"the saved state is {saved.state.rule.title}'s; this optimizer "
                f"is {self._rule.title}"
            )
        self._restore_hyperparams(saved)
        self._state = saved.state
        return self

    def to_disk(self, path) -> None:
        """Write `to_bytes()` to `path` atomically (temporary file, fsync, rename)."""
        write_atomic(path, self.to_bytes())

    def from_disk(self, path) -> Optimizer:
        """Restore state written by `to_disk`; returns self."""
        return self.from_bytes(read_regular(path, ARRAYS_LIMIT, "optimizer state"))

    def __repr__(self) -> str:
        kind = self._rule.title
        if self._rule is THINC:
            kind = "RAdam" if self.use_radam else ("SGD" if self.b1 == 0 else "Adam")
        return (
            f"<Optimizer {kind} step={self.step} keys={len(self._state.slots)} "
            f"learn_rate={self.learn_rate:.6g}>"
        )


_F32 = np.dtype(np.float32)


def _holds_nan(key) -> bool:
    parts = key if isinstance(key, tuple) else (key,)
    return any(isinstance(part, float) and part != part for part in parts)


def _check_arrays(key, weights, gradient, ops: Ops, slot: KeySlot | None) -> None:
    """The checks of a per-key call's arrays, each with its own message."""
    try:  # the usual case in one test; a failure finds its message below
        wf, gf = weights.flags, gradient.flags
        if (
            weights.dtype is _F32
            and gradient.dtype is _F32
            and wf.c_contiguous
            and gf.c_contiguous
            and wf.writeable
            and gf.writeable
            and weights.shape == gradient.shape
            and (slot is None or slot.shape == weights.shape)
            and ops.owns(weights)
            and ops.owns(gradient)
        ):
            return
    except AttributeError:
        pass
    for what, array in (("weights", weights), ("gradient", gradient)):
        if not ops.owns(array):
            if isinstance(array, np.generic) or not (
                hasattr(array, "dtype") and hasattr(array, "shape")
            ):
                raise TypeError(
                    f"{what} for key {key!r} must be an array, "
                    f"got {type(array).__name__}"
                )
            where = ops.device_of(array)
            raise device_mismatch(
                f"{what} for key {key!r} are", where, ops, "the arrays"
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
        raise shape_conflict(key, slot.shape, weights.shape)


def _unpickle(rule: str, schedules: dict, data: bytes) -> Optimizer:
    optimizer = registries.optimizers.get(RULES[rule].registered)()
    optimizer._schedules = schedules  # what from_bytes finds functions in
    return optimizer.from_bytes(data)


def _optimizer(**arguments: Any) -> Optimizer:
    """An Optimizer of the arguments of a registered function (its
    `locals()`), which its signature, declared as Optimizer's, has checked."""
    optimizer = Optimizer.__new__(Optimizer)
    unchecked(Optimizer.__init__)(optimizer, **arguments)
    return optimizer


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
    return _optimizer(**locals(), beta1=0.0, beta2=0.0)


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
    return _optimizer(**locals())


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
        raise ConfigError(
            "RAdam: give 'weight_decay' or 'L2', not both ('weight_decay' is "
            "L2 applied as weight decay)"
        )
    arguments = {**locals(), "use_radam": True}
    if weight_decay is not None:
        arguments.update(L2=weight_decay, L2_is_weight_decay=True)
    elif L2 is None:
        arguments["L2"] = ADAM_DEFAULTS["L2"]
    del arguments["weight_decay"]
    return _optimizer(**arguments)


__all__ = [
    "Optimizer",
    "SGD",
    "Adam",
    "RAdam",
    "SGD_DEFAULTS",
    "ADAM_DEFAULTS",
    "HPARAMS",
]
