"""`optsvc plot`: a thin Typer command over `optsvc.analysis` plotting."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer

from optsvc.analysis import load_runs, save_plot, text_chart

from . import render


def plot(
    runs: Annotated[
        list[Path],
        typer.Argument(
            help="Run folders, or folders holding runs (a sweep folder, "
            "or DIR/trials/*).",
            show_default=False,
            readable=False,  # an unreadable folder is optsvc's error (exit 1)
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Write the plot to FILE.png, .svg or .pdf (needs "
            "pip install 'optsvc[plot]'); without it, a chart in the terminal.",
        ),
    ] = None,
    metric: Annotated[
        list[str] | None,
        typer.Option(
            "--metric",
            "-m",
            help="Metric to plot, repeatable (default: loss, score, learn_rate "
            "and every other scheduled hyperparameter).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Plot the metrics of one or more runs against the step: one panel per
    metric, one line per run.

    Runs are labelled by their folder name; the trials of a sweep by the
    config values that differ between them. With -o the plot is a
    matplotlib image file; without, a text chart (each run with its own
    marker).

    Example: optsvc plot runs/adam runs/sgd -o compare.png --metric loss --metric score
    """
    series = load_runs(runs)
    if output is not None:
        written = save_plot(series, metric or [], output)
        drawn = sum(1 for run in series if run.rows)
        shown = f"{drawn} run{'s' if drawn != 1 else ''}"
        if drawn < len(series):
            shown += f"; {len(series) - drawn} with no evaluation yet not drawn"
        render.out.print(f"✔ wrote {written} ({shown})")
        return
    width = min(shutil.get_terminal_size((100, 24)).columns, 140)
    sys.stdout.write(text_chart(series, metric or [], width=width) + "\n")
