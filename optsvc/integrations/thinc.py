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
import inspect
import typing
from collections.abc import Callable, Iterator
from typing import Any

# FloatOrSeq: Thinc's own annotation for a hyperparameter, so that a config
# is checked exactly as for Thinc's `Adam.v1` (its `Generator` accepts any
# iterator).
try:
    from thinc.api import Model
    from thinc.api import Optimizer as _ThincOptimizer
    from thinc.optimizers import FloatOrSeq
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "optsvc.integrations.thinc needs Thinc 8.3: pip install 'optsvc[thinc]'"
    ) from exc

import optsvc
from optsvc import registries
from optsvc.spec import NOT_CONFIGURABLE, params_of

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

    def __init__(self, optimizer: Any = None, **hyperparameters: Any) -> None:
        """Wrap an `optsvc.Optimizer`, or make one from the arguments of
        Thinc's `Optimizer(learn_rate, *, L2, beta1, ...)`."""
        # Thinc's __init__ is not called: it would build Thinc's own state,
        # which this class never uses.
        if isinstance(optimizer, _ThincOptimizer):
            raise TypeError(
                "ThincOptimizer wraps an optsvc.Optimizer, got Thinc's "
                f"{type(optimizer).__name__}"
            )
        if not isinstance(optimizer, optsvc.Optimizer):
            if optimizer is not None:
                hyperparameters["learn_rate"] = optimizer
            arguments = {k: _unwrap(v) for k, v in hyperparameters.items()}
            optimizer = optsvc.Optimizer(**arguments)
        elif hyperparameters:
            raise TypeError(
                "give an optsvc.Optimizer or the arguments of one, not both"
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
    averages = _delegated(
        "averages", "Key -> averaged weights, or None (settable).", settable=True
    )
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

    def __reduce__(self):
        # Not Thinc's slots (these properties answer for them): the optsvc
        # optimizer, which pickles through its own state.
        return (ThincOptimizer, (self._optimizer,))

    def __repr__(self) -> str:
        return f"<ThincOptimizer of {self._optimizer!r}>"


def _optimizer_for_thinc(
    registered: str, make: Callable[..., optsvc.Optimizer]
) -> Callable[..., ThincOptimizer]:
    """Thinc's registry entry for the optsvc optimizer built by `make`: its
    arguments, kinds and defaults (less `ops`), each hyperparameter annotated
    with Thinc's `FloatOrSeq` (confection validates a config against this
    signature), and its optimizer wrapped in a `ThincOptimizer`."""
    hints = typing.get_type_hints(make)  # optsvc's types, without their Arg
    hyper = {p.name: p.optional for p in params_of(make) if p.kind == "hyper"}
    params = [
        p.replace(
            annotation=(FloatOrSeq | None if hyper[p.name] else FloatOrSeq)
            if p.name in hyper
            else hints[p.name]
        )
        for p in inspect.signature(make).parameters.values()
        if p.name not in NOT_CONFIGURABLE
    ]
    signature = inspect.Signature(params, return_annotation=ThincOptimizer)

    def build(*args: Any, **kwargs: Any) -> ThincOptimizer:
        try:
            bound = signature.bind(*args, **kwargs)  # no `ops`, as in Thinc
        except TypeError as err:
            raise TypeError(f"{make.__name__}() {err}") from None
        args = tuple(_unwrap(a) for a in bound.args)
        kwargs = {k: _unwrap(v) for k, v in bound.kwargs.items()}
        return ThincOptimizer(make(*args, **kwargs))

    build.__name__ = build.__qualname__ = make.__name__
    build.__doc__ = (
        f"`optsvc.{make.__name__}` for Thinc and spaCy (registered there as "
        f"`optsvc.{registered}`), with the same arguments and defaults."
    )
    build.__signature__ = signature
    build.__annotations__ = {p.name: p.annotation for p in params}
    build.__annotations__["return"] = ThincOptimizer
    build.__wrapped__ = make
    return build


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


# --- Thinc's registry entries -----------------------------------------------------


def _own(registry: Any) -> list[tuple[str, Callable]]:
    """(registered name, function) of optsvc's own functions in `registry`."""
    return [
        (registered, func)
        for registered, func in registry.get_all().items()
        if func.__module__.startswith("optsvc.")
    ]


# One adapter for each optimizer and schedule that optsvc registers (not those
# that third parties add through entry points), under its Python name: the
# `thinc_optimizers` and `thinc_schedules` entry points in pyproject.toml name
# them (`optsvc.integrations.thinc:Adam`), and a test holds the two together.
ADAPTERS: dict[str, Callable[..., Any]] = {
    **{f.__name__: _optimizer_for_thinc(n, f) for n, f in _own(registries.optimizers)},
    **{f.__name__: _for_thinc(f) for _, f in _own(registries.schedules)},
}
globals().update(ADAPTERS)

__all__ = ["ThincOptimizer", "ThincSchedule", "bind_param_store", *ADAPTERS]
