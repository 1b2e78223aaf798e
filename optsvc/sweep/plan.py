"""A sweep's trials: the grid's cartesian product, repeated `samples` times
with random draws and seeds, each point a complete training config that has
passed the same validation as `optsvc validate`, all before anything runs."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from optsvc.analysis.runs import short_keys
from optsvc.config import (
    ConfigError,
    ConfigIssue,
    config_from_str,
    config_to_str,
    read_config_text,
    validate_config,
)
from optsvc.config.parse import variable_users
from optsvc.sweep.space import Distribution, parse_grid, parse_sample
from optsvc.training.state import with_defaults

MAX_TRIALS = 10_000
SEED_PATH = "system.seed"


@dataclass(frozen=True)
class Trial:
    """One point of a sweep: its folder name, the values it sets (dotted
    path -> value) and the filled config that `optsvc train` runs."""

    index: int
    name: str
    values: dict[str, Any]
    config: str
    max_steps: int
    eval_frequency: int


@dataclass
class SweepPlan:
    """Every trial of a sweep, in order, and what was asked for."""

    paths: list[str]
    trials: list[Trial]
    request: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def plan_sweep(
    config: str | Path,
    *,
    grid: Sequence[str] = (),
    sample: Sequence[str] = (),
    samples: int = 1,
    overrides: dict[str, Any] | None = None,
    on_trial: Callable[[int, int], None] | None = None,
) -> SweepPlan:
    """Expand `--grid`/`--sample`/`--samples` over a config and validate every
    trial; ConfigError lists each invalid point's problems with their paths.
    `on_trial(done, total)` follows the validation (seconds for thousands).

    >>> plan = plan_sweep("configs/quickstart.cfg", grid=["optimizer.beta1=0.8,0.9"])
    >>> [t.name for t in plan.trials]
    ['0-beta1=0.8', '1-beta1=0.9']
    """
    overrides = dict(overrides or {})
    grids = [parse_grid(g) for g in grid]
    draws = [parse_sample(s) for s in sample]
    paths = _check_paths(grids, draws, samples, overrides)
    # Read once: every trial is built from the same text (as load_config
    # would build it from the file).
    text = read_config_text(config)
    source = str(Path(config))
    base = config_from_str(text, overrides, source=source)
    seed = base.get("system", {}).get("seed", 0)  # checked with each trial below
    seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else 0
    points = _points(grids, draws, samples, seed)
    names = _names(points, paths)
    trials, issues, warnings = [], {}, []
    for index, (values, name) in enumerate(zip(points, names)):
        trial, problems, notes = _trial(
            config, text, source, overrides, index, name, values
        )
        for problem in problems:
            issues.setdefault(str(problem), (problem, []))[1].append(index)
        warnings.extend(w for w in notes if w not in warnings)
        if trial is not None:
            trials.append(trial)
        if on_trial is not None:
            on_trial(index + 1, len(points))
    if issues:
        raise ConfigError(
            [_with_trials(issue, idx, len(points)) for issue, idx in issues.values()]
        )
    if samples > 1:
        warnings.extend(_seed_followers(text, {*overrides, *paths}))
    request = {
        "config": str(config),
        "overrides": overrides,
        "grid": [[p, v] for p, v in grids],
        "sample": [[p, str(d)] for p, d in draws],
        "samples": samples,
    }
    return SweepPlan(paths, trials, request, warnings)


def _check_paths(grids, draws, samples: int, overrides: dict) -> list[str]:
    if samples < 1:
        raise ConfigError(f"--samples must be at least 1, got {samples}")
    paths = [p for p, _ in grids] + [p for p, _ in draws]
    if not paths and samples == 1:
        raise ConfigError(
            "nothing to sweep; add --grid PATH=V1,V2,..., --sample PATH=DIST or "
            "--samples N"
        )
    twice = sorted({p for p in paths if paths.count(p) > 1})
    if twice:
        raise ConfigError(
            f"{twice[0]} is swept twice; give each path one --grid or --sample"
        )
    both = sorted(set(paths) & set(overrides))
    if both:
        raise ConfigError(
            f"{both[0]} is both swept and overridden; drop the --{both[0]} override"
        )
    if samples > 1:
        if SEED_PATH in paths or SEED_PATH in overrides:
            raise ConfigError(
                f"--samples {samples} sets {SEED_PATH} for each repeat, so it cannot "
                f"also be swept or overridden; drop one of them"
            )
        paths.append(SEED_PATH)
    return paths


def _seed_followers(text: str, given: set[str]) -> list[str]:
    """A warning for each value outside [system] that follows ${system.seed}
    (as the quickstart's data.seed does): --samples changes it too."""
    follow = [p for p in variable_users(text, SEED_PATH) if p not in given]
    return [
        f"{path} follows ${{{SEED_PATH}}}: each of --samples changes it too; "
        f"add --{path} N to keep it fixed"
        for path in follow
        if not path.startswith("system.")
    ]


def _points(grids, draws, samples: int, seed: int) -> list[dict[str, Any]]:
    combos = list(itertools.product(*(values for _, values in grids)))
    total = len(combos) * samples
    if total > MAX_TRIALS:
        raise ConfigError(
            f"the sweep has {total:,} trials, more than {MAX_TRIALS:,}; "
            "sweep fewer values, or sample them with --sample and --samples"
        )
    # Draws depend only on the seed and the order of the trials: the same
    # command gives the same trials, on any engine and when resumed.
    rng = np.random.default_rng(seed)
    points = []
    for repeat in range(samples):
        for combo in combos:
            values = {path: value for (path, _), value in zip(grids, combo)}
            values.update({path: dist.draw(rng) for path, dist in draws})
            if samples > 1:
                values[SEED_PATH] = seed + repeat
            points.append(values)
    return points


def _trial(
    config, text: str, source: str, overrides, index: int, name: str, values: dict
):
    try:
        cfg = config_from_str(text, {**overrides, **values}, source=source)
    except ConfigError as err:
        return None, err.issues, []
    report = validate_config(cfg, for_training=True)
    if report.sections.is_spacy:
        raise ConfigError(
            f"'{config}' is a spaCy config; optsvc sweep runs optsvc training "
            "configs ([system], [data], [model], [training], [optimizer])"
        )
    if not report.ok:
        return None, report.errors, []
    # Written out as `optsvc train` writes a run's config, defaults included,
    # so that the trial's own config.cfg resumes it unchanged.
    filled = config_to_str(with_defaults(cfg))
    settings = report.training
    trial = Trial(
        index, name, values, filled, settings.max_steps, settings.eval_frequency
    )
    return trial, [], [str(w) for w in report.warnings]


def _with_trials(issue: ConfigIssue, indexes: list[int], total: int) -> ConfigIssue:
    where = "trial" if len(indexes) == 1 else "trials"
    shown = ", ".join(str(i) for i in indexes[:8]) + (
        ", ..." if len(indexes) > 8 else ""
    )
    note = f"in {where} {shown} of {total}"
    hint = f"{issue.hint}; {note}" if issue.hint else note
    return replace(issue, hint=hint)


def _names(points: list[dict], paths: list[str]) -> list[str]:
    """'<index>-<slug of the values>', the index padded to sort in order."""
    width = len(str(max(len(points) - 1, 0)))
    keys = short_keys(paths)
    names = []
    for index, values in enumerate(points):
        slug = "-".join(f"{keys[p]}={_short(values[p])}" for p in paths if p in values)
        slug = re.sub(r"[^A-Za-z0-9._=+-]", "_", slug)[:60].rstrip("-_")
        names.append(f"{index:0{width}d}-{slug}" if slug else f"{index:0{width}d}")
    return names


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


__all__ = ["Trial", "SweepPlan", "plan_sweep", "Distribution"]
