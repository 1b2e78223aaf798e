"""`optsvc.ChainLogger.v1`: several loggers at once (spacy-loggers' pattern)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from rich.text import Text

from optsvc import registries
from optsvc.loggers.base import Logger, LoggerFactory, RunInfo
from optsvc.spec import Arg, checked


class Loggers(Logger):
    """Reports to each logger in turn."""

    def __init__(self, run: RunInfo, loggers: list[Logger]) -> None:
        super().__init__(run)
        self.loggers = loggers
        self.prints = any(logger.prints for logger in loggers)

    def start(self, info: dict[str, Any], first_step: int) -> None:
        for logger in self.loggers:
            logger.start(info, first_step)

    def advance(self, step: int) -> None:
        for logger in self.loggers:
            logger.advance(step)

    def log_eval(self, row: dict[str, Any]) -> None:
        for logger in self.loggers:
            logger.log_eval(row)

    def warn(self, message: str) -> None:
        for logger in self.loggers:
            logger.warn(message)
        if not self.prints:  # no console among them: a warning still shows
            self.run.err_console.print(Text(f"⚠ {message}", style="yellow"))

    def info(self, message: str) -> None:
        for logger in self.loggers:
            logger.info(message)

    def finish(self) -> None:
        for logger in self.loggers:
            logger.finish()

    def close(self, files: list[Path] | None, *, failed: bool = False) -> None:
        for logger in self.loggers:
            logger.close(files, failed=failed)


_LOGGER = "a logger: a block with @loggers"


@registries.loggers.register("optsvc.ChainLogger.v1")
@checked()
def chain_logger(
    logger1: Annotated[LoggerFactory, Arg(_LOGGER)],
    logger2: Annotated[LoggerFactory | None, Arg(_LOGGER)] = None,
    logger3: Annotated[LoggerFactory | None, Arg(_LOGGER)] = None,
    logger4: Annotated[LoggerFactory | None, Arg(_LOGGER)] = None,
) -> LoggerFactory:
    """Several loggers at once, each given every report, in order.

    >>> from optsvc.loggers.console import console_logger
    >>> chain_logger(console_logger(), console_logger(progress_bar=False))
    <logger optsvc.ChainLogger.v1>
    """
    factories = [f for f in (logger1, logger2, logger3, logger4) if f is not None]
    return LoggerFactory(
        "optsvc.ChainLogger.v1",
        lambda run: Loggers(run, [make(run) for make in factories]),
        requires=[need for f in factories for need in f.requires],
    )


__all__ = ["Loggers", "chain_logger"]
