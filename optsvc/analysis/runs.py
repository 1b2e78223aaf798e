"""Finished and ongoing runs, read from their folders.

A run folder is what `optsvc train CONFIG -o DIR` writes: `config.cfg` (the
filled config), `metrics.jsonl` (one JSON object per evaluation),
`checkpoints/step-NNNNNNNN/` (each with `manifest.json` and `state.json`),
`final.npz` at the end, and `.lock`, an advisory lock held by the live
training process. The folder is the whole interface: nothing here imports the
training loop, and missing or extra fields are tolerated, so runs written by
older or newer versions of optsvc still list.

Status, in this order:

- running: the `.lock` is held by a live process (the kernel drops the lock
  when the process dies, so a killed run never looks like a running one);
- finished: `final.npz` exists;
- failed: the run recorded a failure (a `status` of "failed" or an `error` in
  metrics.jsonl or the latest checkpoint's state.json);
- interrupted: a checkpoint exists, so `optsvc train --resume` continues it;
- failed: nothing to resume from.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from optsvc.config import ConfigError, load_config
from optsvc.errors import RunError, StateError
from optsvc.fileio import TEXT_LIMIT, read_regular
from optsvc.training.lock import lock_holder

# Any of these makes a folder a run (`optsvc train` writes config.cfg first);
# `.lock` alone only while it is held: a run that has not written it yet. A
# metrics.jsonl alone is not enough: `show-schedule --scores` reads copies.
RUN_MARKERS = ("config.cfg", "checkpoints", "final.npz")
STATUSES = ("running", "finished", "interrupted", "failed")
CHECKPOINT_PREFIX = "step-"


@dataclass
class RunSummary:
    """One run as `optsvc runs` lists it.

    `wall_time_s` is the sum of the evaluation intervals in metrics.jsonl
    (steps between two evaluations / their steps_per_sec) when every row has
    steps_per_sec, so it spans resumed sessions (`wall_time_from` is
    "metrics"); otherwise the time from config.cfg's modification (written
    when a session starts) to the newest file of the run ("files").
    """

    path: Path
    name: str
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
        out = asdict(self)
        out["path"] = str(self.path)
        return out


# --- finding runs ---------------------------------------------------------------


def is_run(folder: Path) -> bool:
    """Whether `folder` holds a run (or one being started)."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    if any((folder / name).exists() for name in RUN_MARKERS):
        return True
    return lock_held(folder) is True


def find_runs(root: str | os.PathLike) -> list[Path]:
    """Every run folder at or under `root`, sorted by path: a sweep's
    `trials/*/` included. Hidden folders, symbolic links to folders and the
    runs' own checkpoints are not searched."""
    root = Path(root)
    if not root.is_dir():
        raise RunError(f"'{root}' is not a folder; give a folder that holds runs")
    found = []
    for here, dirs, _files in os.walk(root, onerror=None, followlinks=False):
        path = Path(here)
        run = is_run(path)
        if run:
            found.append(path)
        dirs[:] = sorted(
            d
            for d in dirs
            if not d.startswith(".") and not (run and d == "checkpoints")
        )
    return sorted(found)


def expand_runs(paths: list[str | os.PathLike]) -> list[Path]:
    """Each path as a run, or the runs under it (a sweep folder); in order,
    without repeats. RunError for a path that holds none."""
    out: list[Path] = []
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise RunError(f"'{path}' does not exist; check the path")
        runs = [path] if is_run(path) else find_runs(path)
        if not runs:
            raise RunError(
                f"'{path}' holds no run (no config.cfg, checkpoints or final.npz); "
                "give a folder written by optsvc train, or one that holds such folders"
            )
        out += [r for r in runs if r not in out]
    return out


# --- reading one run ------------------------------------------------------------


def lock_held(folder: Path) -> bool | None:
    """Whether a live process holds the run's lock: True, False, or None when
    the lock file cannot be read. Never creates the file; a shared lock is
    tried and released at once, so a training process is not kept waiting."""
    try:
        fd = os.open(Path(folder) / ".lock", os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as err:
        return True if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN) else None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def read_records(run: str | os.PathLike) -> list[dict[str, Any]]:
    """Every JSON object in metrics.jsonl, in order; lines torn by a kill are
    skipped."""
    try:
        data = read_regular(Path(run) / "metrics.jsonl", TEXT_LIMIT, "metrics log")
        text = data.decode("utf8")
    except (StateError, UnicodeDecodeError):
        return []
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def read_metrics(run: str | os.PathLike) -> list[dict[str, Any]]:
    """The evaluation rows of metrics.jsonl: its objects that have a step."""
    return [r for r in read_records(run) if _number(r.get("step")) is not None]


def latest_state(run: str | os.PathLike) -> dict[str, Any] | None:
    """The state.json of the newest checkpoint that has a manifest, or None."""
    folder = Path(run) / "checkpoints"
    try:
        names = sorted(
            (p.name for p in folder.iterdir() if p.name.startswith(CHECKPOINT_PREFIX)),
            reverse=True,
        )
    except OSError:
        return None
    for name in names:
        if not (folder / name / "manifest.json").is_file():
            continue  # not a complete checkpoint
        try:
            state = json.loads((folder / name / "state.json").read_text("utf8"))
        except (OSError, ValueError):
            continue
        if isinstance(state, dict):
            return state
    return None


def read_config(run: str | os.PathLike) -> dict[str, Any] | None:
    """The run's filled config, or None when it is missing or unreadable."""
    path = Path(run) / "config.cfg"
    if not path.is_file():
        return None
    try:
        return dict(load_config(path))
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
    run = Path(run)
    config = read_config(run)
    records = read_records(run)
    rows = [r for r in records if _number(r.get("step")) is not None]
    state = latest_state(run)
    summary = RunSummary(path=run, name=name or run.name)
    summary.config = _describe_job(config)
    summary.optimizer = _describe_optimizer(config)
    summary.status, summary.note = _status(run, records, state)
    summary.max_steps = _max_steps(config, state)
    summary.steps = _steps_done(rows, state)
    scores = [s for s in (_number(r.get("score")) for r in rows) if s is not None]
    if scores:
        summary.best_score, summary.last_score = max(scores), scores[-1]
    elif state:
        summary.best_score = _number(state.get("best_score"))
        summary.last_score = _number(state.get("score"))
    losses = [x for x in (_number(r.get("loss")) for r in rows) if x is not None]
    summary.final_loss = losses[-1] if losses else None
    summary.wall_time_s, summary.wall_time_from = _wall_time(run, rows)
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


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


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


def _failure(records: list[dict[str, Any]], state: dict[str, Any] | None) -> str | None:
    """The failure a run recorded, as a message, or None."""
    for record in [*reversed(records), state or {}]:
        if record.get("status") == "failed" or record.get("error"):
            return str(record.get("error") or record.get("reason") or "failed")
    return None


def _status(
    run: Path, records: list[dict[str, Any]], state: dict[str, Any] | None
) -> tuple[str, str]:
    held = lock_held(run)
    if held:
        return "running", _holder(run)
    note = "" if held is False else "the lock file cannot be read"
    if (run / "final.npz").exists():
        ended = _ended_early(state)
        return "finished", "; ".join(n for n in (note, ended) if n)
    failure = _failure(records, state)
    if failure:
        return "failed", failure
    if state is not None:
        return "interrupted", note
    return "failed", note or "ended before its first checkpoint"


def _holder(run: Path) -> str:
    text = lock_holder(run)
    pid = text.strip()
    return f"pid {pid}" if text.isascii() and pid.isdigit() else ""


def _ended_early(state: dict[str, Any] | None) -> str:
    if not state:
        return ""
    reason = state.get("stop_reason") or state.get("end_reason")
    if reason:
        return str(reason)
    return "stopped early" if state.get("stopped_early") is True else ""


def _max_steps(
    config: dict[str, Any] | None, state: dict[str, Any] | None
) -> int | None:
    training = (config or {}).get("training")
    if isinstance(training, dict) and isinstance(training.get("max_steps"), int):
        return training["max_steps"]
    value = (state or {}).get("max_steps")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _steps_done(rows: list[dict[str, Any]], state: dict[str, Any] | None) -> int | None:
    steps = [int(r["step"]) for r in rows]
    saved = (state or {}).get("step")
    if isinstance(saved, int) and not isinstance(saved, bool):
        steps.append(saved)
    return max(steps) if steps else None


def _wall_time(
    run: Path, rows: list[dict[str, Any]]
) -> tuple[float | None, str | None]:
    total, previous = 0.0, 0
    for row in rows:
        rate = _number(row.get("steps_per_sec"))
        if rate is None or rate <= 0:
            break
        total += max(int(row["step"]) - previous, 0) / rate
        previous = int(row["step"])
    else:
        if rows:
            return total, "metrics"
    return _file_time(run)


def _file_time(run: Path) -> tuple[float | None, str | None]:
    try:
        start = (run / "config.cfg").stat().st_mtime
    except OSError:
        return None, None
    ends = []
    for name in ("metrics.jsonl", "final.npz", "checkpoints"):
        try:
            ends.append((run / name).stat().st_mtime)
        except OSError:
            pass
    if not ends:  # nothing written after the config: no time to tell
        return None, None
    return max(max(ends) - start, 0.0), "files"
