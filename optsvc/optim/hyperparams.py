"""An optimizer's hyperparameters: each a schedule, evaluated once per step.

`learn_rate`, `L2`, `beta1`, `beta2`, `eps` and `grad_clip` may each be a
number, a list (one value a step, the last repeats), a generator or a
`Schedule`; all become Schedules, evaluated once per step (with `key=None` and
the optimizer's `last_score`), not once per parameter. A value is range-checked
when its schedule is set (every item of a list at once); later steps only need
to be finite. `ScheduledHyperparams` gives `Optimizer` (optsvc.optim.optimizer) its
hyperparameter properties, its schedule step and its last score. The checks of
an update call's `lr_scale` (a multiplier on the learning rate) are here too.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Union

import numpy as np

from optsvc.schedules.base import Schedule
from optsvc.schedules.thinc import to_schedule

ScheduleT = Union[float, list, Any, Schedule]  # noqa: UP007 (a runtime alias)

# Hyperparameters by argument name, in the order the optimizer evaluates them.
HPARAMS = ("learn_rate", "L2", "beta1", "beta2", "eps", "grad_clip")

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


def _check_lr_scale(lr_scale: Any) -> float:
    """`lr_scale` as a float; a clear error if it is not a finite number >= 0
    (a NaN or negative scale would silently corrupt the weights)."""
    if type(lr_scale) is float and 0.0 <= lr_scale < math.inf:  # the usual case
        return lr_scale
    if isinstance(lr_scale, bool) or not isinstance(lr_scale, numbers.Real):
        raise TypeError(
            f"lr_scale must be a number, got {type(lr_scale).__name__} {lr_scale!r:.60}"
        )
    try:
        value = float(lr_scale)
    except OverflowError:
        value = math.inf
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"lr_scale must be a finite number >= 0, got {lr_scale!r:.60}")
    return value


def _hparam_schedule(name: str, value: Any) -> Schedule:
    """`value` as a Schedule; every item of a list is range-checked now."""
    schedule = to_schedule(name, value)
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_range(name, float(item), f"(list item {i})")
    return schedule


class ScheduledHyperparams:
    """The hyperparameters of `Optimizer`, its schedule step and its last score.

    A base class: `Optimizer.__init__` sets the attributes these methods read
    (`_schedules`, one Schedule per name in HPARAMS, `_step`, `_last_score`,
    and the cache of the current values, `_hp`, `_hp_step`, `_hp_score`).
    """

    _schedules: dict[str, Schedule]
    _hp: tuple | None
    _hp_step: int
    _hp_score: Any
    _step: int
    _last_score: tuple[int, float] | None

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
