"""confection's view of optsvc's registries, and nothing else.

Importing this module imports the modules that define optsvc's own registered
functions, so that every built-in name is there before a config is resolved.
"""

from __future__ import annotations

import confection

import optsvc.loggers  # noqa: F401  (registers the loggers)
import optsvc.optim  # noqa: F401  (registers the optimizers)
import optsvc.schedules  # noqa: F401  (registers the schedules)
import optsvc.toys  # noqa: F401  (registers the example data sets and models)
from optsvc import registries


class registry(confection.registry):
    """optsvc's registries: `registry.optimizers`, `registry.schedules`,
    `registry.datasets`, `registry.models`, `registry.loggers`.

    >>> registry.optimizers.get("Adam.v1")().learn_rate
    0.001
    """

    optimizers = registries.optimizers
    schedules = registries.schedules
    datasets = registries.datasets
    models = registries.models
    loggers = registries.loggers


__all__ = ["registry"]
