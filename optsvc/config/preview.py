"""The values each scheduled hyperparameter takes over the steps: what
`optsvc show-schedule` prints, and what `optsvc validate` warns about."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from optsvc.config.blocks import find_function
from optsvc.config.parse import ConfigError, ConfigIssue
from optsvc.config.schema import TrainingSection
from optsvc.errors import StateError
from optsvc.fileio import TEXT_LIMIT, read_regular
from optsvc.loggers.metrics import MetricsRow, read_lines
from optsvc.optim import RULES, Optimizer
from optsvc.optim.hyperparams import attribute
from optsvc.schedules.base import Schedule
from optsvc.spec import Arg, params_of

# Attribute names of a hyperparameter on the optimizer, by argument name
# (Thinc's: the betas are b1 and b2), for every rule's hyperparameters.
ATTRS = {name: attribute(name) for rule in RULES.values() for name in rule.hparams}
DEFAULT_HORIZON = 1000
DEFAULT_EVAL_FREQUENCY = TrainingSection.model_fields["eval_frequency"].default


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


def default_steps(
    config: dict, schedules: Iterable[Schedule]
) -> tuple[int, str | None]:
    """(steps, why): training.max_steps, else the schedules' own horizon,
    else 1000; `why` says which when it is not training.max_steps."""
    training = config.get("training")
    max_steps = training.get("max_steps") if isinstance(training, dict) else None
    if isinstance(max_steps, int) and max_steps > 0:
        return max_steps, None
    ends = [e for e in map(horizon, schedules) if e]
    steps = max(ends) if ends else DEFAULT_HORIZON
    why = "the schedule's own length" if ends else "the default"
    if max_steps == 0:
        return steps, f"training.max_steps is 0 (no limit): showing {why}, {steps}"
    return steps, None


def _readings(
    schedule: Schedule, name: str, steps: int
) -> list[tuple[int, float | None, str | None]]:
    """(step, value, reason) at most 2000 evenly spaced steps of `steps` and
    the last, each step read once (see `_evaluate`), up to the first step at
    which the schedule fails."""
    stride = max(1, steps // 2000)
    readings = []
    for step in dict.fromkeys([*range(0, steps, stride), steps - 1]):
        value, reason = _evaluate(schedule, name, step)
        readings.append((step, value, reason))
        if value is None:
            break
    return readings


def _range_problem(
    readings: list, schedule: Schedule, name: str, arg: Arg, every: int | None
) -> str | None:
    """What is wrong with a hyperparameter's `_readings` for its range `arg`:
    a value outside it, or a plateau whose scale can carry it out over the
    evaluations of the run; else None."""
    highest = -math.inf
    for step, value, _ in readings:
        if value is None:
            return None  # a failing schedule is reported on its own
        if not arg.in_range(value):
            return (
                f"its schedule reaches {value!r} at step {step}, but {name} must "
                f"be {arg.expected()}"
            )
        highest = max(highest, value)
    steps = readings[-1][0] + 1  # none failed: the last is the run's last step
    growth = _plateau_growth(schedule, steps, every or DEFAULT_EVAL_FREQUENCY)
    if growth is None:
        return None
    scale, plateaus = growth
    try:
        top = highest * scale**plateaus
    except OverflowError:
        top = math.inf
    if math.isfinite(top) and arg.in_range(top):
        return None
    return (
        f"a plateau with scale {scale!r} can multiply it by {scale!r}**{plateaus} "
        f"in {steps} steps (an evaluation every {every or DEFAULT_EVAL_FREQUENCY} "
        f"steps), to {top!r}, but {name} must be finite and {arg.expected()}"
    )


def _plateau_growth(
    schedule: Schedule, steps: int, every: int
) -> tuple[float, int] | None:
    """(scale, most plateaus in the run) of a growing plateau in `schedule`."""
    for value in schedule.attrs.values():
        if isinstance(value, Schedule):
            inner = _plateau_growth(value, steps, every)
            if inner:
                return inner
    a = schedule.attrs
    if schedule.name != "plateau" or not a["scale"] > 1:
        return None
    return a["scale"], steps // max(1, every) // max(1, a["max_patience"])


def hyper_ranges(optimizer_name: str) -> dict[str, Arg]:
    """The range each hyperparameter of a registered optimizer accepts, as
    its signature declares it (`optsvc.optim.optimizer`'s aliases); a
    third-party optimizer without annotations declares none, so none is
    checked (hence not HPARAM_ARGS for every optimizer)."""
    found = find_function("optimizers", optimizer_name)
    if found is None:
        return {}
    return {p.name: p.arg for p in params_of(found[1]) if p.kind == "hyper"}


def schedule_issues(
    optimizer: Optimizer,
    opt_path: str,
    ranges: dict[str, Arg],
    max_steps: int | None,
    every: int | None = None,
) -> tuple[list[ConfigIssue], list[ConfigIssue]]:
    """(errors, warnings) from each scheduled hyperparameter's values over the
    run (training.max_steps, else the schedule's own length, else 1000
    steps), read once a sampled step for every check: a value outside the
    range its optimizer declares; with `max_steps`, a schedule that fails
    before it, else a learn_rate that is 0 long before it (a warning). The
    schedules are read, not the optimizer, whose step is left alone."""
    errors, failures, warnings = [], [], []
    for name, schedule in optimizer.schedules.items():
        if schedule.name == "constant" or not (max_steps or name in ranges):
            continue  # a constant never leaves its range nor dies part-way
        steps = max_steps or horizon(schedule) or DEFAULT_HORIZON
        readings = _readings(schedule, name, steps)
        arg = ranges.get(name)
        if arg and (problem := _range_problem(readings, schedule, name, arg, every)):
            errors.append(ConfigIssue(f"{opt_path}.{name}", problem))
        failed = [(step, why) for step, _, why in readings if why]
        if max_steps and failed:
            failures.append(failed[0])
        elif max_steps and name == "learn_rate":
            warnings += _dead_warning(readings, f"{opt_path}.{name}", max_steps)
    if failures:
        step, why = min(failures, key=lambda failure: failure[0])
        message = f"a schedule fails at step {step}, before training.max_steps"
        message += f" ({max_steps}): {why}"
        return [*errors, ConfigIssue(opt_path, message)], []
    return errors, warnings


def _dead_warning(readings: list, path: str, max_steps: int) -> list[ConfigIssue]:
    """A warning when learn_rate's readings (none failing) are 0 from some
    step on, long before `max_steps`."""
    stride = max(1, max_steps // 2000)
    last_live = max((step for step, value, _ in readings if value > 0), default=-1)
    dead_from = last_live + stride
    if last_live < 0 or 10 * dead_from >= 9 * max_steps:
        return []
    return [
        ConfigIssue(
            path,
            f"reaches 0 at about step {dead_from}, long before training.max_steps "
            f"({max_steps}); the steps after that will not change the weights",
        )
    ]


def odd_values(blocks: dict[str, tuple[str, dict]]) -> list[ConfigIssue]:
    """Warnings for values a function accepts but that are likely mistakes."""
    issues = []
    for path, (name, block) in blocks.items():
        low, high = block.get("min_lr"), block.get("max_lr")
        if (
            name == "cyclic_triangular.v1"
            and isinstance(low, numbers.Real)
            and isinstance(high, numbers.Real)
            and low > high
        ):
            issues.append(
                ConfigIssue(
                    f"{path}.min_lr",
                    f"is above max_lr ({high!r}), so the cycles run upside down",
                    value=low,
                    has_value=True,
                    hint="swap min_lr and max_lr unless that is meant",
                )
            )
    return issues


def standalone_values(
    schedule: Schedule, steps: int, scores: dict[int, float] | None = None
) -> list[float]:
    """A schedule block's values at steps 0 .. steps - 1 (scores, if given,
    reach it at their step, as the optimizer would pass them)."""
    values, last = [], None
    scores = scores or {}
    for step in range(steps):
        last = (step, scores[step]) if step in scores else last
        try:
            values.append(float(schedule(step, key=None, last_score=last)))
        except (ValueError, ArithmeticError) as err:
            raise _step_failure("the schedule", step, err) from None
    return values


def _step_failure(what: str, step: int, err: Exception) -> ConfigError:
    """The ConfigError for a schedule that raised `err` at `step` while its
    values were being shown."""
    reason = str(err) if isinstance(err, ValueError) else "it overflows"
    return ConfigError(
        f"{what} fails at step {step}: {reason}; show fewer steps (--steps) or "
        "fix the schedule"
    )


def read_scores(path: str | Path) -> dict[int, float]:
    """Scores by step from a run's metrics.jsonl (its rows with a score)."""
    try:
        read_regular(path, TEXT_LIMIT, "scores file")  # the refusals say which file
    except StateError as err:
        raise ConfigError(str(err)) from None
    scores = {}
    for i, (line, row) in enumerate(read_lines(Path(path)), 1):
        if row is None and line.strip():
            raise ConfigError(
                f"{path}, line {i}: expected a JSON object with 'step' and 'score'"
            )
        if isinstance(row, MetricsRow) and row.score is not None:
            scores[row.step] = row.score
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
                raise _step_failure(f"the schedule of '{p}'", step, err) from None
        optimizer.step_schedules()
    return values


def _evaluate(
    schedule: Schedule, name: str, step: int
) -> tuple[float | None, str | None]:
    """(value, reason): a hyperparameter's schedule read once at `step`.
    value: the number it gives (inf and nan too), None when it fails or gives
    something else; reason: why that value is not usable (also for inf and
    nan), None when it is."""
    try:
        value = schedule(step, key=None, last_score=None)
    except ValueError as err:
        return None, str(err)
    except ArithmeticError:
        return None, "the value overflows"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None, f"'{name}' schedule gave {value!r}; expected a number"
    if not math.isfinite(value):
        return float(value), f"'{name}' must be finite, got {value!r}"
    return float(value), None


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
