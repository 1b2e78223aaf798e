"""`optsvc bench`: a thin Typer command over `optsvc.bench.run_bench`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

import optsvc
from optsvc.bench import WORKLOADS, machine, peer_skips, rows_table, run_bench
from optsvc.config import ConfigError
from optsvc.errors import OptsvcError

from . import render

BenchFormat = render.choices("BenchFormat", ("table", "json"))


def bench(
    config: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Configs whose [optimizer] or [training.optimizer] blocks are "
            "benchmarked, each against its own floor (default: spaCy's default "
            "Adam: learn_rate 0.001, grad_clip 1.0, L2 0.01 as weight decay, "
            "averages on). Workload names here add to --workload "
            "(--workload W2 W3).",
            show_default=False,
            readable=False,  # an unreadable file is optsvc's error (exit 1)
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
    threads: Annotated[
        int,
        typer.Option(
            "--threads",
            min=1,
            help="CPU threads for optsvc's kernels, the floor's stream, BLAS "
            "and torch (more than one needs numba).",
        ),
    ] = 1,
) -> None:
    """Time the optimizer step against the memory-bandwidth floor, Thinc and
    PyTorch, in one run: ms/step, GB/s and the multiple of the floor (the
    bytes the step must move / the memory bandwidth measured in the same run,
    the better of an array copy and an in-place rewrite).
    `--threads N` runs everything on N CPU threads, the floor included.

    Example: optsvc bench configs/adam.cfg configs/lion.cfg -w W2 W3 --threads 2
    """
    try:
        configs, workloads = _split_workloads(config or [], workload or [])
        rows = run_bench(
            configs or None,
            gpu_id=gpu,
            workloads=tuple(workloads or WORKLOADS["cpu"]),
            repeat=repeat,
            include_peers=peers,
            quick=quick,
            threads=threads,
        )
    except ConfigError as error:  # as `optsvc validate` shows it
        render.fail_config(error, ", ".join(map(str, configs)))
    except (OptsvcError, ValueError, RuntimeError, ImportError) as error:
        # OptsvcError: no GPU (DeviceError); ValueError: an unknown workload;
        # RuntimeError / ImportError: what the peers' libraries raise.
        render.fail(str(error))
    _report(rows, configs, gpu, peers, output_format)


def _report(rows, configs, gpu: int, peers: bool, output_format: BenchFormat) -> None:
    """The rows as JSON or a table, and a line for each skipped peer."""
    skipped = []
    if peers and rows:  # a line for each peer that cannot run an optimizer
        from optsvc.bench import optimizer_builds

        builds = optimizer_builds(configs or None)
        lines = (line for build in builds for line in peer_skips(build()))
        skipped = list(dict.fromkeys(lines))
    if output_format is BenchFormat.json:
        report = {"optsvc": optsvc.__version__, "machine": machine(gpu), "rows": rows}
        if peers:
            report["skipped"] = skipped
        typer.echo(render.json_text(report, indent=2))
    else:
        console = Console(highlight=False)
        console.print(rows_table(rows))
        for line in skipped:
            console.print(line, markup=False)


def _split_workloads(args: list[Path], workloads: list[str]):
    """(configs, workload names). `--workload W2 W3` leaves W3 among the
    arguments: a workload name that is not a file is a workload. Commas
    separate names too (W2,W3)."""
    names = [n.strip() for w in workloads for n in w.split(",") if n.strip()]
    configs = []
    for arg in args:
        parts = [n.strip() for n in str(arg).split(",") if n.strip()]
        if not arg.exists() and parts and all(_is_workload(n) for n in parts):
            names += parts
        else:
            configs.append(arg)
    names = [n.upper() if _is_workload(n) else n for n in names]
    return configs, names


def _is_workload(name: str) -> bool:
    return name.upper() in WORKLOADS["cpu"]


if __name__ == "__main__":  # python -m optsvc_cli.bench ...
    typer.run(bench)
