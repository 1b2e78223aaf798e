"""Running a planned sweep: prepare the folder, pick the engine, run the
trials that are not done, and write the results."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from optsvc.errors import ConfigError, MissingExtraError
from optsvc.sweep.folder import prepare_folder
from optsvc.sweep.plan import SweepPlan
from optsvc.sweep.ray_runner import RAY_EXTRA, ray_available, run_ray
from optsvc.sweep.results import DONE, FAILED, Tracker, TrialRow, read_results
from optsvc.sweep.serial import run_serial

ENGINES = ("auto", "ray", "serial")
METRICS = {"score": "max", "loss": "min"}


@dataclass
class SweepOutcome:
    """How a sweep ended: every trial's row, the best one, and whether it
    was interrupted."""

    rows: list[TrialRow]
    best: TrialRow | None
    interrupted: bool
    engine: str

    @property
    def failed(self) -> list[TrialRow]:
        return [r for r in self.rows if r.status == FAILED]

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(r.status in DONE for r in self.rows)


def choose_engine(engine: str, address: str | None) -> str:
    """'ray' or 'serial' for `engine` ('auto': Ray when it is installed)."""
    if engine not in ENGINES:
        raise ConfigError(
            f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}"
        )
    if engine == "auto":
        engine = "ray" if ray_available() or address else "serial"
    if engine == "ray" and not ray_available():
        raise MissingExtraError(f"Ray Tune is not installed; {RAY_EXTRA}")
    if engine == "serial" and address:
        raise ConfigError(
            "--address runs a sweep on a Ray cluster; drop --engine serial"
        )
    return engine


def run_sweep(
    plan: SweepPlan,
    out: str | Path,
    *,
    engine: str = "auto",
    resume: bool = False,
    metric: str = "score",
    mode: str | None = None,
    workers: int | None = None,
    gpus_per_trial: float = 0,
    retries: int = 0,
    address: str | None = None,
    early_stop: bool = False,
    on_change: Callable[[TrialRow], None] | None = None,
) -> SweepOutcome:
    """Run (or, with `resume`, continue) the sweep `plan` in the folder `out`.

    Trials already finished (or stopped early) are not run again; the others
    start, or continue from their last checkpoint.
    """
    out = Path(out)
    engine = choose_engine(engine, address)
    mode = _check_options(metric, mode, workers, gpus_per_trial, retries)
    if early_stop and engine == "serial":
        raise MissingExtraError(f"--early-stop needs Ray Tune; {RAY_EXTRA}")
    prepare_folder(out, plan, resume=resume)
    tracker = Tracker(out, plan, metric, mode, on_change)
    if resume:
        tracker.restore(read_results(out))
    todo = [t for t in plan.trials if tracker.rows[t.name].status not in DONE]
    tracker.save(force=True)
    interrupted = False
    try:
        if todo and engine == "serial":
            run_serial(todo, tracker, retries=retries, gpu=gpus_per_trial > 0)
        elif todo:
            interrupted = run_ray(
                todo, tracker, workers=workers, gpus_per_trial=gpus_per_trial,
                retries=retries, address=address, early_stop=early_stop,
            )  # fmt: skip
    except KeyboardInterrupt:
        tracker.interrupt()
        interrupted = True
    finally:
        tracker.save(force=True)
    return SweepOutcome(
        list(tracker.rows.values()), tracker.best(), interrupted, engine
    )


def _check_options(metric, mode, workers, gpus_per_trial, retries) -> str:
    if metric not in METRICS:
        raise ConfigError(f"--metric must be score or loss, got {metric!r}")
    mode = mode or METRICS[metric]
    if mode not in ("max", "min"):
        raise ConfigError(f"--mode must be max or min, got {mode!r}")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if gpus_per_trial < 0:
        raise ConfigError(f"--gpus-per-trial must be >= 0, got {gpus_per_trial}")
    if retries < 0:
        raise ConfigError(f"--retries must be >= 0, got {retries}")
    return mode
