"""The serial runner: the sweep's trials one after another in this process,
for machines without Ray. Same trial folders, retries and results as the Ray
runner."""

from __future__ import annotations

from collections.abc import Sequence

from optsvc.sweep.plan import Trial
from optsvc.sweep.results import FAILED, FINISHED, Tracker
from optsvc.sweep.trial import run_trial


def run_serial(
    trials: Sequence[Trial], tracker: Tracker, *, retries: int = 0, gpu: bool = False
) -> None:
    """Run `trials` in order, each retried up to `retries` times from its last
    checkpoint. Ctrl-C (KeyboardInterrupt) goes through to run_sweep, which
    marks the unfinished trials as interrupted."""
    for trial in trials:
        name = trial.name
        tracker.start(name)
        for attempt in range(retries + 1):
            run = run_trial(
                tracker.folder(name),
                gpu=gpu,
                on_row=lambda row, name=name: tracker.progress(name, row),
            )
            if run.ok:
                tracker.end(name, FINISHED)
                break
            if attempt < retries:
                tracker.retry(name, run.error)
        else:
            tracker.end(name, FAILED, run.error)
