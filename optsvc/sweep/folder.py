"""The sweep folder: `sweep.json` (the planned trials), `trials/<name>/` (one
ordinary optsvc run folder per trial, its config.cfg written before anything
runs) and the results. Starting a sweep refuses a folder that holds one;
`--resume` refuses a folder whose sweep is not the one planned now."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from optsvc.about import __version__
from optsvc.errors import RunError
from optsvc.fileio import write_atomic
from optsvc.sweep.plan import SweepPlan
from optsvc.training.run_folder import RunFolder

SWEEP_FILE = "sweep.json"
TRIALS = "trials"


def _trial_records(plan: SweepPlan) -> list[dict[str, Any]]:
    return [
        {
            "index": t.index,
            "name": t.name,
            "values": t.values,
            "config_sha256": hashlib.sha256(t.config.encode()).hexdigest(),
        }
        for t in plan.trials
    ]


def prepare_folder(out: Path, plan: SweepPlan, *, resume: bool) -> None:
    """Create the sweep folder and every trial's config.cfg, or check with
    `resume` that the folder holds this same sweep."""
    records = json.loads(json.dumps(_trial_records(plan)))  # as read back
    sweep_file = out / SWEEP_FILE
    if out.exists() and not out.is_dir():
        raise RunError(f"output path '{out}' is a file; give a folder with -o")
    if resume:
        if not sweep_file.exists():
            raise RunError(
                f"'{out}' holds no sweep to resume; run the command without "
                "--resume to start one"
            )
        _check_same(sweep_file, records, out)
    elif sweep_file.exists() or (out / TRIALS).exists():
        raise RunError(
            f"'{out}' already holds a sweep; add --resume to continue it, or "
            "choose another folder with -o"
        )
    else:
        out.mkdir(parents=True, exist_ok=True)
        document = {
            "optsvc": __version__,
            "request": plan.request,
            "paths": plan.paths,
            "trials": records,
        }
        write_atomic(sweep_file, (json.dumps(document, indent=1) + "\n").encode())
    for trial in plan.trials:
        run = RunFolder(out / TRIALS / trial.name)
        run.path.mkdir(parents=True, exist_ok=True)
        if not run.config_file.exists():
            write_atomic(run.config_file, trial.config.encode())


def _check_same(sweep_file: Path, records: list[dict], out: Path) -> None:
    try:
        saved = json.loads(sweep_file.read_text(encoding="utf8"))["trials"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise RunError(
            f"cannot read '{sweep_file}' ({err}); start the sweep again in "
            "another folder with -o"
        ) from None
    if saved == records:
        return
    if len(saved) != len(records):
        why = f"it has {len(saved)} trials, this command plans {len(records)}"
    else:
        old, new = next((a, b) for a, b in zip(saved, records) if a != b)
        if old.get("name") != new["name"]:
            why = f"trial {new['index']} was {old.get('name')}, now {new['name']}"
        else:
            why = f"the config of trial {new['name']} is not the same"
    raise RunError(
        f"the sweep in '{out}' was started with another config or other --grid/"
        f"--sample values ({why}); run the same command with --resume, or start "
        "a new sweep in another folder with -o"
    )
