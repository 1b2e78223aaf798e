"""The sweep folder: `sweep.json` (the planned trials), `trials/<name>/` (one
ordinary optsvc run folder per trial, its config.cfg written before anything
runs) and the results. Starting a sweep refuses a folder that holds one;
`--resume` refuses a folder whose sweep is not the one planned now."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from optsvc.about import __version__
from optsvc.errors import RunError, StateError
from optsvc.fileio import TEXT_LIMIT, read_regular, write_atomic
from optsvc.records import Count, Record
from optsvc.sweep.plan import SweepPlan
from optsvc.training.run_folder import RunFolder

SWEEP_FILE = "sweep.json"
TRIALS = "trials"


class PlannedTrial(Record):
    index: Count
    name: str
    values: dict[str, Any]
    config_sha256: str


class SweepRecord(Record):
    """sweep.json: the trials as planned, so that --resume continues only
    the sweep it started."""

    optsvc: str
    request: dict[str, Any]
    paths: list[str]
    trials: list[PlannedTrial]


def prepare_folder(out: Path, plan: SweepPlan, *, resume: bool) -> None:
    """Create the sweep folder and every trial's config.cfg, or check with
    `resume` that the folder holds this same sweep."""
    planned = [
        PlannedTrial(
            index=t.index,
            name=t.name,
            values=t.values,
            config_sha256=hashlib.sha256(t.config.encode()).hexdigest(),
        )
        for t in plan.trials
    ]
    sweep_file = out / SWEEP_FILE
    if out.exists() and not out.is_dir():
        raise RunError(f"output path '{out}' is a file; give a folder with -o")
    if resume:
        if not sweep_file.exists():
            raise RunError(
                f"'{out}' holds no sweep to resume; run the command without "
                "--resume to start one"
            )
        _check_same(sweep_file, planned, out)
    elif sweep_file.exists() or (out / TRIALS).exists():
        raise RunError(
            f"'{out}' already holds a sweep; add --resume to continue it, or "
            "choose another folder with -o"
        )
    else:
        out.mkdir(parents=True, exist_ok=True)
        record = SweepRecord(
            optsvc=__version__, request=plan.request, paths=plan.paths, trials=planned
        )
        write_atomic(sweep_file, record.to_json())
    for trial in plan.trials:
        run = RunFolder(out / TRIALS / trial.name)
        run.path.mkdir(parents=True, exist_ok=True)
        if not run.config_file.exists():
            run.write_mark("planned")
            write_atomic(run.config_file, trial.config.encode())


def _check_same(sweep_file: Path, planned: list[PlannedTrial], out: Path) -> None:
    try:
        data = read_regular(sweep_file, TEXT_LIMIT, SWEEP_FILE)
        saved = SweepRecord.parse(data, f"'{sweep_file}'").trials
    except StateError as err:
        raise RunError(
            f"cannot read '{sweep_file}' ({err}); start the sweep again in "
            "another folder with -o"
        ) from None
    if saved == planned:
        return
    if len(saved) != len(planned):
        why = f"it has {len(saved)} trials, this command plans {len(planned)}"
    else:
        old, new = next((a, b) for a, b in zip(saved, planned) if a != b)
        if old.name != new.name:
            why = f"trial {new.index} was {old.name}, now {new.name}"
        else:
            why = f"the config of trial {new.name} is not the same"
    raise RunError(
        f"the sweep in '{out}' was started with another config or other --grid/"
        f"--sample values ({why}); run the same command with --resume, or start "
        "a new sweep in another folder with -o"
    )
