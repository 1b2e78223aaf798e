"""The function registries that config files name (`@optimizers`, `@schedules`,
`@datasets`, `@models`, `@loggers`), as plain catalogue registries.

Functions register themselves where they are defined
(`@registries.optimizers.register("Adam.v1")`), so each name is written once
and the optimizer library needs catalogue only, not confection. The config
layer's `optsvc.config.registry.registry` is confection's view of these same
objects. Third-party packages add functions through entry points named
`optsvc_optimizers`, `optsvc_schedules`, ... (catalogue's convention).

Each name is registered once, here. Thinc's registries reach the same
functions as `optsvc.<name>` ("optsvc.Adam.v1"); the config layer reads that
spelling as the same name (`optsvc.config.blocks.find_function`).
"""

from __future__ import annotations

import catalogue

optimizers = catalogue.create("optsvc", "optimizers", entry_points=True)
schedules = catalogue.create("optsvc", "schedules", entry_points=True)
loggers = catalogue.create("optsvc", "loggers", entry_points=True)
datasets = catalogue.create("optsvc", "datasets", entry_points=True)
models = catalogue.create("optsvc", "models", entry_points=True)

__all__ = ["optimizers", "schedules", "datasets", "models", "loggers"]
