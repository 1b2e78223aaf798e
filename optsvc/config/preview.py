"""The values each scheduled hyperparameter takes over the steps: what
`optsvc show-schedule` prints, and what `optsvc validate` warns about."""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from optsvc.config.parse import ConfigError, ConfigIssue
from optsvc.fileio import TEXT_LIMIT, FileReadError, read_regular
from optsvc.optim import Optimizer
from optsvc.schedules.base import Schedule

# Attribute names of a hyperparameter on the optimizer, by argument name.
ATTRS = {"learn_rate": "learn_rate", "L2": "L2", "beta1": "b1", "beta2": "b2",
         "eps": "eps", "grad_clip": "grad_clip"}  # fmt: skip
DEFAULT_HORIZON = 1000


def scheduled(optimizer: Optimizer) -> list[str]:
    """The hyperparameters whose schedule is not a constant."""
    return [n for n, s in optimizer.schedules.items() if s.name != "constant"]


def horizon(schedule: Schedule) -> int | None:
    """A schedule's own length (total_steps, num_steps, ...), if it has one."""
    best = None
    for key, value in schedule.attrs.items():
        if isinstance(value, Schedule):
            inner = horizon(value)
            best = inner if best is None else max(best, inner or 0)
        elif key in ("total_steps", "num_steps") and isinstance(value, int):
            best = value if best is None else max(best, value)
        elif key == "values" and schedule.name == "list":
            best = len(value) if best is None else max(best, len(value))
    return best


def default_steps(config: dict, optimizer: Optimizer, params: Iterable[str]) -> int:
    """training.max_steps, else the schedules' own horizon, else 1000.
    (spaCy's max_steps = 0 means "no limit": the schedules' horizon then.)"""
    training = config.get("training")
    max_steps = training.get("max_steps") if isinstance(training, dict) else None
    if isinstance(max_steps, int) and not isinstance(max_steps, bool) and max_steps > 0:
        return max_steps
    ends = [horizon(optimizer.schedules[p]) for p in params]
    ends = [e for e in ends if e]
    return max(ends) if ends else DEFAULT_HORIZON


def read_scores(path: str | Path) -> dict[int, float]:
    """Scores by step from a run's metrics.jsonl (lines with step and score)."""
    scores: dict[int, float] = {}
    try:
        data = read_regular(path, TEXT_LIMIT, "scores file")
        lines = data.decode("utf8").splitlines()
    except FileReadError as err:
        raise ConfigError(str(err)) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read scores from '{path}': {err}") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if isinstance(row, dict) and "status" in row and "step" not in row:
                continue  # a run's record that it failed, not a score
            step, score = row["step"], row["score"]
        except (ValueError, KeyError, TypeError, RecursionError):
            raise ConfigError(
                f"{path}, line {i}: expected a JSON object with 'step' and 'score'"
            ) from None
        if isinstance(step, int) and isinstance(score, (int, float)):
            scores[step] = float(score)
    return scores


def schedule_values(
    optimizer: Optimizer,
    steps: int,
    params: Iterable[str],
    scores: dict[int, float] | None = None,
) -> dict[str, list[float]]:
    """Each of `params` at steps 0 .. steps - 1, stepping `optimizer` as a
    training loop would (scores, if given, are set as `last_score` at their
    step, so `plateau` reacts as in the run)."""
    params = list(params)
    values: dict[str, list[float]] = {p: [] for p in params}
    scores = scores or {}
    for step in range(steps):
        if step in scores:
            optimizer.last_score = (step, scores[step])
        for p in params:
            try:
                values[p].append(getattr(optimizer, ATTRS[p]))
            except (ValueError, ArithmeticError) as err:
                reason = str(err) if isinstance(err, ValueError) else "it overflows"
                raise ConfigError(
                    f"the schedule of '{p}' fails at step {step}: {reason}; "
                    "show fewer steps (--steps) or fix the schedule"
                ) from None
        optimizer.step_schedules()
    return values


def dead_schedule_warnings(
    optimizer: Optimizer, opt_path: str, max_steps: int
) -> list[ConfigIssue]:
    """A warning when learn_rate is 0 from some step on, long before
    `max_steps`; a ConfigError when a schedule fails before `max_steps`.
    Reads the schedules (at most 2000 evenly spaced steps), not the optimizer,
    whose step it leaves alone."""
    stride = max(1, max_steps // 2000)
    schedules = {n: s for n, s in optimizer.schedules.items() if s.name != "constant"}
    learn_rate = optimizer.schedules["learn_rate"]
    last_live = -1
    for step in range(0, max_steps, stride) if schedules else ():
        for name, schedule in schedules.items():
            reason = _failure(schedule, name, step)
            if reason:
                raise ConfigError(
                    ConfigIssue(
                        opt_path,
                        f"a schedule fails at step {step}, before "
                        f"training.max_steps ({max_steps}): {reason}",
                    )
                )
        if learn_rate(step, key=None, last_score=None) > 0:
            last_live = step
    dead_from = last_live + stride
    if last_live >= 0 and 10 * dead_from < 9 * max_steps:
        return [
            ConfigIssue(
                f"{opt_path}.learn_rate",
                f"reaches 0 at about step {dead_from}, long before "
                f"training.max_steps ({max_steps}); the steps after that will not "
                "change the weights",
            )
        ]
    return []


def _failure(schedule: Schedule, name: str, step: int) -> str | None:
    """Why a hyperparameter's schedule gives no usable value at `step`."""
    try:
        value = schedule(step, key=None, last_score=None)
    except ValueError as err:
        return str(err)
    except ArithmeticError:
        return "the value overflows"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return f"'{name}' schedule gave {value!r}; expected a number"
    if not math.isfinite(value):
        return f"'{name}' must be finite, got {value!r}"
    return None


def describe(schedule: Schedule) -> str:
    """A one-line description: `warmup_linear(initial_rate=0.001, ...)`."""
    if schedule.name == "constant":
        return repr(schedule.attrs["rate"])
    parts = []
    for key, value in schedule.attrs.items():
        if key == "state":
            continue
        shown = describe(value) if isinstance(value, Schedule) else repr(value)
        parts.append(f"{key}={shown}")
    return f"{schedule.name}({', '.join(parts)})"


def as_rows(values: dict[str, list[float]]) -> list[dict[str, Any]]:
    n = len(next(iter(values.values()), []))
    return [{"step": i, **{p: v[i] for p, v in values.items()}} for i in range(n)]
