"""Thinc 9.1.1's schedules, with its names, signatures and formulas, and the
conversion of plain values (numbers, lists, generators) into schedules.

The schedules Thinc lacks live in `optsvc.schedules.extra`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from dataclasses import dataclass
from types import GeneratorType
from typing import Any

from optsvc import registries
from optsvc.schedules.base import Schedule, _check_number, _check_schedule, schedule_fn

# --- Thinc 9.1.1's schedules ---------------------------------------------------


@registries.schedules.register("constant.v1")
def constant(rate: float) -> Schedule[float]:
    """The same value at every step.

    >>> constant(0.1)(500)
    0.1
    """
    _check_number("constant", "rate", rate)
    return Schedule("constant", _constant, attrs={"rate": rate})


@schedule_fn("constant")
def _constant(schedule: Schedule, step: int, **kwargs: Any) -> float:
    return schedule.attrs["rate"]


@registries.schedules.register("constant_then.v1")
def constant_then(
    rate: float, steps: int, schedule: Schedule[float]
) -> Schedule[float]:
    """`rate` for the first `steps` steps, then `schedule(step)`.

    As in Thinc 9, the inner schedule sees the global step, not
    `step - steps`.

    >>> s = constant_then(1.0, 2, constant(0.5))
    >>> [s(0), s(1), s(2)]
    [1.0, 1.0, 0.5]
    """
    _check_number("constant_then", "rate", rate)
    _check_number("constant_then", "steps", steps, minimum=0)
    _check_schedule("constant_then", "schedule", schedule)
    return Schedule(
        "constant_then",
        _constant_then,
        attrs={"rate": rate, "steps": steps, "schedule": schedule},
    )


@schedule_fn("constant_then")
def _constant_then(schedule: Schedule, step: int, **kwargs: Any) -> float:
    if step < schedule.attrs["steps"]:
        return schedule.attrs["rate"]
    return schedule.attrs["schedule"](step, **kwargs)


@registries.schedules.register("decaying.v1")
def decaying(base_rate: float, decay: float, *, t: float = 0.0) -> Schedule[float]:
    """Inverse-time decay: `base_rate / (1 + decay * (step + t))`.

    >>> decaying(0.001, 1e-4)(1)
    0.000999900009999
    """
    _check_number("decaying", "base_rate", base_rate)
    _check_number("decaying", "decay", decay)
    _check_number("decaying", "t", t)
    return Schedule(
        "decaying", _decaying, attrs={"base_rate": base_rate, "decay": decay, "t": t}
    )


@schedule_fn("decaying")
def _decaying(schedule: Schedule, step: int, **kwargs: Any) -> float:
    a = schedule.attrs
    return a["base_rate"] * (1.0 / (1.0 + a["decay"] * (step + a["t"])))


@registries.schedules.register("compounding.v1")
def compounding(
    start: float, stop: float, compound: float, *, t: float = 0.0
) -> Schedule[float]:
    """`start * compound ** (step + t)`, clipped at `stop` (from either side).

    >>> s = compounding(1.0, 10.0, 1.5)
    >>> [s(0), s(1), s(2), s(9)]
    [1.0, 1.5, 2.25, 10.0]
    """
    for name, value in (("start", start), ("stop", stop), ("compound", compound)):
        _check_number("compounding", name, value)
    _check_number("compounding", "t", t)
    return Schedule(
        "compounding",
        _compounding,
        attrs={"start": start, "stop": stop, "compound": compound, "t": t},
    )


@schedule_fn("compounding")
def _compounding(schedule: Schedule, step: int, **kwargs: Any) -> float:
    a = schedule.attrs
    try:
        value = a["start"] * (a["compound"] ** (step + a["t"]))
    except OverflowError:  # compound ** n past float range (Thinc 9 raises)
        value = math.copysign(math.inf, a["start"]) if a["start"] else 0.0
    return max(value, a["stop"]) if a["start"] > a["stop"] else min(value, a["stop"])


@registries.schedules.register("warmup_linear.v1")
def warmup_linear(
    initial_rate: float, warmup_steps: int, total_steps: int
) -> Schedule[float]:
    """Linear warmup from 0 to `initial_rate` over `warmup_steps`, then a
    linear decline to 0 at `total_steps`.

    factor = step / max(1, warmup_steps) during warmup, else
    max(0, (total_steps - step) / max(1, total_steps - warmup_steps)).

    >>> s = warmup_linear(1.0, 2, 4)
    >>> [s(0), s(1), s(2), s(3), s(4)]
    [0.0, 0.5, 1.0, 0.5, 0.0]
    """
    _check_number("warmup_linear", "initial_rate", initial_rate)
    _check_number("warmup_linear", "warmup_steps", warmup_steps, minimum=0)
    _check_number("warmup_linear", "total_steps", total_steps, minimum=0)
    return Schedule(
        "warmup_linear",
        _warmup_linear,
        attrs={
            "initial_rate": initial_rate,
            "warmup_steps": warmup_steps,
            "total_steps": total_steps,
        },
    )


@schedule_fn("warmup_linear")
def _warmup_linear(schedule: Schedule, step: int, **kwargs: Any) -> float:
    a = schedule.attrs
    warmup, total = a["warmup_steps"], a["total_steps"]
    if step < warmup:
        factor = step / max(1, warmup)
    else:
        factor = max(0.0, (total - step) / max(1.0, total - warmup))
    return factor * a["initial_rate"]


@registries.schedules.register("slanted_triangular.v1")
def slanted_triangular(
    max_rate: float,
    num_steps: int,
    *,
    cut_frac: float = 0.1,
    ratio: int = 32,
    t: float = 0.0,
) -> Schedule[float]:
    """Howard and Ruder's slanted triangular rate.

    With cut = int(num_steps * cut_frac) and x = step + t + 1:
    p = x / cut while x < cut, else 1 - (x - cut) / (cut * (1 / cut_frac - 1));
    rate = max_rate * (1 + p * (ratio - 1)) / ratio.
    """
    _check_number("slanted_triangular", "max_rate", max_rate)
    _check_number("slanted_triangular", "num_steps", num_steps, minimum=0)
    _check_number("slanted_triangular", "cut_frac", cut_frac)
    _check_number("slanted_triangular", "ratio", ratio)
    if ratio <= 0:  # the rate divides by it at every step
        raise ValueError(f"slanted_triangular: 'ratio' must be > 0, got {ratio!r}")
    _check_number("slanted_triangular", "t", t)
    cut = int(num_steps * cut_frac)
    if cut <= 0 or not 0 < cut_frac < 1:
        raise ValueError(
            "slanted_triangular: 'num_steps * cut_frac' must be at least 1 and "
            f"0 < cut_frac < 1, got num_steps={num_steps!r}, cut_frac={cut_frac!r}"
        )
    return Schedule(
        "slanted_triangular",
        _slanted_triangular,
        attrs={
            "max_rate": max_rate,
            "cut": cut,
            "cut_frac": cut_frac,
            "ratio": ratio,
            "t": t,
        },
    )


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
def cyclic_triangular(min_lr: float, max_lr: float, period: int) -> Schedule[float]:
    """Triangular cycles between `min_lr` and `max_lr`, `2 * period` steps each.

    With it = step + 1: cycle = floor(1 + it / (2 * period)),
    x = |it / period - 2 * cycle + 1|,
    rate = min_lr + (max_lr - min_lr) * max(0, 1 - x).
    """
    _check_number("cyclic_triangular", "min_lr", min_lr)
    _check_number("cyclic_triangular", "max_lr", max_lr)
    _check_number("cyclic_triangular", "period", period)
    if period <= 0:
        raise ValueError(f"cyclic_triangular: 'period' must be > 0, got {period!r}")
    return Schedule(
        "cyclic_triangular",
        _cyclic_triangular,
        attrs={"min_lr": min_lr, "max_lr": max_lr, "period": period},
    )


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
def plateau(
    max_patience: int, scale: float, schedule: Schedule[float]
) -> Schedule[float]:
    """`schedule(step) * scale ** n_plateaus`, where a plateau is counted each
    time `max_patience` new scores in a row fail to beat the best score.

    Scores arrive as `last_score=(step_of_score, score)`; the optimizer passes
    its `last_score`. A score seen again (same step) is not counted twice.
    """
    _check_number("plateau", "max_patience", max_patience, minimum=1)
    _check_number("plateau", "scale", scale)
    _check_schedule("plateau", "schedule", schedule)
    return Schedule(
        "plateau",
        _plateau,
        attrs={
            "max_patience": max_patience,
            "scale": scale,
            "schedule": schedule,
            "state": PlateauState(),
        },
    )


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
            raise ValueError(
                f"plateau: scores must arrive in step order; got a score for step "
                f"{score_step} after one for step {state.last_score_step}"
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


def from_list(values: list[float], *, name: str = "value") -> Schedule[float]:
    """One value a step; the last one repeats."""
    if not values:
        raise ValueError(f"'{name}' is an empty list; give at least one value")
    for value in values:
        _check_number(name, "list item", value)
    return Schedule("list", _list, attrs={"values": list(values)})


@schedule_fn("list")
def _list(schedule: Schedule, step: int, **kwargs: Any) -> float:
    values = schedule.attrs["values"]
    return values[step] if step < len(values) else values[-1]


def from_generator(generator: Iterator[float], *, name: str = "value") -> Schedule:
    """The generator's n-th value at step n; its last value once it runs out.

    Steps must not decrease. A generator cannot be saved with the optimizer:
    use a list or a Schedule for a job that checkpoints.
    """
    try:
        first = next(generator)
    except StopIteration:
        raise ValueError(
            f"'{name}' is an exhausted generator; it yielded no value"
        ) from None
    _check_number(name, "generator value", first)
    return Schedule(
        "generator",
        _generator,
        attrs={
            "name": name,
            "last_step": 0,
            "last_value": first,
            "generator": generator,
        },
    )


@schedule_fn("generator")
def _generator(schedule: Schedule, step: int, **kwargs: Any) -> float:
    a = schedule.attrs
    if step < a["last_step"]:
        raise ValueError(
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


def to_schedule(name: str, value: Any) -> Schedule:
    """Turn a hyperparameter given as a number, list, generator or Schedule
    into a Schedule; anything else is a ValueError naming `name`."""
    if isinstance(value, Schedule):
        return value
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        _check_number(name, "value", value)
        return constant(float(value))
    if isinstance(value, (list, tuple)):
        return from_list(list(value), name=name)
    if isinstance(value, (GeneratorType, Iterator)):
        return from_generator(value, name=name)
    raise ValueError(
        f"'{name}' must be a number, a list of numbers, a generator or a Schedule; "
        f"got {type(value).__name__} {value!r}"
    )


__all__ = [
    "Schedule",
    "PlateauState",
    "constant",
    "constant_then",
    "decaying",
    "compounding",
    "warmup_linear",
    "slanted_triangular",
    "cyclic_triangular",
    "plateau",
    "to_schedule",
]
