"""metrics.jsonl: a run's own record of its evaluations, one JSON object a line.

`MetricsFile`, the logger every run has whatever its config names, appends a
`MetricsRow` per evaluation; a run that fails before it saved anything to
resume from ends the file with a `FailureRecord`. `read_lines` is the one
reader (resume, `optsvc runs` and `plot`, sweeps, `show-schedule --scores`):
a line that a kill tore, or that is not one of these records, reads as None.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict

from optsvc.errors import StateError
from optsvc.fileio import TEXT_LIMIT, read_regular
from optsvc.loggers.base import Logger, RunInfo
from optsvc.records import Count, Finite, Record

FILE = "metrics.jsonl"


class MetricsRow(Record):
    """One evaluation: the step, epoch, loss, dev score, steps/s, the skipped
    steps so far and each logged hyperparameter by name (learn_rate, ...); a
    value that was not finite is null."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, Finite | None]
    step: Count
    epoch: Count | None = None
    loss: Finite | None = None
    score: Finite | None = None
    steps_per_sec: Finite | None = None
    skipped: Count | None = None


class FailureRecord(Record):
    """The line metrics.jsonl ends with when the run failed before it saved
    anything to resume from."""

    status: Literal["failed"]
    error: str


class MetricsFile(Logger):
    """Appends each evaluation's row to the run's metrics.jsonl."""

    def __init__(self, run: RunInfo, path: Path) -> None:
        super().__init__(run)
        self.path = Path(path)

    def log_eval(self, row: dict[str, Any]) -> None:
        finite = {
            k: None if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in row.items()
        }
        append(self.path, MetricsRow.model_validate(finite), order=list(row))


def append(
    path: Path, record: MetricsRow | FailureRecord, order: list[str] | None = None
) -> None:
    """Add `record` to the metrics log at `path` as one line (its values in
    the `order` given, else the record's)."""
    values = record.model_dump(mode="json", exclude_unset=True)
    if order is not None:
        values = {key: values[key] for key in order}
    with open(path, "ab") as f:
        f.write(json.dumps(values).encode() + b"\n")


def read_lines(path: Path) -> Iterator[tuple[bytes, MetricsRow | FailureRecord | None]]:
    """Each line of the metrics log at `path` with its record (None for a
    line that is none); nothing when the file is missing, not a regular file
    or too large."""
    try:
        lines = read_regular(path, TEXT_LIMIT, "metrics log").splitlines()
    except StateError:
        return
    for line in lines:
        record = None
        for kind in (MetricsRow, FailureRecord):
            try:
                record = kind.parse(line, FILE)
                break
            except StateError:
                continue
        yield line, record


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], FailureRecord | None]:
    """The evaluation rows of the metrics log at `path`, in order, each as a
    dict of the values it holds, and the failure it records last, if any."""
    rows, failure = [], None
    for _, record in read_lines(path):
        if isinstance(record, MetricsRow):
            rows.append(record.model_dump(exclude_unset=True))
            failure = None
        elif record is not None:
            failure = record
    return rows, failure


__all__ = ["MetricsRow", "FailureRecord", "MetricsFile", "read_lines", "read_metrics"]
