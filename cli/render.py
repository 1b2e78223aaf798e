"""Rendering for the command line: rich on a terminal, plain text in pipes."""

from __future__ import annotations

import inspect
import math
import os
import sys

from rich.console import Console
from rich.table import Table
from rich.text import Text

from optsvc.config import ConfigError, Report
from optsvc.config.blocks import find_function
from optsvc.config.preview import describe
from optsvc.spec import params_of


def closed_pipe() -> None:
    """Stop quietly with exit 0 once stdout's reader has gone (`| head`):
    a closed pipe is not an error. What remains to print, and the flush at
    exit, go nowhere."""
    _devnull_stdout()
    raise SystemExit(0)


def _devnull_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a file (a test's capture)
        pass


# Set by a command whose work must outlive its reader (`optsvc train | head`):
# once stdout is closed, its output goes nowhere and the work goes on.
keep_working = False


class _Console(Console):
    def on_broken_pipe(self) -> None:  # rich's own exits 1
        self.quiet = True
        if keep_working:
            _devnull_stdout()
        else:
            closed_pipe()


out = _Console(highlight=False, soft_wrap=True)
err = _Console(stderr=True, highlight=False, soft_wrap=True)


def errors(error: ConfigError, source: str = "") -> None:
    """Every issue of a ConfigError, one a line, on stderr."""
    issues = error.issues
    head = f"{source}: " if source else ""
    noun = "error" if len(issues) == 1 else "errors"
    err.print(Text(f"✘ {head}{len(issues)} {noun}", style="bold red"))
    for issue in issues:
        err.print(Text(f"  {issue}"))


def warnings(report: Report) -> None:
    for issue in report.warnings:
        err.print(Text(f"⚠ warning: {issue}", style="yellow"))


def summary(report: Report, source: str) -> None:
    """What `optsvc validate` found valid, and what it would build."""
    lay = report.sections
    out.print(Text(f"✔ {source} is valid", style="bold green"))
    opt = report.optimizer
    if opt is not None:
        name = report.blocks[lay.optimizer_path][0]
        title = Text(f"[{lay.optimizer_path}]  {name}", style="bold")
        table = Table(title=title, title_justify="left")
        table.add_column("hyperparameter")
        table.add_column("value or schedule")
        takes = _arguments_of(name)
        for param, schedule in opt.schedules.items():
            if takes is None or param in takes:  # SGD has no betas, no eps
                table.add_row(param, describe(schedule))
        for setting, value in opt.settings.items():
            table.add_row(setting, str(value))
        out.print(table)
    elif report.schedule is not None:
        path = lay.schedule_path
        out.print(Text(f"[{path}]  {report.blocks[path][0]}", style="bold"))
        out.print(Text(f"  {describe(report.schedule)}"))
    for path, (func, block) in report.blocks.items():
        if path in ("data", "model"):
            args = ", ".join(f"{k}={v!r}" for k, v in block.items() if k[0] != "@")
            out.print(Text(f"[{path}]  {func}({args})"))
    out.print(f"sections checked: {', '.join(lay.checked) or 'none'}")
    if lay.unchecked:
        what = "not optsvc's, not checked" if lay.is_foreign else "not checked"
        out.print(f"{what}: {', '.join(lay.unchecked)}")
    if len(lay.blocks) > 1:
        shown = lay.optimizer_path or lay.schedule_path
        out.print(
            Text(
                f"built: [{shown}], one of {len(lay.blocks)} blocks "
                f"({', '.join(lay.blocks)}); pick another with --block"
            )
        )
    warnings(report)


def _arguments_of(optimizer_name: str) -> set[str] | None:
    """The arguments a registered optimizer takes (None: not known)."""
    found = find_function("optimizers", optimizer_name)
    return None if found is None else {p.name for p in params_of(found[1])}


def registry_listing(registry, names: list[str]) -> None:
    """Every registered function with its arguments, defaults and doc line."""
    for reg_name in names:
        reg = getattr(registry, reg_name)
        table = Table(title=Text(f"@{reg_name}", style="bold"), title_justify="left")
        table.add_column("name", style="bold")
        table.add_column("arguments (default)")
        table.add_column("what it does")
        for name, func in sorted(reg.get_all().items()):
            args = []
            for p in params_of(func):
                shown = p.name
                if p.default is not inspect.Parameter.empty:
                    shown += f"={p.default!r}"
                args.append(shown)
            doc = (inspect.getdoc(func) or "").split("\n\n")[0].replace("\n", " ")
            table.add_row(Text(name), Text(", ".join(args)), Text(doc))
        out.print(table)


def chart(name: str, steps: list[int], values: list[float], width=64, height=10):
    """A terminal line chart of one series."""
    finite = [v for v in values if math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if hi == lo:  # a constant: one row, one label
        height = 1
    span = hi - lo or 1.0
    cols = min(width, len(values))
    grid = [[" "] * cols for _ in range(height)]
    for c in range(cols):
        start = c * len(values) // cols
        stop = max(start + 1, (c + 1) * len(values) // cols)
        chunk = [v for v in values[start:stop] if math.isfinite(v)]
        if not chunk:
            continue
        for v in (min(chunk), max(chunk)):
            r = height - 1 - round((v - lo) / span * max(height - 1, 0))
            grid[r][c] = "•"
    label_w = max(len(f"{hi:.4g}"), len(f"{lo:.4g}"))
    lines = [Text(name, style="bold")]
    for r, row in enumerate(grid):
        label = f"{hi:.4g}" if r == 0 else f"{lo:.4g}" if r == height - 1 else ""

        lines.append(Text(f"{label:>{label_w}} │" + "".join(row), style=""))
    axis = f"{'':>{label_w}} └" + "─" * cols
    first, last = str(steps[0]), str(steps[-1])
    ticks = f"{'':>{label_w}}  {first}{last:>{max(1, cols - len(first))}}"
    lines += [Text(axis), Text(ticks + "  (step)")]
    for line in lines:
        out.print(line)


def sample_table(values: dict[str, list[float]], rows: int = 11) -> Table:
    """Values at evenly spaced steps."""
    n = len(next(iter(values.values())))
    picks = sorted({round(i * (n - 1) / max(1, rows - 1)) for i in range(rows)})
    table = Table()
    table.add_column("step", justify="right")
    for p in values:
        table.add_column(p, justify="right")
    for step in picks:
        table.add_row(str(step), *(f"{values[p][step]:.6g}" for p in values))
    return table
