"""An optimizer's hyperparameters: each a schedule, evaluated once per step.

Every hyperparameter of an optimizer's rule (`optsvc.optim.rules`; Thinc's:
`learn_rate`, `L2`, `beta1`, `beta2`, `eps` and `grad_clip`) may be a
number, a list (one value a step, the last repeats), a generator or a
`Schedule`; all become Schedules, evaluated once per step (with `key=None` and
the optimizer's `last_score`), not once per parameter. A value is range-checked
when its schedule is set (every item of a list at once); later steps only need
to be finite. Each step's values become one scalars record (the rule's;
Thinc's is `StepScalars`, made by `step_scalars`), which both the per-key
call and the multi-tensor step read. `ScheduledHyperparams` gives `Optimizer`
(optsvc.optim.optimizer) its hyperparameter properties, its settings
(Thinc's `use_radam`, `L2_is_weight_decay`; a rule's own), its schedule step
and its last score. Every check of a hyperparameter's value is here: ranges,
the betas the update supports, an update call's `lr_scale`.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from optsvc.errors import ConfigError
from optsvc.schedules.base import Schedule
from optsvc.schedules.thinc import ScheduleT, to_schedule
from optsvc.spec import MAX_INT, Arg, Param, show

if TYPE_CHECKING:
    from optsvc.optim.rules import Rule
    from optsvc.optim.serialize import SavedOptimizer

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


# Each hyperparameter's meaning and range, declared once: the factories'
# signatures (`LearnRate`, `Beta1`, ... in optsvc.optim.optimizer) annotate
# with these, and the setters and `from_bytes` check against them.
_BETA = "exponential decay rate of the {} moment estimate"
HPARAM_ARGS: Mapping[str, Arg] = MappingProxyType(
    {
        "learn_rate": Arg("learning rate", ge=0),
        "L2": Arg("L2 penalty (weight decay when L2_is_weight_decay)", ge=0),
        "beta1": Arg(_BETA.format("first"), ge=0, lt=1),
        "beta2": Arg(_BETA.format("second"), ge=0, lt=1),
        "eps": Arg("added to the denominator for numerical stability", gt=0),
        "grad_clip": Arg("clip each gradient to this L2 norm (0: off)", ge=0),
    }
)


def attribute(name: str) -> str:
    """The optimizer's attribute for a hyperparameter: Thinc's `b1`, `b2`
    for the betas (and `b3`), else the argument's name."""
    return {"beta1": "b1", "beta2": "b2", "beta3": "b3"}.get(name, name)


def _as_float(value: Any) -> float:
    """`value` as a float; an int too large for a float becomes inf."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def check_lr_scale(lr_scale: Any) -> float:
    """`lr_scale` as a float; a clear error if it is not a finite number >= 0
    (a NaN or negative scale would silently corrupt the weights)."""
    if type(lr_scale) is float and 0.0 <= lr_scale < math.inf:  # the usual case
        return lr_scale
    if isinstance(lr_scale, bool) or not isinstance(lr_scale, numbers.Real):
        raise TypeError(
            f"lr_scale must be a number, got {type(lr_scale).__name__} {lr_scale!r:.60}"
        )
    value = _as_float(lr_scale)
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"lr_scale must be a finite number >= 0, got {lr_scale!r:.60}")
    return value


def _plain(value: Any) -> bool:
    """Whether a hyperparameter was given as a number or a list of them
    (checked when given), not as a Schedule or a generator."""
    return isinstance(value, (numbers.Real, list, tuple))


@dataclass(slots=True)
class StepScalars:
    """One step's hyperparameters and the scalars every key's update shares:
    a value, made once per step by `step_scalars` and never changed after
    (not frozen: a frozen dataclass is several times slower to make).

    `learn_rate`, `L2`, `beta1`, `beta2`, `eps`, `grad_clip`: the values at
    this step (float64). `use_radam`: RAdam's rectification. `adam`: Adam's
    rule (beta1 > 0 and beta2 > 0) rather than SGD's, outside RAdam.
    `kernel_b1`, `kernel_b2`: the betas the kernels get. `l2`: the L2 term
    added to the gradient; `weight_decay`: L2 applied as decoupled weight
    decay, scaled into one update's factor by `decay` (one of the two is 0).
    `betas_supported`: False for beta1 = 0 with beta2 > 0 outside RAdam
    (`unsupported_betas` says why). `sums_after`: Thinc's optimizers keep no
    running sums (see `optsvc.optim.rules`).
    """

    sums_after: ClassVar[None] = None

    learn_rate: float
    L2: float
    beta1: float
    beta2: float
    eps: float
    grad_clip: float
    use_radam: bool
    adam: bool
    kernel_b1: float
    kernel_b2: float
    l2: float
    weight_decay: float
    betas_supported: bool

    def decay(self, lr_scale: float) -> float:
        """The decoupled weight decay of one update: the factor w loses."""
        return lr_scale * self.learn_rate * self.weight_decay


def step_scalars(
    values: tuple[float, ...], *, use_radam: bool, L2_is_weight_decay: bool
) -> StepScalars:
    """The `StepScalars` of a step whose hyperparameters are `values` (in
    HPARAMS order), for an optimizer with these settings."""
    _, L2, beta1, beta2, _, _ = values
    adam = beta1 > 0.0 and beta2 > 0.0
    # Thinc's compiled CPU Adam forms 1 - beta in float32 from float32 betas;
    # the kernels form float32(1 - beta). Passing Adam betas rounded to
    # float32 makes the two agree exactly (1 - b is exact then). RAdam and SGD
    # get the betas as they are.
    b1_f32, b2_f32 = float(np.float32(beta1)), float(np.float32(beta2))
    rounded = adam and not use_radam
    return StepScalars(
        *values,  # the first fields: the HPARAMS, in order
        use_radam=use_radam,
        adam=adam,
        kernel_b1=b1_f32 if rounded else beta1,
        kernel_b2=b2_f32 if rounded else beta2,
        l2=0.0 if L2_is_weight_decay else L2,
        weight_decay=L2 if L2_is_weight_decay else 0.0,
        betas_supported=use_radam or not (beta1 <= 0.0 < beta2),
    )


def unsupported_betas(scalars: StepScalars, key: Any = None) -> ValueError:
    """The error for betas that `scalars.betas_supported` refuses; `key`
    names the parameter being updated, if any."""
    where = f" (key {key!r})" if key is not None else ""
    return ConfigError(
        f"'beta1' = 0 with 'beta2' = {scalars.beta2} is not supported{where}; "
        "use beta1 > 0 for Adam or beta1 = beta2 = 0 for SGD"
    )


def hparam_values(
    schedules: Mapping[str, Schedule],
    step: int,
    score: Any,
    *,
    rule: Rule,
    full: Collection[str] = (),
) -> tuple[float, ...]:
    """Each of `rule`'s hyperparameters' value at `step` (in its order),
    checked: the ones named in `full` against their ranges (a schedule just
    set), those the update divides by (`rule.always`: betas, eps) always
    against theirs, the others for finiteness only (Thinc's own schedules
    may leave the range, e.g. slanted_triangular past num_steps). A
    ConfigError naming the hyperparameter if not."""
    values = []
    for name, arg in rule.args.items():
        value = schedules[name](step, key=None, last_score=score)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ConfigError(
                f"'{name}' schedule gave {show(value)} at step {step}; "
                "expected a number"
            )
        x = _as_float(value)
        ranged = name in full or name in rule.always
        expected = None
        if not math.isfinite(x):
            expected = f"a finite number {arg.expected()}" if ranged else "finite"
        elif ranged and not arg.in_range(x):
            expected = arg.expected()
        if expected:
            raise ConfigError(
                f"'{name}' must be {expected}, got {show(value)} (at step {step})"
            )
        values.append(x)
    return tuple(values)


def check_restored(
    schedules: Mapping[str, Schedule],
    *,
    step: int,
    rule: Rule,
    settings: Mapping[str, Any],
) -> None:
    """Check restored schedules as the optimizer would have when they were
    set (every value in range at step 0) and at the next update (at `step`);
    a ConfigError naming the hyperparameter if not. The schedules are
    evaluated on copies and without a score, so their state (plateau's) stays
    as restored and a score is judged by the update that reads it."""
    copies = copy.deepcopy(dict(schedules))
    hparam_values(copies, 0, None, rule=rule, full=rule.hparams)
    copies = copy.deepcopy(dict(schedules))
    values = hparam_values(copies, step, None, rule=rule)
    scalars = rule.scalars(values, settings, rule.initial_sums, step)
    if not scalars.betas_supported:
        raise rule.unsupported(scalars)


def _hyperparameter(name: str) -> property:
    """A hyperparameter as a property: its value at the current step;
    assigning a number, list, generator or Schedule replaces its schedule."""

    def get(self: ScheduledHyperparams) -> float:
        try:
            return getattr(self._scalars(), name)
        except AttributeError:
            raise self._not_ours(name) from None

    def set_(self: ScheduledHyperparams, value: ScheduleT) -> None:
        self._set_hparam(name, value)

    return property(get, set_, doc=f"'{name}' at the current step.")


def expose(names: Collection[str]) -> None:
    """Every hyperparameter in `names` as a property of the optimizers
    (`attribute(name)`), once: each rule exposes its own when defined."""
    for name in names:
        if attribute(name) not in vars(ScheduledHyperparams):
            setattr(ScheduledHyperparams, attribute(name), _hyperparameter(name))


def _setting(name: str, doc: str) -> property:
    """A rule's setting as a property (an AttributeError for another
    rule's); setting it changes the next step's scalars."""

    def get(self: ScheduledHyperparams) -> Any:
        if name not in self._settings:
            raise self._not_ours(name)
        return self._settings[name]

    def set_(self: ScheduledHyperparams, value: Any) -> None:
        if name not in self._settings:
            raise self._not_ours(name)
        self._settings[name] = bool(value)
        self._cached = None

    return property(get, set_, doc=doc)


class ScheduledHyperparams:
    """The hyperparameters of `Optimizer`, its rule and settings, its
    schedule step and its last score.

    A base class: `Optimizer.__init__` calls `_init_hyperparams`, after
    making its state (`_state`, whose running sums a rule's scalars read).
    The current step's scalars are computed once per step (and again when
    the last score, a schedule or a setting changes) by `_scalars`.
    """

    _rule: Rule
    _settings: dict[str, Any]
    _schedules: dict[str, Schedule]
    _cached: tuple[int, Any, Any] | None  # (step, last score, scalars)
    _step: int
    _last_score: tuple[int, float] | None
    # The running sums of the scalars this step's updates used, which
    # `step_schedules` makes the state's (None: no update yet this step, or
    # a rule without sums).
    _pending: tuple[float, ...] | None

    def _init_hyperparams(
        self, rule: Rule, values: Mapping[str, Any], settings: Mapping[str, Any]
    ) -> None:
        """Set the hyperparameters, whose numbers and lists the signature
        checked; a Schedule's or a generator's first value is checked here."""
        self._rule = rule
        self._settings = dict(settings)
        self._schedules = {
            name: to_schedule(name, values[name], checked=True) for name in rule.hparams
        }
        self._cached = None
        self._step = 0
        self._last_score = None
        self._pending = None
        first = [name for name in rule.hparams if not _plain(values[name])]
        scalars = self._scalars(full=first)  # the first values of the schedules
        if not scalars.betas_supported:
            raise rule.unsupported(scalars)

    def _not_ours(self, name: str) -> AttributeError:
        return AttributeError(
            f"{self._rule.title} has no '{name}'; it takes "
            f"{', '.join((*self._rule.hparams, *self._settings))}"
        )

    # --- hyperparameters -------------------------------------------------------

    def _scalars(self, *, full: Collection[str] = ()) -> Any:
        """This step's scalars, evaluated once per step (`hparam_values`
        says what is checked: `full` names schedules just set)."""
        step, score, cached = self._step, self._last_score, self._cached
        if cached is not None and cached[0] == step and cached[1] is score:
            return cached[2]
        scalars = self._evaluate(step, score, full=full)
        self._cached = (step, score, scalars)
        return scalars

    def _evaluate(self, step: int, score: Any, *, full: Collection[str] = ()) -> Any:
        rule = self._rule
        values = hparam_values(self._schedules, step, score, rule=rule, full=full)
        return rule.scalars(values, self._settings, self._state.sums, step)

    def hyperparams_at(self, step: int) -> Any:
        """The hyperparameters at schedule step `step` (with this optimizer's
        last score and running sums), checked as an update checks them: a
        ValueError if a schedule gives something other than a finite number.
        The optimizer's own step is left as it is.

        >>> from optsvc import Adam, warmup_linear
        >>> Adam(warmup_linear(0.1, 10, 100)).hyperparams_at(5).learn_rate
        0.05
        """
        return self._evaluate(step, self._last_score)

    def _set_hparam(self, name: str, value: Any) -> None:
        """Replace a schedule: a number, and every item of a list, must lie in
        the range; a Schedule's or a generator's values from this step on."""
        if name not in self._rule.args:
            raise self._not_ours(name)
        problem = Param(name, "hyper", self._rule.args[name]).problem(value)
        if problem:
            raise ConfigError(f"'{name}' {problem}, got {show(value)}")
        old = self._schedules[name]
        self._schedules[name] = to_schedule(name, value, checked=True)
        self._cached = None
        try:
            self._scalars(full=() if _plain(value) else (name,))
        except ValueError:
            self._schedules[name] = old
            self._cached = None
            raise

    def _restore_hyperparams(self, saved: SavedOptimizer) -> None:
        """Set every schedule, the step, the last score and the settings as
        saved, unchecked (a saved schedule may be past its range)."""
        self._schedules = dict(saved.schedules)
        self._step, self._last_score = saved.step, saved.last_score
        self._settings = dict(saved.settings)
        self._pending = saved.pending
        self._cached = None

    @property
    def schedules(self) -> Mapping[str, Schedule]:
        """Each hyperparameter's Schedule, by argument name (read-only)."""
        return MappingProxyType(self._schedules)

    # --- settings ------------------------------------------------------------------

    use_radam = _setting("use_radam", "RAdam's rectification of Adam's update.")
    L2_is_weight_decay = _setting(
        "L2_is_weight_decay",
        "Whether L2 is applied as decoupled weight decay (AdamW) rather than "
        "added to the gradient.",
    )

    # --- step and score ----------------------------------------------------------

    @property
    def step(self) -> int:
        """The schedule step: how many times `step_schedules()` was called."""
        return self._step

    def step_schedules(self) -> None:
        """Advance every schedule by one step (and, for a rule with running
        sums, such as Schedule-Free's, take the sums of this step's updates)."""
        if self._pending is not None:
            self._state.sums, self._pending = self._pending, None
        self._step += 1

    @property
    def last_score(self) -> tuple[int, float] | None:
        """`(step, score)` of the last evaluation, or None; schedules such as
        `plateau` read it. Set a float (stored with the current step) or a
        `(step, score)` tuple."""
        return self._last_score

    @last_score.setter
    def last_score(self, score: float | tuple[int, float] | None) -> None:
        self._last_score = (
            None if score is None else check_last_score(score, self._step)
        )


def check_last_score(score: Any, step: int) -> tuple[int, float]:
    """`score` (a number, taken at `step`, or a `(step, score)` tuple) as a
    `(step, score)` pair; a ConfigError unless the score is a float (an
    infinity included: -inf is the worst score) or an int a float can hold,
    not NaN, and its step a whole number in [0, 2**63). A NaN compares as
    neither better nor worse, so schedules such as plateau would misread it."""
    if isinstance(score, tuple):
        if len(score) != 2 or type(score[0]) is not int or not 0 <= score[0] <= MAX_INT:
            raise ConfigError(
                f"last_score must be a number or a (step, score) tuple with a "
                f"whole step in [0, 2**63), got {show(score)}"
            )
        step, value = score
    else:
        value = score
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"last_score must be a number, got {show(value)}")
    x = _as_float(value)
    if math.isnan(x) or (math.isinf(x) and isinstance(value, numbers.Integral)):
        raise ConfigError(
            f"last_score must be a number that a float can hold and not NaN, got "
            f"{show(value)}; report a failed evaluation as float('-inf')"
        )
    return (step, x)


expose(HPARAMS)
