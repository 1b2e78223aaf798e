"""Finished and ongoing runs, read from their folders.

A run folder is what `optsvc train CONFIG -o DIR` writes; what each of its
files holds and what the run's status is are `optsvc.training.run_folder`'s
to say (`RunFolder`): this module only gathers that into the summary
`optsvc runs` lists, finds the runs under a folder and gives the trials of a
sweep the config values that set them apart. Missing fields are tolerated,
so a run killed at any moment still lists.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from optsvc.config import ConfigError, load_config
from optsvc.errors import RunError
from optsvc.training.run_folder import RunFolder


@dataclass
class RunSummary:
    """One run as `optsvc runs` lists it.

    `wall_time_s` is the sum of the evaluation intervals in metrics.jsonl
    (steps between two evaluations / their steps_per_sec) when every row has
    steps_per_sec, so it spans resumed sessions (`wall_time_from` is
    "metrics"); otherwise the time from config.cfg's modification (written
    when a session starts) to the newest file of the run ("files").
    """

    name: str
    path: Path
    config: str = ""
    values: dict[str, Any] = field(default_factory=dict)
    optimizer: str = ""
    status: str = "failed"
    steps: int | None = None
    max_steps: int | None = None
    best_score: float | None = None
    last_score: float | None = None
    final_loss: float | None = None
    wall_time_s: float | None = None
    wall_time_from: str | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON data (the path as a string)."""
        return {**asdict(self), "path": str(self.path)}


# --- finding runs ---------------------------------------------------------------


def find_runs(root: str | os.PathLike) -> list[Path]:
    """Every run folder at or under `root`, sorted by path: a sweep's
    `trials/*/` included. Hidden folders, symbolic links to folders and the
    runs' own checkpoints are not searched."""
    root = Path(root)
    if not root.is_dir():
        raise RunError(f"'{root}' is not a folder; give a folder that holds runs")
    if not os.access(root, os.R_OK | os.X_OK):
        raise RunError(f"cannot read the folder '{root}' (permission denied)")
    found = []
    for here, dirs, _files in os.walk(root):  # links to folders are not followed
        path = Path(here)
        run = RunFolder(path).is_run()
        if run:
            found.append(path)
        skip = {"checkpoints"} if run else set()
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in skip)
    return sorted(found)


def expand_runs(paths: list[str | os.PathLike]) -> list[Path]:
    """Each path as a run, or the runs under it (a sweep folder); in order,
    without repeats. RunError for a path that holds none."""
    out: list[Path] = []
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise RunError(f"'{path}' does not exist; check the path")
        runs = [path] if RunFolder(path).is_run() else find_runs(path)
        if not runs:
            raise RunError(
                f"'{path}' holds no run (no config.cfg, checkpoints or final "
                "weights); give a folder written by optsvc train, or one that holds "
                "such folders"
            )
        out += [r for r in runs if r not in out]
    return out


# --- reading one run ------------------------------------------------------------


def read_metrics(run: str | os.PathLike) -> list[dict[str, Any]]:
    """The evaluation rows of a run's metrics.jsonl."""
    return RunFolder(run).read_metrics()[0]


def read_config(run: str | os.PathLike) -> dict[str, Any] | None:
    """The run's filled config, or None when it is missing or unreadable."""
    try:
        return dict(load_config(RunFolder(run).config_file))
    except ConfigError:
        return None


def optimizer_block(config: dict[str, Any] | None) -> dict[str, Any]:
    """The [optimizer] block (or spaCy's [training.optimizer]), or {}."""
    if not config:
        return {}
    block = config.get("optimizer")
    if not isinstance(block, dict):
        training = config.get("training")
        block = training.get("optimizer") if isinstance(training, dict) else None
    return block if isinstance(block, dict) else {}


def scheduled_params(config: dict[str, Any] | None) -> dict[str, str]:
    """Each optimizer hyperparameter that has a schedule, with its name."""
    return {
        key: str(value["@schedules"])
        for key, value in optimizer_block(config).items()
        if isinstance(value, dict) and "@schedules" in value
    }


def summarize(run: str | os.PathLike, name: str | None = None) -> RunSummary:
    """What `optsvc runs` shows of one run folder."""
    folder = RunFolder(run)
    config = read_config(run)
    rows, failure = folder.read_metrics()
    state = folder.latest_state()
    summary = RunSummary(path=folder.path, name=name or folder.path.name)
    summary.config = _describe_job(config)
    summary.optimizer = _describe_optimizer(config)
    summary.status, summary.note = folder.status(failure, state)
    summary.max_steps = _max_steps(config, state)
    steps = [r["step"] for r in rows] + ([state.step] if state else [])
    summary.steps = max(steps) if steps else None
    scores = [r["score"] for r in rows if r.get("score") is not None]
    if scores:
        summary.best_score, summary.last_score = max(scores), scores[-1]
    elif state:
        summary.best_score = state.best_score if _finite(state.best_score) else None
        summary.last_score = state.score if _finite(state.score) else None
    losses = [r["loss"] for r in rows if r.get("loss") is not None]
    summary.final_loss = losses[-1] if losses else None
    summary.wall_time_s, summary.wall_time_from = _wall_time(folder, rows)
    return summary


def list_runs(root: str | os.PathLike) -> list[RunSummary]:
    """Every run under `root` (named by its path relative to `root`), with the
    config values that differ between the trials of a sweep."""
    root = Path(root)
    runs = find_runs(root)
    values = sweep_values(runs)
    out = []
    for run in runs:
        rel = run.relative_to(root)
        summary = summarize(run, name=str(rel) if rel.parts else run.resolve().name)
        summary.values = values.get(run, {})
        out.append(summary)
    return out


# --- sweeps -------------------------------------------------------------------


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as {"section.key": value}."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def sweep_values(runs: list[Path]) -> dict[Path, dict[str, Any]]:
    """For runs that are trials of a sweep (siblings in a `trials` folder),
    the config values that differ between those siblings, by dotted path."""
    groups: dict[Path, list[Path]] = {}
    for run in runs:
        if run.parent.name == "trials":
            groups.setdefault(run.parent, []).append(run)
    out: dict[Path, dict[str, Any]] = {}
    for members in groups.values():
        flat = {run: flatten(read_config(run) or {}) for run in members}
        keys = sorted({k for values in flat.values() for k in values})
        differ = [
            k
            for k in keys
            if len({json.dumps(v.get(k), sort_keys=True) for v in flat.values()}) > 1
        ]
        for run in members:
            out[run] = {k: flat[run].get(k) for k in differ}
    return out


def short_keys(keys: list[str]) -> dict[str, str]:
    """The shortest dotted suffix of each key that no other key ends with."""
    out = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            tail = ".".join(parts[-n:])
            if not any(
                o != key and (o == tail or o.endswith("." + tail)) for o in keys
            ):
                break
        out[key] = tail
    return out


# --- the pieces of a summary ----------------------------------------------------


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _describe_job(config: dict[str, Any] | None) -> str:
    if config is None:
        return "?"
    parts = []
    for section, key in (("data", "@datasets"), ("model", "@models")):
        block = config.get(section)
        if isinstance(block, dict) and key in block:
            parts.append(str(block[key]))
    return ", ".join(parts) or "-"


def _describe_optimizer(config: dict[str, Any] | None) -> str:
    block = optimizer_block(config)
    if not block:
        return "?"
    name = str(block.get("@optimizers", "?"))
    schedules = scheduled_params(config)
    if not schedules:
        rate = block.get("learn_rate")
        return f"{name} / learn_rate {rate}" if rate is not None else name
    if list(schedules) == ["learn_rate"]:
        return f"{name} / {schedules['learn_rate']}"
    shown = ", ".join(f"{sched} ({param})" for param, sched in schedules.items())
    return f"{name} / {shown}"


def _max_steps(config: dict[str, Any] | None, state) -> int | None:
    training = (config or {}).get("training")
    value = training.get("max_steps") if isinstance(training, dict) else None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return state.max_steps if state else None


def _wall_time(
    folder: RunFolder, rows: list[dict[str, Any]]
) -> tuple[float | None, str | None]:
    total, previous = 0.0, 0
    for row in rows:
        rate = row.get("steps_per_sec")
        if rate is None or rate <= 0:
            break
        total += max(row["step"] - previous, 0) / rate
        previous = row["step"]
    else:
        if rows:
            return total, "metrics"
    return _file_time(folder)


def _file_time(folder: RunFolder) -> tuple[float | None, str | None]:
    times = {}
    for path in (folder.config_file, folder.metrics, folder.final, folder.checkpoints):
        with contextlib.suppress(OSError):  # not written, or removed meanwhile
            times[path] = path.stat().st_mtime
    start = times.pop(folder.config_file, None)
    if start is None or not times:  # nothing written after the config: no time
        return None, None
    return max(max(times.values()) - start, 0.0), "files"
