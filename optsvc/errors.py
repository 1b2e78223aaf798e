"""optsvc's errors: one base and five kinds, by what the user must fix.

The same mistake raises the same type whether it comes from Python, a config
file or the command line; front ends catch `OptsvcError` alone and show its
message, which says what is wrong and the fix.

- `ConfigError`: a value optsvc does not accept (a config entry, an override,
  an argument from Python, a sweep's grid). `.issues` lists each problem with
  its dotted config path.
- `StateError`: bytes or a file that cannot be written or read back (a
  checkpoint, an optimizer's saved state, a weights file, a file that is not
  regular or too large), or that do not fit what they are loaded into.
- `RunError`: a run, a run folder or a sweep folder that cannot be used as
  asked (in use by another process, nothing to resume, no weights yet).
- `DeviceError`: the GPU asked for cannot be used.
- `MissingExtraError`: an optional extra is not installed; the message names it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class OptsvcError(Exception):
    """A problem with the user's input or files, explained in its message."""


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config: where, what was given, and what is expected."""

    path: str
    message: str
    value: Any = None
    has_value: bool = False
    hint: str = ""

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        if self.has_value:
            text += f", got {show_value(self.value)}"
        if self.hint:
            text += f" ({self.hint})"
        return text


class ConfigError(OptsvcError, ValueError):
    """A value that optsvc does not accept; `.issues` lists every problem."""

    def __init__(self, issues: Sequence[ConfigIssue] | ConfigIssue | str):
        if isinstance(issues, str):
            issues = [ConfigIssue("", issues)]
        elif isinstance(issues, ConfigIssue):
            issues = [issues]
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


class StateError(OptsvcError, ValueError):
    """Saved state or a file that cannot be written, read back or used."""


class RunError(OptsvcError, RuntimeError):
    """A run or a folder that cannot be used as asked, with the fix."""


class DeviceError(OptsvcError, RuntimeError):
    """The GPU asked for cannot be used (no cupy, or no such device)."""


class MissingExtraError(OptsvcError, ImportError):
    """An optional extra that a feature needs is not installed."""


def missing_extra(extra: str, module: str, what: str) -> MissingExtraError:
    """The error for `what` needing `module` from the optional `extra`."""
    return MissingExtraError(
        f"{what} needs {module}, which is not installed: pip install 'optsvc[{extra}]'"
    )


def show_value(value: Any) -> str:
    """A value for a message, as a config writes it, cut to a readable length."""
    if isinstance(value, dict):
        return "a section"
    try:
        if isinstance(value, (str, list, bool)) or value is None:
            text = json.dumps(value)  # as configs write them: "a", [1, 2], true, null
        else:
            text = repr(value)
    except (ValueError, RecursionError):  # e.g. a list that holds itself
        text = "a value that refers to itself"
    return text if len(text) <= 80 else text[:77] + "..."


__all__ = [
    "OptsvcError",
    "ConfigIssue",
    "ConfigError",
    "StateError",
    "RunError",
    "DeviceError",
    "MissingExtraError",
    "missing_extra",
    "show_value",
]
