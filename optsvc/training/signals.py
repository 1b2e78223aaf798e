"""Ctrl-C and SIGTERM during training: the first asks the loop to stop after
the step it is in (a checkpoint is then written and the run says how to go
on); a second Ctrl-C stops at once, leaving the last good checkpoint.

A batch scheduler's SIGTERM before preemption gets the same treatment.
"""

from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
    """The run stopped on a signal after saving a checkpoint; the message was
    already shown. `exit_code` is the shell's convention: 128 + the signal."""

    def __init__(self, signum: int, step: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}")
        self.exit_code = 128 + signum


class StoppedAtOnce(KeyboardInterrupt):
    """A second signal: the run stops where it is (its last checkpoint
    stands). `exit_code` is 128 + that signal."""

    def __init__(self, signum: int) -> None:
        name = signal.Signals(signum).name
        super().__init__(f"stopped at once by a second signal ({name})")
        self.exit_code = 128 + signum


class StopOnSignal:
    """While active (a `with` block in the main thread), SIGINT and SIGTERM set
    `signum` instead of stopping the process; a second signal raises
    StoppedAtOnce (a KeyboardInterrupt) at once. Elsewhere it does nothing:
    signals can only be caught in the main thread."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            raise StoppedAtOnce(signum)
        self.signum = signum

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()


__all__ = ["StopOnSignal", "StoppedAtOnce", "TrainingInterrupted"]
