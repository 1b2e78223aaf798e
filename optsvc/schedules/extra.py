"""Schedules that modern training uses and Thinc lacks.

Each is a `Schedule` like Thinc's, registered as `NAME.v1`. Step counts are
plain ints; "progress" below is always clipped to [0, 1].
"""

from __future__ import annotations

import math
from typing import Any

from optsvc import registries
from optsvc.schedules.base import Schedule, _check_number, _check_schedule, schedule_fn


def _warmup_args(fn: str, warmup_steps: int, total_steps: int) -> None:
    _check_number(fn, "warmup_steps", warmup_steps, minimum=0)
    _check_number(fn, "total_steps", total_steps, minimum=1)
    if warmup_steps > total_steps:
        raise ValueError(
            f"{fn}: 'warmup_steps' ({warmup_steps}) must not exceed "
            f"'total_steps' ({total_steps})"
        )


@registries.schedules.register("warmup_cosine.v1")
def warmup_cosine(
    initial_rate: float,
    warmup_steps: int,
    total_steps: int,
    *,
    final_rate: float = 0.0,
) -> Schedule[float]:
    """Linear warmup to `initial_rate`, then cosine decay to `final_rate`.

    step < warmup_steps: initial_rate * step / warmup_steps; after that, with
    p = (step - warmup_steps) / max(1, total_steps - warmup_steps) clipped to 1:
    final_rate + (initial_rate - final_rate) * (1 + cos(pi * p)) / 2.

    >>> s = warmup_cosine(1.0, 2, 6, final_rate=0.1)
    >>> [round(s(i), 3) for i in (0, 1, 2, 4, 6, 9)]
    [0.0, 0.5, 1.0, 0.55, 0.1, 0.1]
    """
    _check_number("warmup_cosine", "initial_rate", initial_rate, minimum=0)
    _check_number("warmup_cosine", "final_rate", final_rate, minimum=0)
    _warmup_args("warmup_cosine", warmup_steps, total_steps)
    return Schedule(
        "warmup_cosine",
        _warmup_cosine,
        attrs={
            "initial_rate": initial_rate,
            "warmup_steps": warmup_steps,
            "total_steps": total_steps,
            "final_rate": final_rate,
        },
    )


@schedule_fn("warmup_cosine")
def _warmup_cosine(schedule: Schedule, step: int, **kwargs: Any) -> float:
    a = schedule.attrs
    warmup, total = a["warmup_steps"], a["total_steps"]
    if step < warmup:
        return a["initial_rate"] * step / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    cosine = 0.5 * (1.0 + math.cos(math.pi * p))
    return a["final_rate"] + (a["initial_rate"] - a["final_rate"]) * cosine


@registries.schedules.register("exponential_decay.v1")
def exponential_decay(
    initial_rate: float,
    decay_rate: float,
    decay_steps: int,
    *,
    staircase: bool = False,
    final_rate: float = 0.0,
) -> Schedule[float]:
    """`initial_rate * decay_rate ** (step / decay_steps)`, never below
    `final_rate`; with `staircase`, the exponent is floored (step decay).

    >>> exponential_decay(1.0, 0.5, 10)(20)
    0.25
    >>> exponential_decay(1.0, 0.5, 10, staircase=True)(19)
    0.5
    """
    _check_number("exponential_decay", "initial_rate", initial_rate, minimum=0)
    _check_number("exponential_decay", "decay_rate", decay_rate, minimum=0)
    _check_number("exponential_decay", "decay_steps", decay_steps, minimum=1)
    _check_number("exponential_decay", "final_rate", final_rate, minimum=0)
    return Schedule(
        "exponential_decay",
        _exponential_decay,
        attrs={
            "initial_rate": initial_rate,
            "decay_rate": decay_rate,
            "decay_steps": decay_steps,
            "staircase": bool(staircase),
            "final_rate": final_rate,
        },
    )


@schedule_fn("exponential_decay")
def _exponential_decay(schedule: Schedule, step: int, **kwargs: Any) -> float:
    a = schedule.attrs
    exponent = step / a["decay_steps"]
    if a["staircase"]:
        exponent = math.floor(exponent)
    return max(a["final_rate"], a["initial_rate"] * a["decay_rate"] ** exponent)


@registries.schedules.register("step_decay.v1")
def step_decay(
    initial_rate: float, step_size: int, gamma: float = 0.1
) -> Schedule[float]:
    """PyTorch's StepLR: `initial_rate * gamma ** (step // step_size)`.

    >>> step_decay(1.0, 10, 0.5)(25)
    0.25
    """
    _check_number("step_decay", "initial_rate", initial_rate, minimum=0)
    _check_number("step_decay", "step_size", step_size, minimum=1)
    _check_number("step_decay", "gamma", gamma, minimum=0)
    return Schedule(
        "step_decay",
        _step_decay,
        attrs={"initial_rate": initial_rate, "step_size": step_size, "gamma": gamma},
    )


@schedule_fn("step_decay")
def _step_decay(schedule: Schedule, step: int, **kwargs: Any) -> float:
    a = schedule.attrs
    return a["initial_rate"] * a["gamma"] ** (step // a["step_size"])


@registries.schedules.register("piecewise_constant.v1")
def piecewise_constant(boundaries: list[int], values: list[float]) -> Schedule[float]:
    """`values[i]` for steps in [boundaries[i-1], boundaries[i]); one more
    value than boundaries, boundaries strictly increasing.

    >>> s = piecewise_constant([10, 20], [1.0, 0.5, 0.1])
    >>> [s(9), s(10), s(20)]
    [1.0, 0.5, 0.1]
    """
    if not isinstance(boundaries, (list, tuple)) or not isinstance(
        values, (list, tuple)
    ):
        raise ValueError("piecewise_constant: 'boundaries' and 'values' must be lists")
    for b in boundaries:
        _check_number("piecewise_constant", "boundaries item", b, minimum=0)
    for v in values:
        _check_number("piecewise_constant", "values item", v)
    if len(values) != len(boundaries) + 1:
        raise ValueError(
            "piecewise_constant: 'values' must have one more item than "
            f"'boundaries', got {len(values)} values and {len(boundaries)} boundaries"
        )
    if any(b2 <= b1 for b1, b2 in zip(boundaries, boundaries[1:])):
        raise ValueError(
            f"piecewise_constant: 'boundaries' must increase strictly, got {boundaries}"
        )
    return Schedule(
        "piecewise_constant",
        _piecewise_constant,
        attrs={"boundaries": list(boundaries), "values": list(values)},
    )


@schedule_fn("piecewise_constant")
def _piecewise_constant(schedule: Schedule, step: int, **kwargs: Any) -> float:
    a = schedule.attrs
    for boundary, value in zip(a["boundaries"], a["values"]):
        if step < boundary:
            return value
    return a["values"][-1]


@registries.schedules.register("linear_warmup.v1")
def linear_warmup(warmup_steps: int, schedule: Schedule[float]) -> Schedule[float]:
    """Ramp linearly from 0 to `schedule(warmup_steps)` over `warmup_steps`
    steps, then follow `schedule(step)` (the inner schedule sees the global
    step, as with Thinc's `constant_then`).

    >>> from optsvc.schedules.thinc import constant
    >>> s = linear_warmup(4, constant(1.0))
    >>> [s(0), s(2), s(4), s(100)]
    [0.0, 0.5, 1.0, 1.0]
    """
    _check_number("linear_warmup", "warmup_steps", warmup_steps, minimum=0)
    _check_schedule("linear_warmup", "schedule", schedule)
    return Schedule(
        "linear_warmup",
        _linear_warmup,
        attrs={"warmup_steps": warmup_steps, "schedule": schedule},
    )


@schedule_fn("linear_warmup")
def _linear_warmup(schedule: Schedule, step: int, **kwargs: Any) -> float:
    warmup = schedule.attrs["warmup_steps"]
    inner = schedule.attrs["schedule"]
    if step < warmup:
        return inner(warmup, **kwargs) * step / warmup
    return inner(step, **kwargs)


@registries.schedules.register("one_cycle.v1")
def one_cycle(
    max_rate: float,
    total_steps: int,
    *,
    pct_start: float = 0.25,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> Schedule[float]:
    """Smith's one-cycle policy with cosine annealing (PyTorch's OneCycleLR).

    Rises from max_rate / div_factor to max_rate over the first
    pct_start * total_steps steps, then falls to
    max_rate / (div_factor * final_div_factor) at total_steps - 1, and stays
    there. Each phase: end + (start - end) * (1 + cos(pi * p)) / 2.
    """
    _check_number("one_cycle", "max_rate", max_rate, minimum=0)
    _check_number("one_cycle", "total_steps", total_steps, minimum=2)
    _check_number("one_cycle", "div_factor", div_factor)
    _check_number("one_cycle", "final_div_factor", final_div_factor)
    if not 0 < pct_start < 1:
        raise ValueError(f"one_cycle: 'pct_start' must be in (0, 1), got {pct_start!r}")
    if div_factor <= 0 or final_div_factor <= 0:
        raise ValueError("one_cycle: 'div_factor' and 'final_div_factor' must be > 0")
    return Schedule(
        "one_cycle",
        _one_cycle,
        attrs={
            "max_rate": max_rate,
            "total_steps": total_steps,
            "pct_start": pct_start,
            "div_factor": div_factor,
            "final_div_factor": final_div_factor,
        },
    )


def _cos_anneal(start: float, end: float, p: float) -> float:
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * p))


@schedule_fn("one_cycle")
def _one_cycle(schedule: Schedule, step: int, **kwargs: Any) -> float:
    a = schedule.attrs
    peak = a["max_rate"]
    start = peak / a["div_factor"]
    end = start / a["final_div_factor"]
    up_end = a["pct_start"] * a["total_steps"] - 1
    last = a["total_steps"] - 1
    if step <= up_end:
        return _cos_anneal(start, peak, step / up_end if up_end > 0 else 1.0)
    p = min(1.0, (step - up_end) / max(last - up_end, 1e-12))
    return _cos_anneal(peak, end, p)


__all__ = [
    "warmup_cosine",
    "exponential_decay",
    "step_decay",
    "piecewise_constant",
    "linear_warmup",
    "one_cycle",
]
