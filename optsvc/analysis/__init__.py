"""Reading runs back: list them with their status and scores (`runs`) and
draw their metrics (`plot`). Both read only what a run folder holds."""

from optsvc.analysis.plot import (
    RunSeries,
    load_runs,
    make_figure,
    save_plot,
    text_chart,
)
from optsvc.analysis.runs import (
    RunSummary,
    find_runs,
    list_runs,
    read_metrics,
    summarize,
)

__all__ = [
    "RunSeries",
    "RunSummary",
    "find_runs",
    "list_runs",
    "load_runs",
    "make_figure",
    "read_metrics",
    "save_plot",
    "summarize",
    "text_chart",
]
