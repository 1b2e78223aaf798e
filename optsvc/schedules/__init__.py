"""Schedules: Thinc 9.1.1's (`thinc`) and the ones Thinc lacks (`extra`), all
`Schedule` objects (`base`) registered as `NAME.v1`."""

from optsvc.schedules.base import Schedule
from optsvc.schedules.extra import (
    exponential_decay,
    linear_warmup,
    one_cycle,
    piecewise_constant,
    step_decay,
    warmup_cosine,
)
from optsvc.schedules.thinc import (
    PlateauState,
    compounding,
    constant,
    constant_then,
    cyclic_triangular,
    decaying,
    plateau,
    slanted_triangular,
    to_schedule,
    warmup_linear,
)

__all__ = [
    "Schedule",
    "PlateauState",
    "to_schedule",
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
