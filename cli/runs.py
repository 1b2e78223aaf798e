"""`optsvc runs`: a thin Typer command over `optsvc.analysis.list_runs`."""

from __future__ import annotations

import csv
import dataclasses
import io
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from optsvc.analysis import RunSummary, list_runs
from optsvc.analysis.runs import short_keys
from optsvc.errors import RunError

from . import render

RunsFormat = render.choices("RunsFormat", ("table", "csv", "json"))
# --sort's columns and the fields they sort by.
SORT_KEYS = {"name": "name", "config": "config", "optimizer": "optimizer",
             "status": "status", "steps": "steps", "best": "best_score",
             "last": "last_score", "loss": "final_loss",
             "wall": "wall_time_s"}  # fmt: skip
SortColumn = render.choices("SortColumn", SORT_KEYS)
CSV_FIELDS = [field.name for field in dataclasses.fields(RunSummary)]


def runs(
    folder: Annotated[
        Path,
        typer.Argument(
            help="Folder to search for runs, sweeps' trials included.", readable=False
        ),
    ] = Path("runs"),
    output_format: Annotated[
        RunsFormat,
        typer.Option("--format", help="table, or csv or json for machines."),
    ] = RunsFormat.table,
    sort: Annotated[
        SortColumn,
        typer.Option(
            "--sort",
            help="Column to sort by: name, config, optimizer, status, steps, "
            "best, last, loss or wall; runs without a value go last.",
        ),
    ] = SortColumn.name,
    descending: Annotated[
        bool, typer.Option("--desc", help="Sort from the largest value down.")
    ] = False,
) -> None:
    """List every run under a folder: its config, optimizer and schedule,
    status, steps done of max, best and last score, final loss and wall time.

    Status: running when a live optsvc train holds the run's lock (the lock
    dies with the process, and is only tested, never taken); finished when
    final.safetensors exists; interrupted when a checkpoint exists, so
    `optsvc train RUN/config.cfg -o RUN --resume` continues it; failed when the
    run recorded a failure, or when it ended with nothing to resume.

    Wall time is the sum of the evaluation intervals in metrics.jsonl (so it
    spans resumed sessions, not start-up); "(files)" marks a time taken from
    file modification times instead (config.cfg to the newest file: the last
    session only). The trials of a sweep show the config values that differ
    between them.

    Example: optsvc runs runs/ --sort best --desc
    """
    if not folder.exists():
        raise RunError(
            f"there is no folder '{folder}'; give the folder that holds your "
            "runs: optsvc runs DIR"
        )
    found = sort_runs(list_runs(folder), sort.value, descending)
    if output_format is RunsFormat.json:
        sys.stdout.write(
            render.json_text([s.as_dict() for s in found], indent=1) + "\n"
        )
    elif output_format is RunsFormat.csv:
        sys.stdout.write(to_csv(found))
    elif not found:
        render.err.print(f"no runs under '{folder}'")
    elif sys.stdout.isatty():
        left = {"name", "config", "values", "optimizer / schedule", "status", "note"}
        render.out.print(render.status_table(*cells(found), left=left))
    else:
        sys.stdout.write(plain_table(found))


def sort_runs(found: list[RunSummary], column: str, descending: bool):
    """By `column`, runs without a value last in either direction."""
    attr = SORT_KEYS[column]
    present = [s for s in found if getattr(s, attr) is not None]
    missing = [s for s in found if getattr(s, attr) is None]
    present.sort(key=lambda s: getattr(s, attr), reverse=descending)
    return present + missing


def to_csv(found: list[RunSummary]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()  # None is written as an empty cell
    for s in found:
        values = "; ".join(f"{k}={v}" for k, v in s.values.items())
        writer.writerow({**s.as_dict(), "values": values})
    return buffer.getvalue()


def cells(found: list[RunSummary]) -> tuple[list[str], list[list[str]]]:
    """The table's header and rows as text: a values column only for sweeps'
    trials, a note column only when some run has a note."""
    header = ["name", "config", "optimizer / schedule", "status", "steps", "best",
              "last", "final loss", "wall time"]  # fmt: skip
    with_values = any(s.values for s in found)
    with_notes = any(s.note for s in found)
    if with_values:
        header.insert(2, "values")
    if with_notes:
        header.append("note")
    rows = []
    for s in found:
        row = [s.name, s.config, s.optimizer, s.status, _steps(s), _num(s.best_score),
               _num(s.last_score), _num(s.final_loss), _wall(s)]  # fmt: skip
        if with_values:
            short = short_keys(list(s.values))
            row.insert(2, ", ".join(f"{short[k]}={v}" for k, v in s.values.items()))
        if with_notes:
            row.append(s.note)
        rows.append(row)
    return header, rows


def plain_table(found: list[RunSummary]) -> str:
    header, rows = cells(found)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [header, *rows]]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _steps(s: RunSummary) -> str:
    done = "-" if s.steps is None else str(s.steps)
    return done if s.max_steps is None else f"{done}/{s.max_steps}"


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


def _wall(s: RunSummary) -> str:
    if s.wall_time_s is None:
        return "-"
    seconds = s.wall_time_s
    if seconds < 60:
        text = f"{seconds:.1f}s"
    elif seconds < 3600:
        text = f"{int(seconds // 60)}m {int(seconds % 60):02d}s"
    else:
        text = f"{int(seconds // 3600)}h {int(seconds % 3600 // 60):02d}m"
    return text if s.wall_time_from == "metrics" else f"{text} (files)"
