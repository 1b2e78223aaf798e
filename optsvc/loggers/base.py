"""What the training loop tells a logger, and what a `@loggers` function
returns.

A registered logger function (`optsvc.ConsoleLogger.v1`, ...) checks its
arguments and returns a `LoggerFactory`; the training loop calls that with
the run's `RunInfo` to get a `Logger`, the object it reports to. Every method
has a default that does nothing, so a logger implements what it records.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from optsvc.errors import missing_extra


@dataclass
class RunInfo:
    """The run a logger records."""

    output_dir: Path
    config: dict  # the filled config
    total_steps: int
    console: Console
    err_console: Console


class Logger:
    """The training loop's reports: `start` once, `advance` every step,
    `log_eval` at every evaluation (a row: step, epoch, loss, score, every
    scheduled hyperparameter, steps_per_sec), `finish` when the loop ends,
    `close` when the run is over (final weights written, or failed)."""

    #: whether `warn` and `info` reach a person (the console logger's do)
    prints = False

    def __init__(self, run: RunInfo) -> None:
        self.run = run

    def start(self, info: dict[str, Any], first_step: int) -> None:
        """The run starts (or resumes) at `first_step`."""

    def advance(self, step: int) -> None:
        """A training step is done."""

    def log_eval(self, row: dict[str, Any]) -> None:
        """One evaluation's row."""

    def warn(self, message: str) -> None:
        """Something the user should know."""

    def info(self, message: str) -> None:
        """A line of progress for people."""

    def finish(self) -> None:
        """The training loop has ended (progress bars stop)."""

    def close(self, files: list[Path] | None, *, failed: bool = False) -> None:
        """The run is over: `files` are what it leaves (its config, best and
        final weights), None if it failed."""


@dataclass(repr=False, eq=False)
class LoggerFactory:
    """What a `@loggers` function returns: builds its logger for a run.

    >>> make = LoggerFactory("quiet", Logger)
    >>> make
    <logger quiet>
    """

    name: str
    make: Callable[[RunInfo], Logger]
    requires: Sequence[tuple[str, str]] = ()  # (extra, module) pairs

    def check(self) -> None:
        """MissingExtraError, naming the extra, if a library it needs is missing:
        called before a run folder is touched."""
        for extra, module in self.requires:
            if importlib.util.find_spec(module) is None:
                raise missing_extra(extra, module, f"the {extra} logger")

    def __call__(self, run: RunInfo) -> Logger:
        return self.make(run)

    def __repr__(self) -> str:
        return f"<logger {self.name}>"


__all__ = ["Logger", "LoggerFactory", "RunInfo"]
