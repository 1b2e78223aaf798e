"""Training progress for people: `optsvc.ConsoleLogger.v1`, the default.

On a terminal a header, a progress bar with ETA and a table row per
evaluation (rich); plain lines when the output is a pipe or a file. (The
run's `metrics.jsonl` is written whatever the logger: it is part of the run
folder, see `optsvc.loggers.metrics`.)
"""

from __future__ import annotations

from typing import Annotated, Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from optsvc import registries
from optsvc.loggers.base import Logger, LoggerFactory, RunInfo
from optsvc.spec import Arg, checked


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "steps_per_sec":
        return f"{value:,.0f}"
    if isinstance(value, float):
        return f"{value:.4f}" if key in ("loss", "score") else f"{value:.4g}"
    return str(value)


class ConsoleLogger(Logger):
    """Console output for one training run.

    Warnings before the run starts (about the run folder and its
    checkpoints) go to the run's `err_console`; once it has started,
    everything goes to its `console`, among the rows it concerns.
    """

    prints = True

    def __init__(self, run: RunInfo, *, progress_bar: bool = True):
        super().__init__(run)
        self.interactive = run.console.is_terminal
        self.progress_bar = progress_bar
        self._started = False
        self._progress: Progress | None = None
        self._task = None
        self._columns: list[str] | None = None

    def start(self, info: dict[str, Any], first_step: int) -> None:
        """A header with what runs where, then the progress bar."""
        self._started = True
        for key, value in info.items():
            self.run.console.print(Text(f"{key:>14}: {value}"))
        if self.interactive and self.progress_bar:
            self._progress = Progress(
                TextColumn("training"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=self.run.console,
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(
                "train", total=self.run.total_steps, completed=first_step
            )

    def advance(self, step: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step)

    def log_eval(self, row: dict[str, Any]) -> None:
        """One evaluation: a table row (terminal) or a plain line."""
        texts = {key: _fmt(key, value) for key, value in row.items()}
        if self._columns is None:
            self._columns = list(row)
            if self.interactive:  # the header
                self._print(Text(self._line({key: key for key in row}), style="bold"))
        if self.interactive:
            self._print(Text(self._line(texts)))
        else:
            self._print(Text("  ".join(f"{k} {text}" for k, text in texts.items())))

    def _line(self, texts: dict[str, str]) -> str:
        # Under the first row's columns, right-aligned, each 10 wide or more.
        cells = (f"{texts.get(k, '-'):>{max(10, len(k))}}" for k in self._columns)
        return " ".join(cells)

    def warn(self, message: str) -> None:
        text = Text(f"⚠ {message}", style="yellow")  # paths are not rich markup
        if self._started:
            self._print(text)
        else:
            self.run.err_console.print(text)

    def info(self, message: str) -> None:
        self._print(Text(message))

    def _print(self, text: Text) -> None:
        # Plain lines stay one line each, however narrow the console.
        self.run.console.print(text, soft_wrap=not self.interactive)

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


@registries.loggers.register("optsvc.ConsoleLogger.v1")
@checked()
def console_logger(
    progress_bar: Annotated[
        bool, Arg("a progress bar with ETA on a terminal (plain lines in a pipe)")
    ] = True,
) -> LoggerFactory:
    """Progress for people: a header, a progress bar and a table row per
    evaluation on a terminal; one plain line per evaluation in a pipe.

    >>> console_logger()
    <logger optsvc.ConsoleLogger.v1>
    """
    return LoggerFactory(
        "optsvc.ConsoleLogger.v1",
        lambda run: ConsoleLogger(run, progress_bar=progress_bar),
    )
