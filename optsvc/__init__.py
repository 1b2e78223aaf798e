"""optsvc: Thinc-compatible optimizers and schedules, built from config files.

>>> import optsvc
>>> opt = optsvc.Adam(optsvc.warmup_linear(0.001, 250, 20000))
>>> opt.learn_rate
0.0
"""

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
from .optim import SGD, Adam, Optimizer, ParamStore, RAdam
from .schedules import (
    Schedule,
    compounding,
    constant,
    constant_then,
    cyclic_triangular,
    decaying,
    exponential_decay,
    linear_warmup,
    one_cycle,
    piecewise_constant,
    plateau,
    slanted_triangular,
    step_decay,
    warmup_cosine,
    warmup_linear,
)


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
    "Schedule",
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
    "registry",
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
