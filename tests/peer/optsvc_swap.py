"""A pytest plugin: Thinc's and spaCy's own tests, run with optsvc in place of
Thinc's optimizers and schedules.

Loaded with `-p optsvc_swap` (tests/peer on the path), before any test module
imports Thinc's names: `thinc.api`'s and `thinc.optimizers`' `Optimizer`,
`Adam`, `SGD` and `RAdam`, the schedule functions of `thinc.api` and
`thinc.schedules`, and the registry entries `Adam.v1`, `SGD.v1`, `RAdam.v1`
and `<schedule>.v1` become `optsvc.integrations.thinc`'s. With
OPTSVC_PEER_SWAP=0 nothing is swapped: the suites as shipped. Either way,
with OPTSVC_PEER_RESULTS set, each test's outcome is written there (JSON
lines), for tests/peer/run.py to compare.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import typing

import thinc
import thinc.api
import thinc.optimizers
import thinc.schedules

import optsvc

SWAP = os.environ.get("OPTSVC_PEER_SWAP", "1") != "0"
OPTIMIZERS = ("Optimizer", "Adam", "SGD", "RAdam")


def _replacements():
    """Thinc 8: optsvc's adapters (Thinc 8 code iterates schedules, spaCy
    checks for Thinc's Optimizer class); Thinc 9: optsvc's own API."""
    if thinc.__version__.startswith("8."):
        from optsvc.integrations import thinc as adapters

        return adapters, adapters.ThincOptimizer
    return optsvc, optsvc.Optimizer


def _swap() -> None:
    adapters, optimizer = _replacements()
    names = {name: getattr(adapters, name) for name in OPTIMIZERS[1:]}
    names["Optimizer"] = optimizer
    schedules = [n for n in dir(thinc.schedules) if n in optsvc.schedules.__all__]
    names.update((name, getattr(adapters, name)) for name in schedules)
    for module in (thinc.api, thinc.optimizers, thinc.schedules):
        for name, value in names.items():
            if hasattr(module, name):
                setattr(module, name, value)
    registry = thinc.api.registry
    for name in OPTIMIZERS[1:]:
        registry.optimizers.register(f"{name}.v1", func=_resolved(names[name]))
    for name in schedules:
        registry.schedules.register(f"{name}.v1", func=_resolved(names[name]))


def _resolved(func):
    """`func` with its annotations evaluated: Thinc 9's confection (pydantic
    v1) builds its config schema from them, and does not resolve strings."""
    hints = typing.get_type_hints(func)
    signature = inspect.signature(func)
    params = [p.replace(annotation=hints.get(p.name, p.annotation))
              for p in signature.parameters.values()]  # fmt: skip

    @functools.wraps(func)
    def call(*args, **kwargs):
        return func(*args, **kwargs)

    call.__signature__ = signature.replace(parameters=params)
    call.__annotations__ = hints
    return call


if SWAP:
    _swap()


def pytest_runtest_logreport(report) -> None:
    """Each phase's outcome that decides the test's: the call's, or a setup
    or teardown that failed or skipped."""
    path = os.environ.get("OPTSVC_PEER_RESULTS")
    if path and (report.when == "call" or report.outcome != "passed"):
        # the file's full path: the suites lie outside pytest's rootdir
        test = f"{report.fspath}::{report.location[2]}"
        with open(path, "a") as f:
            f.write(json.dumps({"test": test, "outcome": report.outcome}) + "\n")


def pytest_report_header(config) -> str:
    return f"Thinc's optimizers and schedules: {thinc.api.Adam.__module__}'s"
