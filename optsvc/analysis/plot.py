"""Metrics of several runs on one picture: a matplotlib figure for files, and
a text chart for the terminal.

One panel per metric against the step, one line per run. Runs are labelled
by their folder name and, for the trials of a sweep, by the config values
that differ between them. matplotlib is an optional extra (`optsvc[plot]`),
imported only here and only when a figure is made; it is used without pyplot,
on the Agg canvas, so it never needs a display.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optsvc.analysis.runs import (
    expand_runs,
    read_config,
    read_metrics,
    scheduled_params,
    short_keys,
    sweep_values,
)
from optsvc.errors import ConfigError, missing_extra

ALWAYS = ("loss", "score", "learn_rate")
FORMATS = (".png", ".svg", ".pdf")
# One marker per run, so runs stay apart where colours are not shown.
MARKERS = ("•", "x", "o", "+", "*", "#", "@", "%")


@dataclass
class RunSeries:
    """One run's evaluation rows and the label it is drawn with."""

    path: Path
    label: str
    rows: list[dict[str, Any]] = field(repr=False)
    scheduled: list[str] = field(default_factory=list)

    def series(self, metric: str) -> tuple[list[int], list[float]]:
        """Steps and values of `metric`, leaving out rows without one (the
        rows' values are finite, `optsvc.loggers.metrics`)."""
        pairs = [(r["step"], r[metric]) for r in self.rows if r.get(metric) is not None]
        return [s for s, _ in pairs], [v for _, v in pairs]


def load_runs(paths: Sequence[str | os.PathLike]) -> list[RunSeries]:
    """The runs at `paths` (run folders, or folders holding runs such as a
    sweep), labelled so each can be told apart."""
    runs = expand_runs(list(paths))
    labels = run_labels(runs)
    out = []
    for run in runs:
        scheduled = list(scheduled_params(read_config(run)))
        out.append(RunSeries(run, labels[run], read_metrics(run), scheduled))
    return out


def run_labels(runs: Sequence[Path]) -> dict[Path, str]:
    """Each run's folder name (its path from the runs' common folder when two
    share a name), followed for sweep trials by the values that differ."""
    names = {run: run.name for run in runs}
    if len(set(names.values())) < len(names):
        common = Path(os.path.commonpath([str(r.resolve()) for r in runs]))
        names = {
            run: str(run.resolve().relative_to(common)) or run.name for run in runs
        }
    labels = dict(names)
    for run, differ in sweep_values(list(runs)).items():
        if differ:
            short = short_keys(list(differ))
            shown = ", ".join(f"{short[k]}={_show(v)}" for k, v in differ.items())
            labels[run] = f"{names[run]} ({shown})"
    return labels


def default_metrics(runs: Sequence[RunSeries]) -> list[str]:
    """loss, score, learn_rate and every other hyperparameter that a run
    schedules, in that order, where some run logged them."""
    wanted = list(ALWAYS)
    for run in runs:
        wanted += [p for p in run.scheduled if p not in wanted]
    return [m for m in wanted if any(run.series(m)[0] for run in runs)]


def check_metrics(runs: Sequence[RunSeries], metrics: Sequence[str]) -> list[str]:
    """`metrics`, or the defaults when empty; ConfigError naming the metrics
    the runs have when one is unknown or when there is nothing to draw."""
    if not any(run.rows for run in runs):
        where = ", ".join(str(run.path) for run in runs)
        raise ConfigError(
            f"no evaluations logged yet in {where}; wait for the first "
            "evaluation (training.eval_frequency steps)"
        )
    chosen = list(dict.fromkeys(metrics)) or default_metrics(runs)
    known = {k for run in runs for row in run.rows for k in row} - {"step"}
    unknown = [m for m in chosen if m not in known]
    if unknown:
        raise ConfigError(
            f"no run logged a metric named '{unknown[0]}'; choose from "
            f"{', '.join(sorted(known))}"
        )
    return chosen


# --- matplotlib -------------------------------------------------------------------


def make_figure(runs: Sequence[RunSeries], metrics: Sequence[str]):
    """A matplotlib Figure (Agg canvas): one panel per metric, one line per
    run, the runs' labels in a legend. MissingExtraError without matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise missing_extra("plot", "matplotlib", "plotting to a file") from None
    metrics = check_metrics(runs, metrics)
    cols = 1 if len(metrics) <= 3 else 2
    nrows = math.ceil(len(metrics) / cols)
    fig = Figure(figsize=(6.4 * cols, 2.4 * nrows + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, cols, squeeze=False, sharex=True).ravel()
    for i, (ax, metric) in enumerate(zip(axes, metrics)):
        for j, run in enumerate(runs):
            steps, values = run.series(metric)
            if steps:
                ax.plot(steps, values, label=run.label, color=f"C{j % 10}")
        ax.set_title(metric)
        ax.grid(True, alpha=0.3)
        if i + cols >= len(metrics):  # nothing drawn below: label the steps here
            ax.set_xlabel("step")
            ax.tick_params(labelbottom=True)
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1 : len(metrics)]:  # a run may lack the first metric
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    fig.legend(handles, labels, loc="outside upper center", ncols=min(len(labels), 3))
    return fig


def save_plot(
    runs: Sequence[RunSeries], metrics: Sequence[str], path: str | os.PathLike
) -> Path:
    """Write the figure to `path` (.png, .svg or .pdf); the path written."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ConfigError(
            f"cannot write a plot as '{path.suffix or path.name}'; give a file "
            f"ending in {', '.join(FORMATS)}"
        )
    fig = make_figure(runs, metrics)
    if path.parent and not path.parent.is_dir():
        raise ConfigError(f"folder '{path.parent}' does not exist; create it first")
    fig.savefig(path, dpi=120)
    return path


# --- the terminal ---------------------------------------------------------------


def text_chart(
    runs: Sequence[RunSeries],
    metrics: Sequence[str],
    *,
    width: int = 80,
    height: int = 14,
) -> str:
    """The panels as plain text for a terminal (plotext), under one legend;
    each run has its own marker, so the runs stay apart without colours
    (plotext's coloured themes paint a background that clashes with dark
    terminals)."""
    import plotext

    metrics = check_metrics(runs, metrics)
    markers = [MARKERS[i % len(MARKERS)] for i in range(len(runs))]
    panels = ["  ".join(f"{mark} {run.label}" for mark, run in zip(markers, runs))]
    fig = plotext.figure
    for metric in metrics:
        fig.clear()
        fig.plot_size(max(width, 30), max(height, 6))
        fig.theme("colorless")
        fig.title(metric)
        fig.label("step", axis="x")
        fig.legend(active=False)  # inside the canvas it would hide data
        drawn: list[int] = []
        for mark, run in zip(markers, runs):
            steps, values = run.series(metric)
            if steps:
                signal = fig.signal(steps, values, marker=mark)
                fig.draw(signal.lines())
                drawn += steps
        if drawn:
            ticks = step_ticks(min(drawn), max(drawn))
            fig.ruler("x").ticks(ticks, [str(t) for t in ticks])
        panels.append(plotext.uncolorize(str(fig.build())))
    fig.clear()
    return "\n".join(panels)


def step_ticks(lo: int, hi: int, most: int = 7) -> list[int]:
    """Round steps from `lo` to `hi` (1, 2 or 5 times a power of ten apart),
    at most `most` of them.

    >>> step_ticks(50, 3000)
    [500, 1000, 1500, 2000, 2500, 3000]
    """
    if hi <= lo:
        return [lo]
    span = hi - lo
    gap = 1
    while span / gap >= most:
        for factor in (2, 2.5, 2):  # 1, 2, 5, 10, 20, 50, ...
            gap = round(gap * factor)
            if span / gap < most:
                break
    first = -(-lo // gap) * gap
    return list(range(first, hi + 1, gap))


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


__all__ = [
    "RunSeries",
    "check_metrics",
    "default_metrics",
    "load_runs",
    "make_figure",
    "run_labels",
    "save_plot",
    "text_chart",
]
