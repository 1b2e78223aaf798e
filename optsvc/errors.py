"""The base of every error that a user's input can cause.

Each layer raises its own subclass (`ConfigError`, `StateError`,
`CheckpointError`, `RunError`, ...); front ends catch `OptsvcError` alone and
show its message, which is written for the user: what is wrong and the fix.
"""

from __future__ import annotations


class OptsvcError(Exception):
    """A problem with the user's input or files, explained in its message."""


__all__ = ["OptsvcError"]
