"""`optsvc`: the command line, a thin Typer layer over the optsvc library."""

from __future__ import annotations

from typing import Annotated

import typer

import optsvc

app = typer.Typer(
    name="optsvc",
    help=(
        "Configuration-driven, Thinc-compatible optimizers.\n\n"
        "The train, validate and show-schedule commands are still being built; "
        "today this command reports the installed version."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


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


@app.command("registry")
def registry_cmd() -> None:
    """List the registered optimizers and schedules.

    Example: optsvc registry
    """
    for name in ("optimizers", "schedules"):
        reg = getattr(optsvc.registry, name)
        typer.echo(f"{name}: " + ", ".join(sorted(reg.get_all())))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
