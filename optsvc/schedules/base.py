"""The `Schedule` object: hyperparameter values as a function of the step.

A `Schedule` is a name, a function and a dict of attributes, called as
`schedule(step, **extra)` (extra: `key`, `last_score`), exactly as in Thinc 9.
Any state a schedule keeps (plateau's patience) lives in its attributes as
plain data, so `optsvc.optim.serialize` can save and restore it; the function
is found again by name in `SCHEDULE_FNS`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from optsvc.errors import ConfigError
from optsvc.spec import MAX_INT, show

OutT = TypeVar("OutT")

# How deep schedules may nest (a plateau around a warmup around a constant is
# 3): far beyond any real schedule, and within what saved optimizer state can
# hold (`optsvc.records`: 200 levels of JSON, 3 a schedule). Checked when a
# schedule is made, so nothing that trains writes state it cannot read.
MAX_DEPTH = 32

# Schedule functions by schedule name, so that saved schedules can be rebuilt
# without pickling code. Filled by `schedule_fn`.
SCHEDULE_FNS: dict[str, Callable[..., Any]] = {}


def schedule_fn(name: str) -> Callable[[Callable], Callable]:
    """Record `fn` as the function behind schedules called `name`."""

    def decorate(fn: Callable) -> Callable:
        SCHEDULE_FNS[name] = fn
        return fn

    return decorate


class Schedule(Generic[OutT]):
    """A hyperparameter schedule: `fn(schedule, step, **extra)` plus attributes.

    >>> sched = Schedule("halve", lambda s, step, **_: s.attrs["rate"] / 2**step,
    ...                  attrs={"rate": 1.0})
    >>> sched(3)
    0.125
    """

    __slots__ = ("name", "_schedule", "_attrs", "depth")

    def __init__(
        self,
        name: str,
        schedule: Callable[..., OutT],
        *,
        attrs: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self._schedule = schedule
        self._attrs = dict(attrs or {})
        inner = [v.depth for v in self._attrs.values() if isinstance(v, Schedule)]
        self.depth = 1 + max(inner, default=0)
        if self.depth > MAX_DEPTH:
            raise ConfigError(
                f"schedule '{name}' nests {self.depth} schedules deep, more than "
                f"the {MAX_DEPTH} optsvc can save; use fewer nested schedules"
            )

    def __call__(self, step: int, **extra: Any) -> OutT:
        """The value at `step`, a whole number in [0, 2**63).

        Every schedule gives a finite value at every step up to 2**63 - 1
        (decays tend to their floor or 0, periodic ones keep cycling, Thinc's
        formulas are kept past their end); larger steps are a ValueError,
        since no training run reaches them and float maths overflows there.
        """
        if step < 0:
            raise ConfigError(f"Schedule step must be non-negative, got {step}")
        if step > MAX_INT:
            raise ConfigError(
                f"Schedule step must be below 2**63, got {show(step)}; "
                "steps count updates, so a step this large is a mistake"
            )
        return self._schedule(self, step, **extra)

    @property
    def attrs(self) -> dict[str, Any]:
        """The schedule's parameters and state."""
        return self._attrs

    @property
    def function(self) -> Callable[..., OutT]:
        """The function behind the schedule, called as `fn(self, step, **extra)`."""
        return self._schedule

    def to_generator(
        self, start: int = 0, step_size: int = 1, **extra: Any
    ) -> Iterator[OutT]:
        """Yield the values at `start`, `start + step_size`, ... forever."""
        if start < 0:
            raise ConfigError(f"Schedule start must be non-negative, got {start}")
        if step_size < 0:
            raise ConfigError(
                f"Schedule step_size must be non-negative, got {step_size}"
            )
        return (self(step, **extra) for step in itertools.count(start, step_size))

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self._attrs.items())
        return f"Schedule({self.name!r}, {shown})"
