"""`optsvc sweep`: a thin Typer command over `optsvc.sweep`, and the table
that shows a sweep's trials as they run."""

from __future__ import annotations

import shlex
import signal
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Annotated

import typer
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from optsvc.sweep import (
    BEST_CFG,
    ENGINES,
    METRICS,
    RAY_EXTRA,
    RESULTS_CSV,
    SweepOutcome,
    SweepPlan,
    TrialRow,
    choose_engine,
    plan_sweep,
    run_sweep,
)

from . import render
from .overrides import overrides

EXIT_FAILED, EXIT_INTERRUPTED = 1, 130
Metric = render.choices("Metric", METRICS)
Mode = render.choices("Mode", dict.fromkeys(METRICS.values()))
Engine = render.choices("Engine", ENGINES)


ConfigOpt = Annotated[
    Path,
    typer.Argument(
        help="The training config (.cfg).", show_default=False, readable=False
    ),
]

OutputOpt = Annotated[
    Path,
    typer.Option(
        "--output", "-o", help="The sweep folder (on a cluster: shared storage)."
    ),
]

GridOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--grid",
        metavar="PATH=V1,V2,...",
        help="PATH=V1,V2,... : try each value of a dotted config path; several "
        "--grid options make the cartesian product.",
        show_default=False,
    ),
]

SampleOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--sample",
        metavar="PATH=DIST",
        help="PATH=DIST : a random value per trial, DIST one of "
        "loguniform(LOW,HIGH), uniform(LOW,HIGH), randint(LOW,HIGH), "
        "choice(V1,V2,...).",
        show_default=False,
    ),
]

SamplesOpt = Annotated[
    int,
    typer.Option(
        "--samples",
        min=1,
        help="Repeat the grid N times, each with its own system.seed and random draws.",
    ),
]

MetricOpt = Annotated[
    Metric, typer.Option("--metric", help="What decides the best trial.")
]

ModeOpt = Annotated[
    Mode | None,
    typer.Option("--mode", help="max or min (default: max for score, min for loss)."),
]

EarlyStopOpt = Annotated[
    bool,
    typer.Option(
        "--early-stop",
        help="Stop unpromising trials early (ASHA on the trial's step; Ray).",
    ),
]

WorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--workers",
        min=1,
        help="Trials at once (default: one per CPU; on a cluster, as many "
        "as its resources allow).",
    ),
]

GpusPerTrialOpt = Annotated[
    float,
    typer.Option("--gpus-per-trial", min=0, help="GPUs each trial gets (Ray)."),
]

RetriesOpt = Annotated[
    int,
    typer.Option(
        "--retries", min=0, help="Retry a failed trial from its last checkpoint."
    ),
]

AddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address",
        metavar="HOST:PORT|auto",
        help="Run on an existing Ray cluster: host:port, or auto (default: "
        "a private local Ray instance).",
    ),
]

EngineOpt = Annotated[
    Engine,
    typer.Option(
        "--engine",
        help="ray, serial (one trial after another, no Ray), or auto: Ray "
        "when it is installed.",
    ),
]

ResumeOpt = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Continue the sweep in the folder: finished trials are kept, "
        "the others continue from their last checkpoint.",
    ),
]


def sweep(
    ctx: typer.Context,
    config: ConfigOpt,
    output: OutputOpt,
    grid: GridOpt = None,
    sample: SampleOpt = None,
    samples: SamplesOpt = 1,
    metric: MetricOpt = Metric.score,
    mode: ModeOpt = None,
    early_stop: EarlyStopOpt = False,
    workers: WorkersOpt = None,
    gpus_per_trial: GpusPerTrialOpt = 0,
    retries: RetriesOpt = 0,
    address: AddressOpt = None,
    engine: EngineOpt = Engine.auto,
    resume: ResumeOpt = False,
) -> None:
    """Train a config over a grid or random samples of its values, compare
    the trials and keep the best.

    Each trial is an ordinary run folder, OUTPUT/trials/<index>-<values>/,
    trained by `optsvc train`. OUTPUT gets results.csv, results.json and
    best.cfg once every trial has ended (the config of the finished trial
    with the best score at any evaluation, which `optsvc train` runs as
    is). Runs on a private local Ray instance, on a Ray cluster with
    --address, or one trial after another without Ray. Every trial's config
    is validated before any starts. Exit 0 when every trial finished, 1 when
    some failed, 130 when interrupted; continue with --resume. Extra
    arguments override config values.

    Example: optsvc sweep configs/quickstart.cfg -o sweeps/lr
    --grid optimizer.learn_rate.initial_rate=0.003,0.01 --grid optimizer.beta1=0.8,0.9
    """
    with _checking() as on_trial:
        plan = plan_sweep(
            config,
            grid=grid or [],
            sample=sample or [],
            samples=samples,
            overrides=overrides(ctx),
            on_trial=on_trial,
        )
    chosen = choose_engine(engine.value, address)
    render.warnings(plan.warnings)
    where = f"Ray at {address}" if address else "a local Ray instance"
    render.out.print(
        f"sweep: {len(plan.trials)} trials of {config} in {output}, on "
        + (where if chosen == "ray" else "one process, one trial at a time")
    )
    if chosen == "serial" and engine == "auto":
        render.out.print(f"note: {RAY_EXTRA} runs trials in parallel and on clusters")
    view = SweepView(plan, metric.value)
    with view.live or nullcontext(), _terminate_as_interrupt():
        outcome = run_sweep(
            plan, output, engine=chosen, resume=resume, metric=metric.value,
            mode=mode.value if mode else None, workers=workers,
            gpus_per_trial=gpus_per_trial, retries=retries, address=address,
            early_stop=early_stop, on_change=view.update,
        )  # fmt: skip
    view.finish(outcome)
    _summary(outcome, output, metric.value, _again(ctx))
    if outcome.interrupted:
        raise typer.Exit(EXIT_INTERRUPTED)
    if not outcome.ok:
        raise typer.Exit(EXIT_FAILED)


class SweepView:
    """The trials as a table, redrawn as they change (a terminal), or one
    line per trial that ends (a pipe or a file)."""

    def __init__(self, plan: SweepPlan, metric: str):
        self.plan = plan
        self.metric = metric
        self.rows: dict[str, TrialRow] = {}
        self.live: Live | None = None
        if render.out.is_terminal:
            self.live = Live(
                self.table(), console=render.out, auto_refresh=False, transient=True
            )

    def update(self, row: TrialRow) -> None:
        before = self.rows.get(row.name)
        self.rows[row.name] = row
        if self.live is not None:
            self.live.update(self.table(), refresh=True)
        elif row.status not in ("running", "pending") or (
            before is None and row.status == "running"
        ):
            render.out.print(self._line(row))

    def table(self) -> Table:
        header = ["#", *(path.rsplit(".", 1)[-1] for path in self.plan.paths)]
        header += ["step", self.metric, f"best {self.metric}", "status"]
        rows = []
        for trial in self.plan.trials:
            row = self.rows.get(trial.name) or TrialRow(trial)
            cells = [trial.index, *(trial.values.get(p) for p in self.plan.paths)]
            cells += [row.step, row.metric(self.metric), row.best]
            rows.append([*map(_value, cells), row.status])
        return render.status_table(header, rows, left={"status"})

    def finish(self, outcome: SweepOutcome) -> None:
        self.rows = {row.name: row for row in outcome.rows}  # every trial's
        render.out.print(self.table())

    def _line(self, row: TrialRow) -> str:
        text = f"trial {row.name}: {row.status}"
        if row.step is not None:
            text += f" at step {row.step}"
        value = row.metric(self.metric)
        if value is not None:
            text += f", {self.metric} {_value(value)} (best {_value(row.best)})"
        return text + (f": {row.error}" if row.error else "")


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a job scheduler, `ray job stop`) ends the sweep as Ctrl-C
    does: trials stopped, Ray shut down, results written."""
    try:
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _value(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@contextmanager
def _checking() -> Iterator:
    """A progress bar on stderr while many trial configs are checked (a
    terminal only; each takes some 20 ms)."""
    if not render.err.is_terminal:
        yield None
        return
    with Progress(
        TextColumn("checking trial configs"), BarColumn(), MofNCompleteColumn(),
        console=render.err, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("", total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _again(ctx: typer.Context) -> str:
    """The command that continues this sweep: the one given, with --resume."""
    words = ["optsvc", ctx.info_name or "sweep"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.param_type_name == "argument":
            words.append(str(value))
            continue
        if param.name == "resume" or value is None or value == param.default:
            continue
        if param.is_flag:
            words += [param.opts[0]] if value else []
            continue
        for one in value if param.multiple else [value]:
            words += [param.opts[0], str(getattr(one, "value", one))]
    return shlex.join([*words, *ctx.args, "--resume"])


def _summary(outcome: SweepOutcome, output: Path, metric: str, again: str) -> None:
    best = outcome.best
    if best is not None:
        render.out.print(
            f"best: trial {best.name}, best {metric} {_value(best.best)}; "
            f"its config is {output / BEST_CFG} (optsvc train {output / BEST_CFG})"
        )
    render.out.print(f"results: {output / RESULTS_CSV}")
    for row in outcome.failed:
        render.err.print(f"✘ trial {row.name} failed: {row.error}")
    if outcome.interrupted:
        left = sum(
            r.status not in ("finished", "stopped", "failed") for r in outcome.rows
        )
        render.err.print(
            f"✘ the sweep was interrupted with {left} trials not done; continue "
            f"it with {again}"
        )
    elif outcome.failed:
        render.err.print(
            f"✘ {len(outcome.failed)} of {len(outcome.rows)} trials failed; "
            "their logs are trials/<trial>/train.log; fix the cause, then run "
            f"them again from their last checkpoints with {again}"
        )
