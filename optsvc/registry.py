"""Function registries for config files (confection), and nothing else.

Third-party packages add functions through entry points named
`optsvc_optimizers`, `optsvc_schedules`, ... (catalogue's convention).
"""

from __future__ import annotations

import catalogue
import confection

from . import datasets, models, optimizers, schedules, schedules_extra


class registry(confection.registry):
    """optsvc's registries: `registry.optimizers`, `registry.schedules`,
    `registry.datasets`, `registry.models`.

    >>> registry.optimizers.get("Adam.v1")().learn_rate
    0.001
    """

    optimizers = catalogue.create("optsvc", "optimizers", entry_points=True)
    schedules = catalogue.create("optsvc", "schedules", entry_points=True)
    datasets = catalogue.create("optsvc", "datasets", entry_points=True)
    models = catalogue.create("optsvc", "models", entry_points=True)


for _name, _func in {
    "SGD.v1": optimizers.SGD,
    "Adam.v1": optimizers.Adam,
    "RAdam.v1": optimizers.RAdam,
}.items():
    registry.optimizers.register(_name, func=_func)

for _module in (schedules, schedules_extra):
    for _fname in _module.__all__:
        if _fname in ("Schedule", "PlateauState", "to_schedule"):
            continue
        registry.schedules.register(f"{_fname}.v1", func=getattr(_module, _fname))

for _fname in ("blobs", "spirals", "regression"):
    registry.datasets.register(f"{_fname}.v1", func=getattr(datasets, _fname))

for _fname in ("linear", "mlp"):
    registry.models.register(f"{_fname}.v1", func=getattr(models, _fname))

__all__ = ["registry"]
