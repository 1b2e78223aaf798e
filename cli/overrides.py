"""The config overrides among a command's extra arguments."""

from __future__ import annotations

import difflib

import typer

from optsvc.config import parse_overrides


def overrides(ctx: typer.Context, args: list[str] | None = None) -> dict:
    """The dotted config overrides among a command's extra arguments; a
    `--word` without a dot that is close to one of the command's options is
    a misspelt option: Click's usage error (exit 2), with the option meant."""
    args = ctx.args if args is None else args
    options = [o for p in ctx.command.params for o in p.opts if o.startswith("--")]
    for arg in args:
        name = arg.partition("=")[0]
        if name.startswith("--") and "." not in name:
            close = difflib.get_close_matches(name, options, n=1, cutoff=0.7)
            if close:
                ctx.fail(f"No such option: {name} (did you mean {close[0]}?)")
    return parse_overrides(args)
