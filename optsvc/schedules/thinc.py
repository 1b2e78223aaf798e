"""Thinc 9.1.1's schedules, with its names, signatures and formulas, and the
conversion of plain values (numbers, lists, generators) into schedules.

A schedule's attributes are its function's arguments (`attrs=locals()`, read
before anything else is bound), plus any state it keeps.

The schedules Thinc lacks live in `optsvc.schedules.extra`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from dataclasses import dataclass
from types import GeneratorType
from typing import Annotated, Any, Union

from optsvc import registries
from optsvc.errors import ConfigError
from optsvc.schedules.base import Schedule, schedule_fn
from optsvc.spec import Arg, Param, Rule, checked, show

# A hyperparameter, or a schedule's inner schedule, as given from Python: a
# number, a list, a generator or a Schedule (`to_schedule`).
ScheduleT = Union[float, list, Any, Schedule]  # noqa: UP007 (a runtime alias)

# Arguments that several schedules take (here and in `optsvc.schedules.extra`),
# each declared once.
PeakAfterWarmup = Annotated[float, Arg("peak value, reached after warmup", ge=0)]
WarmupSteps = Annotated[int, Arg("steps of linear warmup", ge=0)]
PeakRate = Annotated[float, Arg("peak value", ge=0)]
RisingFraction = Annotated[float, Arg("fraction of steps spent increasing", gt=0, lt=1)]
FinalRate = Annotated[float, Arg("the value never goes below this floor", ge=0)]
StartRate = Annotated[float, Arg("value at step 0", ge=0)]
StepOffset = Annotated[float, Arg("step offset")]
NextSchedule = Annotated[Schedule[float], Arg("the schedule that follows")]

# --- Thinc 9.1.1's schedules ---------------------------------------------------


@registries.schedules.register("constant.v1")
@checked()
def constant(rate: Annotated[float, Arg("the value")]) -> Schedule[float]:
    """The same value at every step.

    >>> constant(0.1)(500)
    0.1
    """
    return Schedule("constant", _constant, attrs=locals())


@schedule_fn("constant")
def _constant(schedule: Schedule, step: int, **kwargs: Any) -> float:
    return schedule.attrs["rate"]


@registries.schedules.register("constant_then.v1")
@checked()
def constant_then(
    rate: Annotated[float, Arg("the value for the first steps")],
    steps: Annotated[int, Arg("steps at that value", ge=0)],
    schedule: Annotated[
        ScheduleT, Arg("the schedule that follows (or a list or generator of values)")
    ],
) -> Schedule[float]:
    """`rate` for the first `steps` steps, then `schedule(step)`.

    As in Thinc 9, a schedule that follows sees the global step, not
    `step - steps`; a list or a generator of values (Thinc 8) starts after
    the first `steps`.

    >>> s = constant_then(1.0, 2, constant(0.5))
    >>> [s(0), s(1), s(2)], constant_then(1.0, 2, [5, 6])(3)
    ([1.0, 1.0, 0.5], 6)
    """
    if isinstance(schedule, numbers.Number):
        raise ConfigError(
            "constant_then: 'schedule' must be a schedule, or a list or generator "
            f"of values, got {show(schedule)}"
        )
    offset = 0 if isinstance(schedule, Schedule) else steps
    schedule = to_schedule("schedule", schedule)
    return Schedule("constant_then", _constant_then, attrs=locals())


@schedule_fn("constant_then")
def _constant_then(schedule: Schedule, step: int, **kwargs: Any) -> float:
    a = schedule.attrs
    if step < a["steps"]:
        return a["rate"]
    return a["schedule"](step - a["offset"], **kwargs)


@registries.schedules.register("decaying.v1")
@checked()
def decaying(
    base_rate: Annotated[float, Arg("value at step 0")],
    decay: Annotated[float, Arg("decay per step", ge=0)],
    *,
    t: StepOffset = 0.0,
) -> Schedule[float]:
    """Inverse-time decay: `base_rate / (1 + decay * (step + t))`.

    >>> decaying(0.001, 1e-4)(1)
    0.000999900009999
    """
    return Schedule("decaying", _decaying, attrs=locals())


@schedule_fn("decaying")
def _decaying(schedule: Schedule, step: int, **kwargs: Any) -> float:
    a = schedule.attrs
    return a["base_rate"] * (1.0 / (1.0 + a["decay"] * (step + a["t"])))


@registries.schedules.register("compounding.v1")
@checked()
def compounding(
    start: Annotated[float, Arg("value at step 0")],
    stop: Annotated[float, Arg("the value is clipped at this bound")],
    compound: Annotated[float, Arg("factor per step")],
    *,
    t: StepOffset = 0.0,
) -> Schedule[float]:
    """`start * compound ** (step + t)`, clipped at `stop` (from either side).

    >>> s = compounding(1.0, 10.0, 1.5)
    >>> [s(0), s(1), s(2), s(9)]
    [1.0, 1.5, 2.25, 10.0]
    """
    return Schedule("compounding", _compounding, attrs=locals())


@schedule_fn("compounding")
def _compounding(schedule: Schedule, step: int, **kwargs: Any) -> float:
    a = schedule.attrs
    try:
        value = a["start"] * (a["compound"] ** (step + a["t"]))
    except OverflowError:  # compound ** n past float range (Thinc 9 raises)
        value = math.copysign(math.inf, a["start"]) if a["start"] else 0.0
    return max(value, a["stop"]) if a["start"] > a["stop"] else min(value, a["stop"])


def _warmup_within_total(warmup_steps: int, total_steps: int) -> str | None:
    if warmup_steps > total_steps:
        return f"must be <= total_steps ({total_steps})"
    return None


# Warmup that ends after the schedule does: the rate never reaches its peak.
WARMUP_WITHIN_TOTAL = Rule(_warmup_within_total, at="warmup_steps")


# From Python, warmup_steps > total_steps stays allowed, as in Thinc (spaCy
# configs in the wild rely on it); a config file refuses it as a mistake.
@registries.schedules.register("warmup_linear.v1")
@checked(WARMUP_WITHIN_TOTAL.config_only())
def warmup_linear(
    initial_rate: PeakAfterWarmup,
    warmup_steps: WarmupSteps,
    total_steps: Annotated[int, Arg("step at which the schedule ends", ge=1)],
) -> Schedule[float]:
    """Linear warmup from 0 to `initial_rate` over `warmup_steps`, then a
    linear decline to 0 at `total_steps`.

    factor = step / max(1, warmup_steps) during warmup, else
    max(0, (total_steps - step) / max(1, total_steps - warmup_steps)).

    >>> s = warmup_linear(1.0, 2, 4)
    >>> [s(0), s(1), s(2), s(3), s(4)]
    [0.0, 0.5, 1.0, 0.5, 0.0]
    """
    return Schedule("warmup_linear", _warmup_linear, attrs=locals())


@schedule_fn("warmup_linear")
def _warmup_linear(schedule: Schedule, step: int, **kwargs: Any) -> float:
    a = schedule.attrs
    warmup, total = a["warmup_steps"], a["total_steps"]
    if step < warmup:
        factor = step / max(1, warmup)
    else:
        factor = max(0.0, (total - step) / max(1.0, total - warmup))
    return factor * a["initial_rate"]


def _rises_for_a_step(num_steps: int, cut_frac: float) -> str | None:
    if int(num_steps * cut_frac) < 1:
        return (
            "must be at least 1 / cut_frac, so that the rate rises for a step, "
            f"got num_steps * cut_frac = {num_steps * cut_frac:g}"
        )
    return None


@registries.schedules.register("slanted_triangular.v1")
@checked(Rule(_rises_for_a_step, at="num_steps"))
def slanted_triangular(
    max_rate: PeakRate,
    num_steps: Annotated[int, Arg("length of the schedule", ge=1)],
    *,
    cut_frac: RisingFraction = 0.1,
    ratio: Annotated[
        float, Arg("how much smaller the lowest value is than the peak", gt=0)
    ] = 32,
    t: StepOffset = 0.0,
) -> Schedule[float]:
    """Howard and Ruder's slanted triangular rate.

    With cut = int(num_steps * cut_frac) and x = step + t + 1:
    p = x / cut while x < cut, else 1 - (x - cut) / (cut * (1 / cut_frac - 1));
    rate = max_rate * (1 + p * (ratio - 1)) / ratio.
    """
    if not math.isfinite(max_rate * ratio):
        raise ConfigError(
            f"slanted_triangular: 'max_rate' * 'ratio' must be finite, got "
            f"{show(max_rate)} * {show(ratio)}; give a smaller max_rate"
        )
    attrs = {"max_rate": max_rate, "cut": int(num_steps * cut_frac)}
    attrs.update(cut_frac=cut_frac, ratio=ratio, t=t)
    return Schedule("slanted_triangular", _slanted_triangular, attrs=attrs)


@schedule_fn("slanted_triangular")
def _slanted_triangular(schedule: Schedule, step: int, **kwargs: Any) -> float:
    a = schedule.attrs
    cut, cut_frac, ratio = a["cut"], a["cut_frac"], a["ratio"]
    x = step + a["t"] + 1.0
    if x < cut:
        p = x / cut
    else:
        p = 1 - ((x - cut) / (cut * (1 / cut_frac - 1)))
    return a["max_rate"] * (1 + p * (ratio - 1)) * (1 / ratio)


@registries.schedules.register("cyclic_triangular.v1")
@checked()
def cyclic_triangular(
    min_lr: Annotated[float, Arg("lowest value", ge=0)],
    max_lr: Annotated[float, Arg("highest value", ge=0)],
    period: Annotated[int, Arg("half the length of a cycle, in steps", ge=1)],
) -> Schedule[float]:
    """Triangular cycles between `min_lr` and `max_lr`, `2 * period` steps each.

    With it = step + 1: cycle = floor(1 + it / (2 * period)),
    x = |it / period - 2 * cycle + 1|,
    rate = min_lr + (max_lr - min_lr) * max(0, 1 - x).
    """
    return Schedule("cyclic_triangular", _cyclic_triangular, attrs=locals())


@schedule_fn("cyclic_triangular")
def _cyclic_triangular(schedule: Schedule, step: int, **kwargs: Any) -> float:
    a = schedule.attrs
    it = step + 1
    cycle = math.floor(1 + it / (2 * a["period"]))
    x = abs(it / a["period"] - 2 * cycle + 1)
    return a["min_lr"] + (a["max_lr"] - a["min_lr"]) * max(0, 1 - x)


@dataclass
class PlateauState:
    """What `plateau` remembers between calls (saved with the optimizer)."""

    best_score: float | None = None
    last_score_step: int | None = None
    patience: int = 0
    n_plateaus: int = 0


@registries.schedules.register("plateau.v1")
@checked()
def plateau(
    max_patience: Annotated[
        int, Arg("evaluations without improvement to a plateau", ge=1)
    ],
    scale: Annotated[float, Arg("factor applied at each plateau", ge=0)],
    schedule: Annotated[Schedule[float], Arg("the schedule to scale")],
) -> Schedule[float]:
    """`schedule(step) * scale ** n_plateaus`, where a plateau is counted each
    time `max_patience` new scores in a row fail to beat the best score.

    Scores arrive as `last_score=(step_of_score, score)`; the optimizer passes
    its `last_score`. A score seen again (same step) is not counted twice.
    """
    return Schedule("plateau", _plateau, attrs={**locals(), "state": PlateauState()})


@schedule_fn("plateau")
def _plateau(
    schedule: Schedule,
    step: int,
    *,
    last_score: tuple[int, float] | None = None,
    **kwargs: Any,
) -> float:
    a = schedule.attrs
    state: PlateauState = a["state"]
    if last_score is not None:
        score_step, score = last_score
        if (
            state.best_score is None
            or state.last_score_step is None
            or score > state.best_score
        ):
            state.best_score = score
            state.patience = 0
        elif score_step < state.last_score_step:
            raise ConfigError(  # Thinc 9's words first: its tests match them
                f"plateau: Expected score with step >= {state.last_score_step}, was: "
                f"{score_step} (scores must arrive in step order)"
            )
        elif score_step > state.last_score_step:
            state.patience += 1
            if state.patience == a["max_patience"]:
                state.n_plateaus += 1
                state.patience = 0
        state.last_score_step = score_step
    inner = a["schedule"](step, last_score=last_score, **kwargs)
    return (a["scale"] ** state.n_plateaus) * inner


# --- Plain Python values as schedules ----------------------------------------

# What any hyperparameter takes as a plain value: finite numbers (a number, or
# a non-empty list of them); the ranges are each hyperparameter's own.
_PLAIN = Param("value", "hyper", Arg())
_NUMBER = Param("value", "number", Arg())


@schedule_fn("list")
def _list(schedule: Schedule, step: int, **kwargs: Any) -> float:
    values = schedule.attrs["values"]
    return values[step] if step < len(values) else values[-1]


@schedule_fn("generator")
def _generator(schedule: Schedule, step: int, **kwargs: Any) -> float:
    a = schedule.attrs
    if step < a["last_step"]:
        raise ConfigError(
            f"'{a['name']}' comes from a generator, which cannot go back from step "
            f"{a['last_step']} to step {step}"
        )
    value = a["last_value"]
    for _ in range(step - a["last_step"]):
        try:
            value = next(a["generator"])
        except StopIteration:
            break
    a["last_step"], a["last_value"] = step, value
    return value


def to_schedule(name: str, value: Any, *, checked: bool = False) -> Schedule:
    """A hyperparameter given as a number, a list (one value a step, the last
    repeats), a generator or a Schedule, as a Schedule. The numbers must be
    finite: `checked` says that the caller has checked them already (against
    the hyperparameter's range); anything else is a ConfigError naming `name`.
    """
    if isinstance(value, Schedule):
        return value
    if isinstance(value, (GeneratorType, Iterator)):
        return _from_generator(name, value)
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, list, tuple)):
        raise ConfigError(
            f"'{name}' must be a number, a list of numbers, a generator or a "
            f"Schedule, got {show(value)}"
        )
    problem = None if checked else _PLAIN.problem(value)
    if problem:
        raise ConfigError(f"'{name}' {problem}, got {show(value)}")
    if isinstance(value, (list, tuple)):
        return Schedule("list", _list, attrs={"values": list(value)})
    return Schedule("constant", _constant, attrs={"rate": float(value)})


def _from_generator(name: str, generator: Iterator[float]) -> Schedule:
    """The generator's n-th value at step n; its last value once it runs out.
    Steps must not decrease, and it cannot be saved with the optimizer (use
    a list or a Schedule for a job that checkpoints)."""
    try:
        first = next(generator)
    except StopIteration:
        raise ConfigError(
            f"'{name}' is an exhausted generator; it yielded no value"
        ) from None
    problem = _NUMBER.problem(first)
    if problem:
        raise ConfigError(f"'{name}' generator value {problem}, got {show(first)}")
    attrs = {"name": name, "last_step": 0, "last_value": first}
    return Schedule("generator", _generator, attrs={**attrs, "generator": generator})


# The schedule functions this module defines, each registered as NAME.v1:
# `optsvc.schedules` and `optsvc` re-export them from this list. PlateauState
# and to_schedule are imported by name.
__all__ = [
    "constant",
    "constant_then",
    "decaying",
    "compounding",
    "warmup_linear",
    "slanted_triangular",
    "cyclic_triangular",
    "plateau",
]
