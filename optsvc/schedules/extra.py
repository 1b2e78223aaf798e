"""Schedules that modern training uses and Thinc lacks.

Each is a `Schedule` like Thinc's, registered as `NAME.v1`. Step counts are
plain ints; "progress" below is always clipped to [0, 1].
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from optsvc import registries
from optsvc.schedules.base import Schedule, schedule_fn
from optsvc.schedules.thinc import (
    WARMUP_WITHIN_TOTAL,
    FinalRate,
    NextSchedule,
    PeakAfterWarmup,
    PeakRate,
    RisingFraction,
    StartRate,
    WarmupSteps,
)
from optsvc.spec import Arg, Rule, checked


@registries.schedules.register("warmup_cosine.v1")
@checked(WARMUP_WITHIN_TOTAL)
def warmup_cosine(
    initial_rate: PeakAfterWarmup,
    warmup_steps: WarmupSteps,
    total_steps: Annotated[int, Arg("step at which the decay ends", ge=1)],
    *,
    final_rate: FinalRate = 0.0,
) -> Schedule[float]:
    """Linear warmup to `initial_rate`, then cosine decay to `final_rate`.

    step < warmup_steps: initial_rate * step / warmup_steps; after that, with
    p = (step - warmup_steps) / max(1, total_steps - warmup_steps) clipped to 1:
    final_rate + (initial_rate - final_rate) * (1 + cos(pi * p)) / 2.

    >>> s = warmup_cosine(1.0, 2, 6, final_rate=0.1)
    >>> [round(s(i), 3) for i in (0, 1, 2, 4, 6, 9)]
    [0.0, 0.5, 1.0, 0.55, 0.1, 0.1]
    """
    return Schedule("warmup_cosine", _warmup_cosine, attrs=locals())


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
@checked()
def exponential_decay(
    initial_rate: StartRate,
    decay_rate: Annotated[float, Arg("factor per decay_steps", ge=0)],
    decay_steps: Annotated[int, Arg("steps per factor of decay_rate", ge=1)],
    *,
    staircase: Annotated[bool, Arg("decay in discrete steps")] = False,
    final_rate: FinalRate = 0.0,
) -> Schedule[float]:
    """`initial_rate * decay_rate ** (step / decay_steps)`, never below
    `final_rate`; with `staircase`, the exponent is floored (step decay).

    >>> exponential_decay(1.0, 0.5, 10)(20)
    0.25
    >>> exponential_decay(1.0, 0.5, 10, staircase=True)(19)
    0.5
    """
    attrs = {**locals(), "staircase": bool(staircase)}
    return Schedule("exponential_decay", _exponential_decay, attrs=attrs)


@schedule_fn("exponential_decay")
def _exponential_decay(schedule: Schedule, step: int, **kwargs: Any) -> float:
    a = schedule.attrs
    exponent = step / a["decay_steps"]
    if a["staircase"]:
        exponent = math.floor(exponent)
    return max(a["final_rate"], a["initial_rate"] * a["decay_rate"] ** exponent)


@registries.schedules.register("step_decay.v1")
@checked()
def step_decay(
    initial_rate: StartRate,
    step_size: Annotated[int, Arg("steps between decays", ge=1)],
    gamma: Annotated[float, Arg("factor per decay", ge=0)] = 0.1,
) -> Schedule[float]:
    """PyTorch's StepLR: `initial_rate * gamma ** (step // step_size)`.

    >>> step_decay(1.0, 10, 0.5)(25)
    0.25
    """
    return Schedule("step_decay", _step_decay, attrs=locals())


@schedule_fn("step_decay")
def _step_decay(schedule: Schedule, step: int, **kwargs: Any) -> float:
    a = schedule.attrs
    return a["initial_rate"] * a["gamma"] ** (step // a["step_size"])


def _one_value_more(boundaries: list[int], values: list[float]) -> str | None:
    if len(values) != len(boundaries) + 1:
        return (
            "'values' must have one more item than 'boundaries', got "
            f"{len(values)} values and {len(boundaries)} boundaries"
        )
    return None


def _increasing(boundaries: list[int]) -> str | None:
    if any(b2 <= b1 for b1, b2 in zip(boundaries, boundaries[1:])):
        return "must increase strictly"
    return None


@registries.schedules.register("piecewise_constant.v1")
@checked(Rule(_one_value_more), Rule(_increasing, at="boundaries"))
def piecewise_constant(
    boundaries: Annotated[list[int], Arg("steps where the value changes", ge=0)],
    values: Annotated[list[float], Arg("one more value than boundaries")],
) -> Schedule[float]:
    """`values[i]` for steps in [boundaries[i-1], boundaries[i]); one more
    value than boundaries, boundaries strictly increasing.

    >>> s = piecewise_constant([10, 20], [1.0, 0.5, 0.1])
    >>> [s(9), s(10), s(20)]
    [1.0, 0.5, 0.1]
    """
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
@checked()
def linear_warmup(
    warmup_steps: WarmupSteps,
    schedule: NextSchedule,
) -> Schedule[float]:
    """Ramp linearly from 0 to `schedule(warmup_steps)` over `warmup_steps`
    steps, then follow `schedule(step)` (the inner schedule sees the global
    step, as with Thinc's `constant_then`).

    >>> from optsvc.schedules.thinc import constant
    >>> s = linear_warmup(4, constant(1.0))
    >>> [s(0), s(2), s(4), s(100)]
    [0.0, 0.5, 1.0, 1.0]
    """
    return Schedule("linear_warmup", _linear_warmup, attrs=locals())


@schedule_fn("linear_warmup")
def _linear_warmup(schedule: Schedule, step: int, **kwargs: Any) -> float:
    warmup = schedule.attrs["warmup_steps"]
    inner = schedule.attrs["schedule"]
    if step < warmup:
        return inner(warmup, **kwargs) * step / warmup
    return inner(step, **kwargs)


@registries.schedules.register("one_cycle.v1")
@checked()
def one_cycle(
    max_rate: PeakRate,
    total_steps: Annotated[int, Arg("length of the cycle, in steps", ge=2)],
    *,
    pct_start: RisingFraction = 0.25,
    div_factor: Annotated[
        float, Arg("initial value = max_rate / div_factor", gt=0)
    ] = 25.0,
    final_div_factor: Annotated[
        float, Arg("final value = initial / final_div_factor", gt=0)
    ] = 1e4,
) -> Schedule[float]:
    """Smith's one-cycle policy with cosine annealing (PyTorch's OneCycleLR).

    Rises from max_rate / div_factor to max_rate over the first
    pct_start * total_steps steps, then falls to
    max_rate / (div_factor * final_div_factor) at total_steps - 1, and stays
    there. Each phase: end + (start - end) * (1 + cos(pi * p)) / 2.
    """
    return Schedule("one_cycle", _one_cycle, attrs=locals())


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


# AdEMAMix's warmups (Pagliardini et al., 2024, section 3): its slow
# momentum's weight `alpha` and decay `beta3` start at no effect and reach
# their values after `warmup_steps` (the paper's T_alpha = T_beta3). The paper
# counts updates from 1; the schedule's step s is the update s + 1.


@registries.schedules.register("ademamix_alpha_warmup.v1")
@checked()
def ademamix_alpha_warmup(
    alpha: Annotated[float, Arg("AdEMAMix's alpha after warmup", ge=0)],
    warmup_steps: Annotated[int, Arg("steps of linear warmup", ge=1)],
) -> Schedule[float]:
    """AdEMAMix's alpha scheduler: `min((step + 1) * alpha / warmup_steps, alpha)`.

    >>> s = ademamix_alpha_warmup(5.0, 10)
    >>> [s(0), s(4), s(9), s(100)]
    [0.5, 2.5, 5.0, 5.0]
    """
    return Schedule("ademamix_alpha_warmup", _ademamix_alpha, attrs=locals())


@schedule_fn("ademamix_alpha_warmup")
def _ademamix_alpha(schedule: Schedule, step: int, **kwargs: Any) -> float:
    a = schedule.attrs
    return min((step + 1) * a["alpha"] / a["warmup_steps"], a["alpha"])


def _beta1_below_beta3(beta1: float, beta3: float) -> str | None:
    if beta1 >= beta3:
        return f"'beta1' ({beta1}) must be below 'beta3' ({beta3})"
    return None


@registries.schedules.register("ademamix_beta3_warmup.v1")
@checked(Rule(_beta1_below_beta3))
def ademamix_beta3_warmup(
    beta1: Annotated[float, Arg("the value at the start (Adam's beta1)", gt=0, lt=1)],
    beta3: Annotated[float, Arg("AdEMAMix's beta3 after warmup", gt=0, lt=1)],
    warmup_steps: Annotated[int, Arg("steps of warmup", ge=1)],
) -> Schedule[float]:
    """AdEMAMix's beta3 scheduler: from `beta1` to `beta3` over `warmup_steps`,
    linear in the half-life 1 / ln(beta): with t = (step + 1) / warmup_steps,
    `exp(ln b1 * ln b3 / ((1 - t) * ln b3 + t * ln b1))`, never above `beta3`.

    >>> s = ademamix_beta3_warmup(0.9, 0.9999, 100)
    >>> [round(s(i), 4) for i in (0, 49, 99, 500)]
    [0.9909, 0.9998, 0.9999, 0.9999]
    """
    return Schedule("ademamix_beta3_warmup", _ademamix_beta3, attrs=locals())


@schedule_fn("ademamix_beta3_warmup")
def _ademamix_beta3(schedule: Schedule, step: int, **kwargs: Any) -> float:
    a = schedule.attrs
    log1, log3 = math.log(a["beta1"]), math.log(a["beta3"])
    t = min(1.0, (step + 1) / a["warmup_steps"])
    return min(math.exp(log1 * log3 / ((1.0 - t) * log3 + t * log1)), a["beta3"])


# The schedule functions this module defines, each registered as NAME.v1:
# `optsvc.schedules` and `optsvc` re-export them from this list.
__all__ = [
    "warmup_cosine",
    "exponential_decay",
    "step_decay",
    "piecewise_constant",
    "linear_warmup",
    "one_cycle",
    "ademamix_alpha_warmup",
    "ademamix_beta3_warmup",
]
