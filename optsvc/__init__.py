"""optsvc: Thinc-compatible optimizers and schedules, built from config files.

>>> import optsvc
>>> opt = optsvc.Adam(optsvc.warmup_linear(0.001, 250, 20000))
>>> opt.learn_rate
0.0
"""

from . import schedules
from .about import __version__
from .backends import (
    CupyOps,
    NumpyOps,
    Ops,
    get_current_ops,
    prefer_gpu,
    require_gpu,
    set_current_ops,
    use_ops,
)
from .errors import (
    ConfigError,
    DeviceError,
    MissingExtraError,
    OptsvcError,
    RunError,
    StateError,
)
from .optim import (
    SGD,
    Adam,
    AdEMAMix,
    Lion,
    Optimizer,
    ParamStore,
    RAdam,
    ScheduleFreeAdamW,
    ScheduleFreeSGD,
)
from .schedules import Schedule
from .schedules.extra import *  # noqa: F403  (the schedule functions)
from .schedules.thinc import *  # noqa: F403


def __getattr__(name: str):
    # The confection registry loads the config layer (confection, pydantic
    # schemas, the example data sets and models): only when it is asked for.
    if name == "registry":
        from .config.registry import registry

        return registry
    raise AttributeError(f"module 'optsvc' has no attribute {name!r}")


__all__ = [
    "__version__",
    "Optimizer",
    "ParamStore",
    "SGD",
    "Adam",
    "RAdam",
    "Lion",
    "AdEMAMix",
    "ScheduleFreeAdamW",
    "ScheduleFreeSGD",
    "Schedule",
    *schedules.SCHEDULES,
    "registry",  # noqa: F405  (loaded on first use, by __getattr__)
    "Ops",
    "NumpyOps",
    "CupyOps",
    "get_current_ops",
    "set_current_ops",
    "use_ops",
    "require_gpu",
    "prefer_gpu",
    "OptsvcError",
    "ConfigError",
    "StateError",
    "RunError",
    "DeviceError",
    "MissingExtraError",
]
