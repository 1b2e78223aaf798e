"""Schedules: Thinc 9.1.1's (`thinc`) and the ones Thinc lacks (`extra`), all
`Schedule` objects (`base`) registered as `NAME.v1`."""

from optsvc.schedules import extra, thinc
from optsvc.schedules.base import Schedule
from optsvc.schedules.extra import *  # noqa: F403  (its schedule functions)
from optsvc.schedules.thinc import *  # noqa: F403  (its schedule functions)
from optsvc.schedules.thinc import PlateauState, to_schedule

# Every schedule function, as the module that defines it lists it.
SCHEDULES = (*thinc.__all__, *extra.__all__)

__all__ = ["Schedule", "PlateauState", "to_schedule", *SCHEDULES]
