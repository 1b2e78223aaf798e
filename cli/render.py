"""Rendering for the command line: rich on a terminal, plain text in pipes."""

from __future__ import annotations

import inspect
import json
import math
import os
import sys
from enum import Enum
from typing import NoReturn

import typer
from rich.console import Console
from rich.table import Column, Table
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


# Messages are printed as they are, never read as rich markup or emoji codes:
# they hold paths, config values and section names ([training], :memory:).
out = _Console(highlight=False, soft_wrap=True, markup=False, emoji=False)
err = _Console(stderr=True, highlight=False, soft_wrap=True, markup=False, emoji=False)


STATUS_STYLES = {"finished": "green", "running": "cyan", "interrupted": "yellow",
                 "stopped": "yellow", "failed": "red"}  # fmt: skip


def json_text(value, indent: int | None = None) -> str:
    """`value` as JSON, a number that is not finite as null (JSON has no
    NaN or Infinity)."""

    def finite(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [finite(x) for x in v]
        return v

    return json.dumps(finite(value), indent=indent, allow_nan=False)


def status_table(header: list[str], rows: list[list[str]], left: set[str]) -> Table:
    """Rows of text under `header` (the columns not in `left` justified right),
    each row's status coloured."""
    columns = [Column(n, justify="left" if n in left else "right") for n in header]
    table = Table(*columns)
    status = header.index("status")
    for row in rows:
        texts = [Text(cell) for cell in row]  # plain text: names may hold [brackets]
        texts[status].stylize(STATUS_STYLES.get(row[status], ""))
        table.add_row(*texts)
    return table


def choices(name: str, values) -> type[Enum]:
    """The str Enum through which a Typer option takes one of `values`."""
    return Enum(name, {value: value for value in values}, type=str)


def fail(message: str, code: int = 1) -> NoReturn:
    """`✘ message` on stderr, then exit with `code`."""
    err.print(f"✘ {message}")
    raise typer.Exit(code) from None


def fail_config(error: ConfigError, source: str = "") -> NoReturn:
    """Every issue of a ConfigError, one a line, on stderr; then exit 1."""
    issues = error.issues
    head = f"{source}: " if source else ""
    noun = "error" if len(issues) == 1 else "errors"
    err.print(f"✘ {head}{len(issues)} {noun}", style="bold red")
    for issue in issues:
        err.print(f"  {issue}")
    raise typer.Exit(1) from None


def warnings(issues) -> None:
    for issue in issues:
        err.print(f"⚠ warning: {issue}", style="yellow")


def summary(report: Report, source: str) -> None:
    """What `optsvc validate` found valid, and what it would build."""
    lay = report.sections
    out.print(f"✔ {source} is valid", style="bold green")
    opt = report.optimizer
    if opt is not None:
        name = report.blocks[lay.optimizer_path][0]
        title = Text(f"[{lay.optimizer_path}]  {name}", style="bold")
        table = Table(title=title, title_justify="left")
        table.add_column("hyperparameter")
        table.add_column("value or schedule")
        found = find_function("optimizers", name)  # None: not known
        takes = None if found is None else {p.name for p in params_of(found[1])}
        for param, schedule in opt.schedules.items():
            if takes is None or param in takes:  # SGD has no betas, no eps
                table.add_row(param, describe(schedule))
        for setting, value in opt.settings.items():
            table.add_row(setting, str(value))
        out.print(table)
    elif report.schedule is not None:
        path = lay.schedule_path
        out.print(f"[{path}]  {report.blocks[path][0]}", style="bold")
        out.print(f"  {describe(report.schedule)}")
    for path, (func, block) in report.blocks.items():
        if path in ("data", "model"):
            args = ", ".join(f"{k}={v!r}" for k, v in block.items() if k[0] != "@")
            out.print(f"[{path}]  {func}({args})")
    out.print(f"sections checked: {', '.join(lay.checked) or 'none'}")
    if lay.unchecked:
        what = "not optsvc's, not checked" if lay.is_foreign else "not checked"
        names, more = lay.unchecked[:12], len(lay.unchecked) - 12
        tail = f" and {more:,} more" if more > 0 else ""
        out.print(f"{what}: {', '.join(names)}{tail}")
    if len(lay.blocks) > 1:
        shown = lay.optimizer_path or lay.schedule_path
        out.print(
            f"built: [{shown}], one of {len(lay.blocks)} blocks "
            f"({', '.join(lay.blocks)}); pick another with --block"
        )
    warnings(report.warnings)


def registry_listing(registry, names: list[str]) -> None:
    """Every registered function with its arguments, defaults and doc line."""
    for reg_name in names:
        reg = getattr(registry, reg_name)
        table = Table(title=Text(f"@{reg_name}", style="bold"), title_justify="left")
        table.add_column("name", style="bold")
        table.add_column("arguments (default)")
        table.add_column("what it does")
        for name, func in sorted(reg.get_all().items()):
            args = [
                p.name if p.required else f"{p.name}={p.default!r}"
                for p in params_of(func)
            ]
            doc = (inspect.getdoc(func) or "").split("\n\n")[0].replace("\n", " ")
            table.add_row(Text(name), Text(", ".join(args)), Text(doc))
        out.print(table)


def chart(name: str, values: list[float], width=64, height=10):
    """A terminal line chart of one series, a value a step from step 0."""
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
    out.print(name, style="bold")
    for r, row in enumerate(grid):
        label = f"{hi:.4g}" if r == 0 else f"{lo:.4g}" if r == height - 1 else ""
        out.print(f"{label:>{label_w}} │" + "".join(row))
    out.print(f"{'':>{label_w}} └" + "─" * cols)
    first, last = "0", str(len(values) - 1)
    out.print(f"{'':>{label_w}}  {first}{last:>{max(1, cols - len(first))}}  (step)")


def sample_table(values: dict[str, list[float]], rows: int = 11) -> Table:
    """Values at evenly spaced steps."""
    n = len(next(iter(values.values())))
    picks = sorted({round(i * (n - 1) / max(1, rows - 1)) for i in range(rows)})
    table = Table(*(Column(name, justify="right") for name in ["step", *values]))
    for step in picks:
        table.add_row(str(step), *(f"{values[p][step]:.6g}" for p in values))
    return table
