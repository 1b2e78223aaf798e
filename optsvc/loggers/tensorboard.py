"""`optsvc.TensorBoardLogger.v1`: every logged value as a TensorBoard scalar.

Written with TensorBoard's own event-file writer (the `tensorboard` extra),
flushed after every row, so a killed run loses no row it printed. A resumed
run writes a new event file in the same folder that starts with a purge
after the checkpoint's step, so TensorBoard drops what the killed run logged
after it and shows each step once.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

from optsvc import registries
from optsvc.errors import missing_extra
from optsvc.loggers.base import Logger, LoggerFactory, RunInfo
from optsvc.spec import Arg, checked


class TensorBoardLogger(Logger):
    """Scalars under their row names (loss, score, learn_rate, ...) by step."""

    def __init__(self, run: RunInfo, log_dir: str | None) -> None:
        super().__init__(run)
        self.log_dir = Path(log_dir) if log_dir else run.output_dir / "tensorboard"
        self._writer = None

    def start(self, info: dict[str, Any], first_step: int) -> None:
        try:
            from tensorboard.compat.proto.event_pb2 import Event, SessionLog
            from tensorboard.summary.writer.event_file_writer import EventFileWriter
        except ImportError:
            raise missing_extra(
                "tensorboard", "tensorboard", "the tensorboard logger"
            ) from None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._writer = EventFileWriter(str(self.log_dir))
        # TensorBoard drops the events of earlier sessions from a START's step
        # on: what a run killed after its last checkpoint (first_step) logged.
        start = SessionLog(status=SessionLog.START)
        purge = first_step + 1 if first_step else 0
        self._writer.add_event(
            Event(wall_time=time.time(), step=purge, session_log=start)
        )

    def log_eval(self, row: dict[str, Any]) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        values = [
            Summary.Value(tag=key, simple_value=float(value))
            for key, value in row.items()
            if key != "step" and value is not None
        ]
        event = Event(
            wall_time=time.time(), step=row["step"], summary=Summary(value=values)
        )
        self._writer.add_event(event)
        self._writer.flush()  # waits until the row is in the file

    def close(self, files: list[Path] | None, *, failed: bool = False) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


@registries.loggers.register("optsvc.TensorBoardLogger.v1")
@checked()
def tensorboard_logger(
    log_dir: Annotated[
        str | None, Arg("folder for the event files (default: RUN/tensorboard)")
    ] = None,
) -> LoggerFactory:
    """Every value of every evaluation row as a TensorBoard scalar, by step.

    >>> tensorboard_logger()
    <logger optsvc.TensorBoardLogger.v1>
    """
    return LoggerFactory(
        "optsvc.TensorBoardLogger.v1",
        lambda run: TensorBoardLogger(run, log_dir),
        requires=[("tensorboard", "tensorboard")],
    )


__all__ = ["TensorBoardLogger", "tensorboard_logger"]
