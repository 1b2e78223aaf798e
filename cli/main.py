"""`optsvc`: the command line, a thin Typer layer over the optsvc library.

Each command parses its arguments, calls library functions, and renders the
result; user errors print one clear message and exit 1, never a traceback.

Exit codes, one rule for every command: 0 done; 1 a problem in what the
command was given (the config, an override's value, a file, the data) whose
message says what to fix; 2 the command line itself is malformed (an unknown
option, a missing argument: Click's usage errors, with the usage) or optsvc
failed (an internal error, which says to report it). A closed output pipe
(`optsvc registry | head -1`) is not an error: the output stops, exit 0.
"""

from __future__ import annotations

import csv
import functools
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

import optsvc
from optsvc import registries
from optsvc.config import ConfigError, load_config, validate_config
from optsvc.config.preview import (
    as_rows,
    default_steps,
    read_scores,
    schedule_values,
    scheduled,
    standalone_values,
)
from optsvc.errors import OptsvcError
from optsvc.schedules.base import Schedule
from optsvc.training.signals import TrainingInterrupted

from . import render
from .bench import bench
from .evaluate import evaluate
from .overrides import overrides
from .plot import plot
from .runs import runs
from .sweep import sweep

OVERRIDES = {"allow_extra_args": True, "ignore_unknown_options": True}
# Click's usage errors (exit 2), whichever Click Typer runs on.
UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
# show-schedule computes every step in Python (about 15 s a million steps).
MAX_SHOW_STEPS = 1_000_000

app = typer.Typer(
    name="optsvc",
    help=(
        "Configuration-driven, Thinc-compatible optimizers.\n\n"
        "Config files use Thinc's and spaCy's [optimizer] blocks "
        '(@optimizers = "Adam.v1", @schedules = "warmup_linear.v1"). '
        "Any config value can be overridden on the command line in dotted "
        "form, e.g. --optimizer.learn_rate 0.01.\n\n"
        "Example: optsvc validate configs/adam.cfg\n\n"
        "Exit codes: 0 done; 1 a problem in the config, an override, a file or "
        "the data (the message says what to fix); 2 a malformed command line "
        "(shown with the usage) or a bug in optsvc (the message asks you to "
        "report it). A closed output pipe (| head) is not an error."
    ),
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def user_errors(command):
    """Render a ConfigError as a list of problems and any other user error
    (OptsvcError) as its one-line message, and exit 1; so too a job too large
    for the memory or a failed read or write. Anything else is a bug: one
    line, exit 2, never a traceback. Errors are told apart by type only."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            result = command(*args, **kwargs)
            sys.stdout.flush()  # a closed pipe shows here, not at exit
            return result
        except ConfigError as error:
            render.fail_config(error, str(kwargs.get("config") or ""))
        except OptsvcError as error:  # every other user error: its message says it
            render.fail(str(error))
        except (typer.Exit, typer.Abort, UsageError):  # usage: exit 2
            raise
        except TrainingInterrupted as stopped:  # saved, and said how to go on
            raise typer.Exit(stopped.exit_code) from None
        except KeyboardInterrupt as stop:  # Ctrl-C, or a second signal in training
            raise typer.Exit(getattr(stop, "exit_code", 130)) from None
        except BrokenPipeError:  # the reader went away (| head): not an error
            render.closed_pipe()
        except MemoryError as error:  # a job too large for this machine
            render.fail(
                f"not enough memory for this job ({error}); make it smaller "
                "(data.n_samples, model.hidden_width, model.depth, "
                "training.batch_size)"
            )
        except RecursionError:  # e.g. a value like [[[[...]]]] thousands deep
            render.fail(
                "a value in the config or on the command line is nested too "
                "deeply to be read; simplify it"
            )
        except OSError as error:  # disk full, permissions, a path that is not there
            render.fail(
                f"{error}; check the path, the free space and the permissions, "
                "then run the command again"
            )
        except Exception as error:  # a bug: say so in one line
            render.fail(
                f"internal error: {type(error).__name__}: {error} "
                "(please report this with the command you ran)",
                code=2,
            )

    return run


def _version(value: bool) -> None:
    if value:
        typer.echo(f"optsvc {optsvc.__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version,
            is_eager=True,
            help="Show the version and exit.",
        ),
    ] = False,
) -> None:
    """Configuration-driven, Thinc-compatible optimizers."""


ConfigArg = Annotated[
    Path,
    typer.Argument(help="The config file (.cfg).", show_default=False, readable=False),
]
BlockOpt = Annotated[
    str | None,
    typer.Option(
        "--block",
        help="The optimizer or schedule block to build when a config has "
        "several, e.g. pretraining.optimizer (default: the one spaCy or Thinc "
        "trains with).",
    ),
]


@app.command("validate", context_settings=OVERRIDES)
@user_errors
def validate_cmd(ctx: typer.Context, config: ConfigArg, block: BlockOpt = None) -> None:
    """Check a config file and show what it would build.

    Every section optsvc knows is checked before anything is built, and every
    problem is listed with its dotted path, the value given and what is
    expected. Exit 0 when valid, 1 otherwise. In a Thinc or spaCy config the
    optimizer and schedule blocks are checked ([optimizer],
    [training.optimizer], [pretraining.optimizer], a [learn_rate] schedule)
    and the other sections are listed as not checked. Extra arguments
    override config values.

    Example: optsvc validate configs/adam.cfg --optimizer.learn_rate 0.01
    """
    cfg = load_config(config, overrides(ctx))
    report = validate_config(cfg, block=block)
    if not report.ok:
        raise ConfigError(report.errors)
    render.summary(report, str(config))


Format = render.choices("Format", ("chart", "table", "csv", "json"))


@app.command("show-schedule", context_settings=OVERRIDES)
@user_errors
def show_schedule_cmd(
    ctx: typer.Context,
    config: ConfigArg,
    steps: Annotated[
        int | None,
        typer.Option(
            "--steps",
            min=1,
            help="Steps to show (default: training.max_steps, else the "
            "schedule's own total_steps, else 1000).",
        ),
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            help="Hyperparameter to show (repeatable; default: every scheduled one).",
        ),
    ] = None,
    fmt: Annotated[
        Format, typer.Option("--format", help="chart, table, csv or json.")
    ] = Format.chart,
    scores: Annotated[
        Path | None,
        typer.Option(
            "--scores",
            help="A run's metrics.jsonl whose scores a plateau schedule replays.",
        ),
    ] = None,
    block: BlockOpt = None,
) -> None:
    """Show the values each scheduled hyperparameter takes, step by step.

    As a terminal chart with a table of sampled steps, or every step as csv
    or json for machines. A plateau schedule needs evaluation scores: pass a
    run's metrics.jsonl with --scores, else no plateau is assumed.

    Example: optsvc show-schedule configs/adam.cfg --steps 2000 --format csv
    """
    cfg = load_config(config, overrides(ctx))
    report = validate_config(cfg, block=block)
    if not report.ok:
        raise ConfigError(report.errors)
    opt = report.optimizer
    schedules, params = _what_to_show(report, param)
    n, why = default_steps(cfg, [schedules[p] for p in params])
    if steps:
        n, why = steps, None
    if n > MAX_SHOW_STEPS:
        raise ConfigError(
            f"{n:,} steps are more than show-schedule shows (at most "
            f"{MAX_SHOW_STEPS:,}); pass --steps N with a smaller N"
        )
    if why:
        render.err.print(f"note: {why}; pass --steps N to choose")
    score_map = read_scores(scores) if scores else None
    if opt is None:
        values = {params[0]: standalone_values(schedules[params[0]], n, score_map)}
    else:
        values = schedule_values(opt, n, params, score_map)
    if fmt in (Format.json, Format.csv):
        _write_values(fmt, n, params, values)
        return
    if fmt is Format.chart:
        for p in params:
            render.chart(p, values[p])
            render.out.print()
    render.out.print(render.sample_table(values))
    if any(_has_plateau(schedules[p]) for p in params) and not scores:
        render.out.print(
            "note: a plateau schedule only reacts to evaluation scores; none were "
            "given (--scores metrics.jsonl), so no plateau is assumed."
        )


def _what_to_show(report, param: list[str] | None) -> tuple[dict, list[str]]:
    """(schedules by name, the names to show): the optimizer's chosen or
    scheduled hyperparameters, or a standalone schedule block."""
    opt = report.optimizer
    if opt is None:
        schedules = {report.sections.schedule_path: report.schedule}
        return schedules, list(schedules)
    params = list(param or []) or scheduled(opt) or ["learn_rate"]
    unknown = [p for p in params if p not in opt.schedules]
    if unknown:
        raise ConfigError(
            f"unknown hyperparameter {unknown[0]!r}; choose from "
            f"{', '.join(opt.schedules)}"
        )
    return opt.schedules, params


def _write_values(fmt: Format, n: int, params: list[str], values: dict) -> None:
    """Every step's values on stdout, as json or csv, for machines."""
    if fmt is Format.json:
        json.dump({"steps": n, "params": params, "rows": as_rows(values)}, sys.stdout)
        sys.stdout.write("\n")
        return
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(["step", *params])
    writer.writerows([i, *(repr(values[p][i]) for p in params)] for i in range(n))


def _has_plateau(schedule: Schedule) -> bool:
    return schedule.name == "plateau" or any(
        isinstance(v, Schedule) and _has_plateau(v) for v in schedule.attrs.values()
    )


@app.command("train", context_settings=OVERRIDES)
@user_errors
def train_cmd(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Argument(
            help="The config file (.cfg); with --resume -o DIR it may be left "
            "out: the run's own DIR/config.cfg is used.",
            show_default=False,
            readable=False,  # an unreadable file is optsvc's error (exit 1)
        ),
    ] = None,
    output: Annotated[
        str | None,  # not Path: Path("") would quietly be the current folder
        typer.Option(
            "--output", "-o", help="Run folder (default: runs/<config name>)."
        ),
    ] = None,
    gpu: Annotated[
        int | None,
        typer.Option(
            "--gpu",
            help="GPU id to run on; -1 is the CPU (default: system.gpu_id, else -1).",
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue from the latest valid checkpoint (a run that has "
            "ended is left as it is).",
        ),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a run already in the folder.")
    ] = False,
    extend: Annotated[
        bool,
        typer.Option(
            "--extend", help="With --resume: allow a larger training.max_steps."
        ),
    ] = False,
) -> None:
    """Train the toy job a config describes, on the CPU or a GPU.

    Logs an evaluation row every training.eval_frequency steps (loss, score and
    every scheduled hyperparameter), and writes the filled config,
    metrics.jsonl, checkpoints, the best evaluation's weights (best.safetensors) and
    the final weights (final.safetensors) to the run folder; optsvc evaluate scores
    them. A killed run continues with --resume and ends with the same weights; on a
    run that has ended (max_steps reached or stopped early) --resume says so,
    trains nothing and exits 0.

    Example: optsvc train configs/quickstart.cfg -o runs/quick --training.max_steps 500

    Resume with the run's own config: optsvc train --resume -o runs/quick
    """
    from optsvc.training.loop import train

    render.keep_working = True  # a closed pipe (| head) does not stop a run
    args = list(ctx.args)
    if config is not None and not config.exists():
        config, args = _value_taken_as_config(config, args)
    config = config or _own_config(ctx, resume, Path(output) if output else None)
    cfg = load_config(config, overrides(ctx, args))
    out = Path("runs") / config.stem if output is None else output
    train(
        cfg,
        out,
        config_source=str(config),
        resume=resume,
        overwrite=overwrite,
        gpu_id=gpu,
        allow_extend=extend,
        console=render.out,
        err_console=render.err,
    )


def _value_taken_as_config(
    config: Path, args: list[str]
) -> tuple[Path | None, list[str]]:
    """`optsvc train --resume -o DIR --training.max_steps 800`: click takes
    the override's name (or, after it, its value) for the CONFIG argument.
    Give it back to the overrides (each takes one value)."""
    if str(config).startswith("--"):
        return None, [str(config), *args]
    for i, arg in enumerate(args):
        dangling = i + 1 == len(args) or args[i + 1].startswith("--")
        if arg.startswith("--") and "=" not in arg and dangling:
            return None, [*args[: i + 1], str(config), *args[i + 1 :]]
    return config, args


def _own_config(ctx: typer.Context, resume: bool, output: Path | None) -> Path:
    """The run's filled config, for `optsvc train --resume -o DIR`."""
    if not resume or output is None:
        raise typer.BadParameter(
            "missing: give a config to train, or --resume -o DIR to continue the "
            "run in DIR with its own config.",
            ctx=ctx,
            param_hint="'CONFIG'",
        )
    from optsvc.training.run_folder import RunFolder

    own = RunFolder(output).config_file
    if not own.is_file():
        raise OptsvcError(
            f"'{output}' holds no run to resume (no config.cfg); start one with "
            f"optsvc train CONFIG -o {output}"
        )
    return own


RegistryName = render.choices("RegistryName", registries.__all__)


@app.command("registry")
@user_errors
def registry_cmd(
    name: Annotated[
        RegistryName | None,
        typer.Argument(help="Which registry to list (default: all)."),
    ] = None,
) -> None:
    """List registered functions: names, arguments with defaults, and what
    each does. These are the names configs use after @optimizers, @schedules,
    @datasets and @models.

    Example: optsvc registry schedules
    """
    names = [name.value] if name else [n.value for n in RegistryName]
    render.registry_listing(optsvc.registry, names)


app.command("bench")(user_errors(bench))
app.command("evaluate")(user_errors(evaluate))
app.command("runs")(user_errors(runs))
app.command("plot")(user_errors(plot))
app.command("sweep", context_settings=OVERRIDES)(user_errors(sweep))


def main() -> None:
    """The `optsvc` entry point. A closed pipe is handled where it shows
    (`render.closed_pipe`, from `user_errors` and the consoles) before Click
    would exit 1 for it."""
    app()


if __name__ == "__main__":
    main()
