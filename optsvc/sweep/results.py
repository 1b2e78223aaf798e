"""Where a sweep stands and what it found: one row per trial (its values,
status, step, final and best metric, run folder), kept in `results.csv` and
`results.json`, and `best.cfg`, the filled config of the best finished trial.

The metrics come from each trial's own metrics.jsonl; the status is what the
runner saw. `results.json` is also how `--resume` knows which trials are done.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict

from optsvc.analysis.runs import read_metrics
from optsvc.errors import StateError
from optsvc.fileio import TEXT_LIMIT, read_regular, write_atomic
from optsvc.records import Count, Record
from optsvc.sweep.folder import TRIALS
from optsvc.sweep.plan import SweepPlan, Trial
from optsvc.training.run_folder import RunFolder

RESULTS_CSV = "results.csv"
RESULTS_JSON = "results.json"
BEST_CFG = "best.cfg"
# Statuses a trial can have; the first three are done.
FINISHED, STOPPED, FAILED = "finished", "stopped", "failed"
RUNNING, PENDING, INTERRUPTED = "running", "pending", "interrupted"
DONE = (FINISHED, STOPPED)


@dataclass
class TrialRow:
    """One trial's line in the results."""

    trial: Trial
    status: str = PENDING
    step: int | None = None
    score: float | None = None
    loss: float | None = None
    best: float | None = None
    attempts: int = 0
    error: str = ""

    @property
    def name(self) -> str:
        return self.trial.name

    def metric(self, name: str) -> float | None:
        return self.score if name == "score" else self.loss


@dataclass
class Tracker:
    """Trial statuses as a runner reports them; writes the results files
    (at most once a second while trials run, and always by `save(force=True)`)
    and passes every change to `on_change`."""

    out: Path
    plan: SweepPlan
    metric: str = "score"
    mode: str = "max"
    on_change: Callable[[TrialRow], None] | None = None
    rows: dict[str, TrialRow] = field(init=False)  # in trial order
    _saved: float = 0.0

    def __post_init__(self) -> None:
        self.rows = {trial.name: TrialRow(trial) for trial in self.plan.trials}

    def folder(self, name: str) -> Path:
        return self.out / TRIALS / name

    def restore(self, previous: dict[str, ResultRow]) -> None:
        """Statuses and attempts from an earlier run's results.json."""
        for name, row in self.rows.items():
            old = previous.get(name) or ResultRow(trial=name, status=PENDING)
            row.attempts, row.error, status = old.attempts, old.error, old.status
            if status == FINISHED and not RunFolder(self.folder(name)).final.exists():
                status = INTERRUPTED  # its weights are gone: run it again
            row.status = status if status in DONE or status == FAILED else (
                INTERRUPTED if row.attempts else PENDING
            )  # fmt: skip
            self._refresh(row)

    # --- what runners report ------------------------------------------------
    def start(self, name: str) -> None:
        row = self.rows[name]
        if row.status != RUNNING:
            row.status, row.attempts, row.error = RUNNING, row.attempts + 1, ""
            self._changed(row)

    def progress(self, name: str, result: dict[str, Any]) -> None:
        """A new evaluation row (or Tune's report of one, NaN for a metric
        the row lacks)."""
        self._add(self.rows[name], result)
        self._changed(self.rows[name], save=False)

    def retry(self, name: str, error: str) -> None:
        row = self.rows[name]
        row.attempts, row.error = row.attempts + 1, error
        self._changed(row)

    def end(self, name: str, status: str, error: str = "") -> None:
        row = self.rows[name]
        row.status, row.error = status, error if status == FAILED else ""
        self._refresh(row)
        self._changed(row)

    def interrupt(self) -> None:
        """Mark every trial that did not end as interrupted (or still pending)."""
        for row in self.rows.values():
            if row.status == RUNNING:
                row.status = INTERRUPTED
                self._refresh(row)

    # --- results ------------------------------------------------------------
    def best(self) -> TrialRow | None:
        """The finished trial with the best final metric (the first on a tie)."""
        done = [
            row
            for row in self.rows.values()
            if row.status == FINISHED and row.metric(self.metric) is not None
        ]
        return self._best_of(done, key=lambda r: r.metric(self.metric), default=None)

    def save(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._saved < 1.0:
            return
        self._saved = time.monotonic()
        table = [self._flat(row) for row in self.rows.values()]  # in trial order
        best = self.best()
        document = {
            "metric": self.metric,
            "mode": self.mode,
            "best": best.name if best else None,
            "trials": table,
        }
        write_atomic(
            self.out / RESULTS_JSON, (json.dumps(document, indent=1) + "\n").encode()
        )
        write_atomic(self.out / RESULTS_CSV, _csv(table).encode())
        best_path = self.out / BEST_CFG
        if best is not None:
            text = RunFolder(self.folder(best.name)).config_file.read_bytes()
            write_atomic(best_path, text)
        else:
            best_path.unlink(missing_ok=True)

    # --- helpers ------------------------------------------------------------
    @property
    def _best_of(self) -> Callable:
        """max or min, by the mode (either keeps the first of equals)."""
        return max if self.mode == "max" else min

    def _changed(self, row: TrialRow, save: bool = True) -> None:
        if save:
            self.save(force=row.status != RUNNING)
        if self.on_change is not None:
            self.on_change(row)

    def _refresh(self, row: TrialRow) -> None:
        """Step and metrics from the trial's metrics.jsonl, the record of truth."""
        row.step = row.score = row.loss = row.best = None
        for result in read_metrics(self.folder(row.name)):
            self._add(row, result)

    def _add(self, row: TrialRow, result: dict[str, Any]) -> None:
        """The step and metrics of the trial's newest evaluation row."""
        row.step = result.get("step", row.step)
        row.score, row.loss = _number(result.get("score")), _number(result.get("loss"))
        value = row.metric(self.metric)
        if value is not None:
            row.best = value if row.best is None else self._best_of(row.best, value)

    def _flat(self, row: TrialRow) -> dict[str, Any]:
        return {
            "trial": row.name,
            **row.trial.values,
            "status": row.status,
            "step": row.step,
            "score": row.score,
            "loss": row.loss,
            f"best_{self.metric}": row.best,
            "attempts": row.attempts,
            "error": row.error,
            "folder": f"{TRIALS}/{row.name}",
        }


def _number(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def _csv(table: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    if table:
        writer = csv.DictWriter(buffer, fieldnames=list(table[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: _cell(v) for k, v in row.items()} for row in table)
    return buffer.getvalue()


def _cell(value: Any) -> Any:
    # None is written as an empty cell; these as they are in results.json.
    if isinstance(value, (list, dict, bool)):
        return json.dumps(value)
    return value


class ResultRow(Record):
    """A trial's row of results.json: its name, status, attempts and error
    (and, as written, its swept values and metrics)."""

    model_config = ConfigDict(extra="allow")
    trial: str
    status: Literal[
        "finished", "stopped", "failed", "running", "pending", "interrupted"
    ]
    attempts: Count = 0
    error: str = ""


class Results(Record):
    """results.json: the sweep's metric, its best trial and every row."""

    metric: str
    mode: str
    best: str | None
    trials: list[ResultRow]


def read_results(out: Path) -> dict[str, ResultRow]:
    """The rows of an earlier run's results.json by trial name ({} if there
    is none, or none optsvc wrote)."""
    try:
        data = read_regular(out / RESULTS_JSON, TEXT_LIMIT, RESULTS_JSON)
        return {row.trial: row for row in Results.parse(data, RESULTS_JSON).trials}
    except StateError:
        return {}
