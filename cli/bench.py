"""`optsvc bench`: a thin Typer command over `optsvc.bench.run_bench`."""

from __future__ import annotations

import json
from enum import Enum
from importlib.util import find_spec
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

import optsvc
from optsvc.bench import machine, rows_table, run_bench
from optsvc.config import ConfigError
from optsvc.errors import OptsvcError

from . import render


class BenchFormat(str, Enum):
    table = "table"
    json = "json"


def bench(
    config: Annotated[
        Path | None,
        typer.Argument(
            help="Config whose [optimizer] or [training.optimizer] block is "
            "benchmarked (default: spaCy's default Adam: learn_rate 0.001, "
            "grad_clip 1.0, L2 0.01 as weight decay, averages on).",
            show_default=False,
        ),
    ] = None,
    gpu: Annotated[
        int, typer.Option("--gpu", help="GPU id to run on (cupy); -1 for the CPU.")
    ] = -1,
    workload: Annotated[
        list[str] | None,
        typer.Option(
            "--workload",
            "-w",
            help="W1 (one large tensor), W2 (many mid-sized), W3 (a small "
            "model); repeat the option for several. Default: all three.",
            show_default=False,
        ),
    ] = None,
    output_format: Annotated[
        BenchFormat, typer.Option("--format", help="table, or json for machines.")
    ] = BenchFormat.table,
    quick: Annotated[
        bool,
        typer.Option("--quick", help="Tiny workloads and few repeats: a smoke test."),
    ] = False,
    repeat: Annotated[
        int | None,
        typer.Option("--repeat", min=1, help="Timed steps per implementation."),
    ] = None,
    peers: Annotated[
        bool,
        typer.Option(
            "--peers/--no-peers",
            help="Also time Thinc and PyTorch where they are importable.",
        ),
    ] = True,
) -> None:
    """Time the optimizer step against the memory-bandwidth floor, Thinc and
    PyTorch, in one run: ms/step, GB/s and the multiple of the floor (the
    bytes the step must move / the memory bandwidth measured in the same run,
    the better of an array copy and an in-place rewrite).
    Run it single-threaded for CPU numbers: OMP_NUM_THREADS=1
    OPENBLAS_NUM_THREADS=1.

    Example: optsvc bench --workload W3 --format json
    """
    config, workloads = _workloads(config, workload or [])
    if peers:
        for peer in missing_peers():
            render.err.print(
                Text(f"note: {peer} is not installed, so its rows are left out")
            )
    try:
        rows = run_bench(
            config,
            gpu_id=gpu,
            workloads=tuple(workloads or ("W1", "W2", "W3")),
            repeat=repeat,
            include_peers=peers,
            quick=quick,
        )
    except ConfigError as error:  # as `optsvc validate` shows it
        render.errors(error, str(config))
        raise typer.Exit(1) from None
    except (OptsvcError, ValueError, RuntimeError, ImportError) as error:
        # OptsvcError: no GPU (DeviceError); ValueError: an unknown workload;
        # RuntimeError / ImportError: what the peers' libraries raise.
        render.err.print(f"✘ {error}", markup=False)
        raise typer.Exit(1) from None
    if output_format is BenchFormat.json:
        report = {"optsvc": optsvc.__version__, "machine": machine(gpu), "rows": rows}
        typer.echo(json.dumps(report, indent=2))
    else:
        render.out.print(rows_table(rows))


WORKLOADS = ("W1", "W2", "W3")


def _workloads(config: Path | None, given: list[str]):
    """`--workload W2 W3`: the second name lands in CONFIG; it is a workload."""
    if config is not None and not config.exists() and str(config) in WORKLOADS:
        return None, [*given, str(config)]
    return config, list(given)


def missing_peers() -> list[str]:
    """The peers `optsvc bench` compares with that cannot be imported here."""
    return [name for name in ("thinc", "torch") if find_spec(name) is None]


if __name__ == "__main__":  # python -m optsvc_cli.bench ...
    typer.run(bench)
