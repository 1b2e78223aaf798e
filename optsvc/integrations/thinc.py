"""optsvc's optimizers and schedules in Thinc 8.3 and spaCy 3.8 training.

Installing optsvc beside Thinc is enough: the entry-point groups
`thinc_optimizers` and `thinc_schedules` (pyproject.toml) point Thinc's
catalogue registries at the functions below, so a Thinc or spaCy config can say
`@optimizers = "optsvc.Adam.v1"` or `@schedules = "optsvc.warmup_cosine.v1"`
with no `--code` file. Nothing here is imported by `import optsvc`.

Two adapters make optsvc's objects fit code written for Thinc 8:

- `ThincOptimizer` is a subclass of `thinc.api.Optimizer`, because spaCy's
  training schema checks `isinstance(optimizer, thinc.api.Optimizer)`. It holds
  an `optsvc.Optimizer` and hands it every call and attribute that Thinc's and
  spaCy's training code use, so the numbers, schedules and state are optsvc's.
- `ThincSchedule` wraps an `optsvc.Schedule` as an iterator too, because Thinc
  8's optimizer, spaCy's dropout and its batchers pull schedule values with
  `next()`. The `optsvc.*.v1` optimizers unwrap it and evaluate the schedule by
  step, as optsvc always does; Thinc's own `Adam.v1` iterates it.

`bind_param_store` serves a Thinc model's parameters from an
`optsvc.ParamStore`, so that `optimizer.update_store(store)` updates the whole
model in one pass.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

try:
    from thinc.api import Model
    from thinc.api import Optimizer as _ThincOptimizer
    from thinc.types import Generator
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "optsvc.integrations.thinc needs Thinc 8.3: pip install 'optsvc[thinc]'"
    ) from exc

import optsvc

# Thinc's own annotation for a hyperparameter, so that a config is checked
# exactly as for Thinc's `Adam.v1` (its `Generator` accepts any iterator).
FloatOrSeq = float | list[float] | Generator

# --- schedules ---------------------------------------------------------------------


class ThincSchedule:
    """An `optsvc.Schedule` that Thinc 8 code can also iterate.

    `next()` yields the values at steps 0, 1, 2, ... (what Thinc 8's optimizer
    and spaCy's dropout and batch sizes expect of a schedule); calling it
    with a step works as for the schedule it wraps, which is `.schedule`.

    >>> s = ThincSchedule(optsvc.warmup_cosine(1.0, 2, 6))
    >>> [next(s) for _ in range(3)], s(4)
    ([0.0, 0.5, 1.0], 0.5)
    """

    __slots__ = ("schedule", "_next_step")

    def __init__(self, schedule: optsvc.Schedule) -> None:
        if not isinstance(schedule, optsvc.Schedule):
            raise TypeError(
                f"ThincSchedule wraps an optsvc.Schedule, got {type(schedule).__name__}"
            )
        self.schedule = schedule
        self._next_step = 0

    @property
    def name(self) -> str:
        """The wrapped schedule's name (`warmup_cosine`, ...)."""
        return self.schedule.name

    @property
    def attrs(self) -> dict[str, Any]:
        """The wrapped schedule's parameters and state."""
        return self.schedule.attrs

    def __call__(self, step: int, **extra: Any) -> Any:
        """The value at `step`, as `schedule(step, **extra)`."""
        return self.schedule(step, **extra)

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        value = self.schedule(self._next_step)
        self._next_step += 1
        return value

    def to_generator(self, start: int = 0, step_size: int = 1, **extra: Any):
        """The wrapped schedule's `to_generator`."""
        return self.schedule.to_generator(start, step_size, **extra)

    def __repr__(self) -> str:
        return f"ThincSchedule({self.schedule!r})"


def _unwrap(value: Any) -> Any:
    """The optsvc Schedule inside a `ThincSchedule`; anything else as given."""
    return value.schedule if isinstance(value, ThincSchedule) else value


def _for_thinc(
    make: Callable[..., optsvc.Schedule],
) -> Callable[..., ThincSchedule]:
    """Thinc's registry entry for the optsvc schedule built by `make`: the same
    signature (confection validates a config against it) and the same
    schedule, wrapped so that Thinc 8 can iterate it."""

    @functools.wraps(make)
    def build(*args: Any, **kwargs: Any) -> ThincSchedule:
        args = tuple(_unwrap(a) for a in args)
        kwargs = {k: _unwrap(v) for k, v in kwargs.items()}
        return ThincSchedule(make(*args, **kwargs))

    return build


# One line a schedule: the entry points in pyproject.toml name these, and
# tests/test_thinc_integration.py checks that every optsvc schedule is here.
constant = _for_thinc(optsvc.constant)
constant_then = _for_thinc(optsvc.constant_then)
decaying = _for_thinc(optsvc.decaying)
compounding = _for_thinc(optsvc.compounding)
warmup_linear = _for_thinc(optsvc.warmup_linear)
slanted_triangular = _for_thinc(optsvc.slanted_triangular)
cyclic_triangular = _for_thinc(optsvc.cyclic_triangular)
plateau = _for_thinc(optsvc.plateau)
warmup_cosine = _for_thinc(optsvc.warmup_cosine)
exponential_decay = _for_thinc(optsvc.exponential_decay)
step_decay = _for_thinc(optsvc.step_decay)
piecewise_constant = _for_thinc(optsvc.piecewise_constant)
linear_warmup = _for_thinc(optsvc.linear_warmup)
one_cycle = _for_thinc(optsvc.one_cycle)

# --- the optimizer -------------------------------------------------------------------


def _delegated(name: str, doc: str, *, settable: bool = False) -> property:
    def get(self: ThincOptimizer) -> Any:
        return getattr(self.optimizer, name)

    def set_(self: ThincOptimizer, value: Any) -> None:
        setattr(self.optimizer, name, _unwrap(value))

    return property(get, set_ if settable else None, doc=doc)


class ThincOptimizer(_ThincOptimizer):
    """A `thinc.api.Optimizer` whose updates, schedules and state are those of
    the `optsvc.Optimizer` it holds (`.optimizer`).

    spaCy's training schema accepts only instances of Thinc's `Optimizer`
    class; this subclass passes that check and forwards the per-key update,
    `step_schedules`, the hyperparameters, `averages`, `last_score`, the
    device moves and the state to optsvc. Thinc's own update code and state
    slots are never used.

    >>> import numpy as np
    >>> opt = ThincOptimizer(optsvc.Adam(0.001))
    >>> W, dW = opt((0, "W"), np.ones(3, "f"), np.full(3, 0.5, "f"))
    >>> opt.learn_rate, opt.optimizer.nr_update[(0, "W")]
    (0.001, 1)
    """

    def __init__(self, optimizer: optsvc.Optimizer) -> None:
        # Thinc's __init__ is not called: it would build Thinc's own state,
        # which this class never uses.
        if not isinstance(optimizer, optsvc.Optimizer):
            raise TypeError(
                "ThincOptimizer wraps an optsvc.Optimizer, got "
                f"{type(optimizer).__name__}"
            )
        self._optimizer = optimizer

    @property
    def optimizer(self) -> optsvc.Optimizer:
        """The optsvc optimizer that does the work."""
        return self._optimizer

    learn_rate = _delegated("learn_rate", "The learning rate now.", settable=True)
    L2 = _delegated("L2", "The L2 term now.", settable=True)
    b1 = _delegated("b1", "beta1 now.", settable=True)
    b2 = _delegated("b2", "beta2 now.", settable=True)
    eps = _delegated("eps", "Adam's epsilon now.", settable=True)
    grad_clip = _delegated("grad_clip", "The gradient clip norm now.", settable=True)
    use_radam = _delegated("use_radam", "Whether the update is RAdam's.", settable=True)
    L2_is_weight_decay = _delegated(
        "L2_is_weight_decay", "Whether L2 is decoupled weight decay.", settable=True
    )
    last_score = _delegated(
        "last_score", "`(step, score)` of the last evaluation.", settable=True
    )
    averages = _delegated("averages", "Key -> averaged weights, or None.")
    mom1 = _delegated("mom1", "Key -> first moment.")
    mom2 = _delegated("mom2", "Key -> second moment.")
    nr_update = _delegated("nr_update", "Key -> number of updates.")
    schedules = _delegated("schedules", "Hyperparameter name -> its Schedule.")
    step = _delegated("step", "The schedule step.")

    def __call__(
        self, key: Any, weights: Any, gradient: Any, *, lr_scale: float = 1.0
    ) -> tuple[Any, Any]:
        """Update `weights` in place from `gradient` and zero `gradient`."""
        return self._optimizer(key, weights, gradient, lr_scale=lr_scale)

    def step_schedules(self) -> None:
        """Advance every schedule by one step."""
        self._optimizer.step_schedules()

    def update_store(self, store: optsvc.ParamStore, *, lr_scale: float = 1.0) -> None:
        """`optsvc.Optimizer.update_store`: every parameter of `store` at once."""
        self._optimizer.update_store(store, lr_scale=lr_scale)

    def to_gpu(self, gpu_id: int = 0) -> ThincOptimizer:
        """Move the optimizer's state to GPU `gpu_id`."""
        self._optimizer.to_gpu(gpu_id)
        return self

    def to_cpu(self) -> ThincOptimizer:
        """Move the optimizer's state to the CPU."""
        self._optimizer.to_cpu()
        return self

    def to_bytes(self) -> bytes:
        """The optsvc optimizer's state as bytes (no pickle)."""
        return self._optimizer.to_bytes()

    def from_bytes(self, data: bytes) -> ThincOptimizer:
        """Restore state written by `to_bytes`."""
        self._optimizer.from_bytes(data)
        return self

    def to_disk(self, path: Any) -> None:
        """Write the state to `path` atomically."""
        self._optimizer.to_disk(path)

    def from_disk(self, path: Any) -> ThincOptimizer:
        """Restore state written by `to_disk`."""
        self._optimizer.from_disk(path)
        return self

    def __repr__(self) -> str:
        return f"<ThincOptimizer of {self._optimizer!r}>"


def SGD(
    learn_rate: FloatOrSeq,
    *,
    L2: FloatOrSeq = 0.0,
    grad_clip: FloatOrSeq = 1.0,
    L2_is_weight_decay: bool = True,
    use_averages: bool = True,
) -> ThincOptimizer:
    """`optsvc.SGD` for Thinc and spaCy (registered there as `optsvc.SGD.v1`)."""
    return ThincOptimizer(
        optsvc.SGD(
            _unwrap(learn_rate),
            L2=_unwrap(L2),
            grad_clip=_unwrap(grad_clip),
            L2_is_weight_decay=L2_is_weight_decay,
            use_averages=use_averages,
        )
    )


def Adam(
    learn_rate: FloatOrSeq = 0.001,
    *,
    L2: FloatOrSeq = 0.0,
    beta1: FloatOrSeq = 0.9,
    beta2: FloatOrSeq = 0.999,
    eps: FloatOrSeq = 1e-08,
    grad_clip: FloatOrSeq = 1.0,
    L2_is_weight_decay: bool = True,
    use_averages: bool = True,
) -> ThincOptimizer:
    """`optsvc.Adam` for Thinc and spaCy (registered there as `optsvc.Adam.v1`);
    the arguments and defaults are those of Thinc's `Adam.v1`."""
    return ThincOptimizer(
        optsvc.Adam(
            _unwrap(learn_rate),
            L2=_unwrap(L2),
            beta1=_unwrap(beta1),
            beta2=_unwrap(beta2),
            eps=_unwrap(eps),
            grad_clip=_unwrap(grad_clip),
            L2_is_weight_decay=L2_is_weight_decay,
            use_averages=use_averages,
        )
    )


def RAdam(
    learn_rate: FloatOrSeq = 0.001,
    *,
    beta1: FloatOrSeq = 0.9,
    beta2: FloatOrSeq = 0.999,
    eps: FloatOrSeq = 1e-08,
    weight_decay: FloatOrSeq | None = None,
    L2: FloatOrSeq | None = None,
    L2_is_weight_decay: bool = True,
    grad_clip: FloatOrSeq = 1.0,
    use_averages: bool = True,
) -> ThincOptimizer:
    """`optsvc.RAdam` for Thinc and spaCy (registered there as
    `optsvc.RAdam.v1`); takes Thinc's `L2` / `L2_is_weight_decay` or optsvc's
    `weight_decay`, not both."""
    return ThincOptimizer(
        optsvc.RAdam(
            _unwrap(learn_rate),
            beta1=_unwrap(beta1),
            beta2=_unwrap(beta2),
            eps=_unwrap(eps),
            weight_decay=_unwrap(weight_decay),
            L2=_unwrap(L2),
            L2_is_weight_decay=L2_is_weight_decay,
            grad_clip=_unwrap(grad_clip),
            use_averages=use_averages,
        )
    )


# --- a Thinc model's parameters in a ParamStore --------------------------------------


def bind_param_store(model: Model, ops: optsvc.Ops | None = None) -> optsvc.ParamStore:
    """Move the parameters of an initialized Thinc `model` into one
    `optsvc.ParamStore` and make the model use the store's arrays.

    Each parameter is copied once, into the store's flat weight buffer; from
    then on the model's parameters and gradients *are* views into the
    store's two flat buffers (Thinc's `inc_grad` adds into a gradient that
    exists, in place), so `optimizer.update_store(store)` updates the whole
    model in one pass and zeroes its gradients, with no copy per step.
    Parameters set later with `set_param` (loading weights, `to_gpu`) replace
    the views: bind again after that. `ops` is the backend of the store
    (optsvc's current one by default; it must hold the model's arrays).

    >>> from thinc.api import Relu, Softmax, chain
    >>> import numpy as np
    >>> model = chain(Relu(4, 3), Softmax(2, 4)).initialize(
    ...     X=np.zeros((1, 3), "f"), Y=np.zeros((1, 2), "f"))
    >>> store = bind_param_store(model)
    >>> store.size, model.layers[0].get_param("W").base is store.flat_weights
    (26, True)
    """
    params = {
        (node.id, name): node.get_param(name)
        for node in model.walk()
        for name in node.param_names
        if node.has_param(name)
    }
    store = optsvc.ParamStore.from_arrays(params, ops=ops)
    for node in model.walk():
        for name in node.param_names:
            key = (node.id, name)
            if key in params:
                node.set_param(name, store.weights(key))
                node.set_grad(name, store.gradient(key))
    return store


__all__ = [
    "ThincOptimizer",
    "ThincSchedule",
    "SGD",
    "Adam",
    "RAdam",
    "bind_param_store",
    "constant",
    "constant_then",
    "decaying",
    "compounding",
    "warmup_linear",
    "slanted_triangular",
    "cyclic_triangular",
    "plateau",
    "warmup_cosine",
    "exponential_decay",
    "step_decay",
    "piecewise_constant",
    "linear_warmup",
    "one_cycle",
]
