"""Checking a whole config before anything is built, then building it once.

`validate_config` finds the sections, checks each registered-function block
against what its function's signature declares (`optsvc.config.blocks`) and
[system] and [training] against their pydantic models, collects every
problem with its dotted path, and only then builds the optimizer, once, to
catch what only the functions themselves know. `optsvc validate`, `optsvc
train`, `optsvc bench` and `load_optimizer` (the Python API) all go through
it, so all four report the same errors for the same config.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from optsvc.config.blocks import (
    SECTION_REGISTRY,
    check_block,
    construct,
    find_function,
)
from optsvc.config.parse import (
    OPTSVC_SECTIONS,
    ConfigError,
    ConfigIssue,
    ConfigSections,
    did_you_mean,
    find_sections,
    get_path,
    load_config,
    with_overrides,
)
from optsvc.config.preview import hyper_ranges, odd_values, schedule_issues
from optsvc.config.resources import size_errors
from optsvc.config.schema import SECTIONS, SystemSection, TrainingSection
from optsvc.optim import Optimizer
from optsvc.schedules.base import Schedule

logger = logging.getLogger("optsvc")


@dataclass
class Report:
    """What `validate_config` found: errors, warnings and what would be built."""

    sections: ConfigSections
    errors: list[ConfigIssue] = field(default_factory=list)
    warnings: list[ConfigIssue] = field(default_factory=list)
    # Each checked registered-function block: path -> (name, block).
    blocks: dict[str, tuple[str, dict]] = field(default_factory=dict)
    optimizer: Optimizer | None = None
    # A standalone schedule block (`[learn_rate]`) picked instead, built.
    schedule: Schedule | None = None
    # A training config's [system] and [training] settings, defaults filled
    # in (None for a config that is not optsvc's training config).
    system: SystemSection | None = None
    training: TrainingSection | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    def build(self, path: str) -> Any:
        """Build a block this report checked (`report.build("data")`) without
        checking it again; an error a function raises is a ConfigError at
        `path`."""
        if path not in self.blocks:
            raise KeyError(
                f"no checked block at {path!r}; checked: {list(self.blocks)}"
            )
        return construct(self.blocks[path][1], path)


def validate_config(
    config: dict, *, for_training: bool = False, block: str | None = None
) -> Report:
    """Check every section optsvc knows, then build the optimizer (once).

    In a Thinc or spaCy config only the optimizer and schedule blocks are
    checked (every one found); the others are listed as not checked.
    block: the optimizer or schedule block to build (`pretraining.optimizer`),
    default the one Thinc or spaCy trains with.
    for_training: the config must be a complete training job ([data],
    [model], [training]); `report.system` and `report.training` then hold its
    settings.
    """
    report = Report(find_sections(config, block))
    _check_optimizer_block(config, report)
    settings: dict[str, BaseModel | None] = {}
    if not report.sections.is_foreign:
        settings = _check_sections(config, report, for_training)
    elif for_training and not report.sections.is_spacy:
        report.errors.append(_not_trainable(config))
    report.warnings.extend(odd_values(report.blocks))
    if report.ok and report.sections.optimizer_path:
        _build_optimizer(config, report, settings.get("training"))
    elif report.ok and report.sections.schedule_path:
        path = report.sections.schedule_path
        report.schedule = _construct(config, path, report)
    if for_training and report.ok and not report.sections.is_spacy:
        report.system = settings.get("system") or SystemSection()
        report.training = settings.get("training") or TrainingSection()
        report.errors.extend(_size_errors(report))
    return report


def load_optimizer(
    config: str | Path | dict, overrides: dict[str, Any] | None = None
) -> Optimizer:
    """The optimizer a config's `[optimizer]` (or spaCy's
    `[training.optimizer]`) block describes, checked exactly as `optsvc
    validate` checks it: a ConfigError lists every problem with its dotted
    path. Warnings go to the "optsvc" logger.

    config: a config file's path, or a config already read (`load_config`).
    overrides: dotted paths and values, e.g. `{"optimizer.learn_rate": 0.01}`.

    >>> block = {"@optimizers": "Adam.v1", "learn_rate": 0.01}
    >>> load_optimizer({"optimizer": block}).learn_rate
    0.01
    """
    if isinstance(config, (str, Path)):
        config = load_config(config, overrides)
    elif overrides:
        config = with_overrides(config, overrides)
    report = validate_config(config)
    if not report.ok:
        raise ConfigError(report.errors)
    if not isinstance(report.optimizer, Optimizer):
        path = report.sections.optimizer_path
        raise ConfigError(
            ConfigIssue(
                path,
                f"builds a {type(report.optimizer).__name__}, not an optsvc Optimizer",
            )
        )
    for warning in report.warnings:
        logger.warning("%s", warning)
    return report.optimizer


# --- the steps ------------------------------------------------------------------------


def _size_errors(report: Report) -> list[ConfigIssue]:
    """The job's memory, estimated before anything is allocated (the data and
    model blocks passed their checks, so each names a registered function)."""
    functions = {
        path: find_function(registry_name, report.blocks[path][0])[1]
        for path, (registry_name, _) in SECTION_REGISTRY.items()
    }
    return size_errors(report.blocks, functions, report.training.batch_size)


def _not_trainable(config: dict) -> ConfigIssue:
    others = [s for s in config if s not in ("system", "data", "training", "optimizer")]
    return ConfigIssue(
        "",
        "this is a Thinc-style config (it has "
        + ", ".join(f"[{s}]" for s in others)
        + "); optsvc train runs optsvc training configs: [system], [data], "
        "[model] with @models, [training], [optimizer]",
        hint="optsvc validate and optsvc show-schedule check its optimizer",
    )


def _check_optimizer_block(config: dict, report: Report) -> None:
    lay = report.sections
    path = lay.optimizer_path
    if lay.is_foreign:  # every block found is checked, one is built
        for where in lay.blocks:
            expected = "optimizers" if where in lay.optimizer_blocks else "schedules"
            block = get_path(config, where)
            check_block(block, where, expected, report.errors, report.blocks)
    if path is None and lay.schedule_path is None:
        report.errors.append(_no_block(lay))
        return
    if lay.is_foreign or path is None:
        return
    check_block(
        get_path(config, path), path, "optimizers", report.errors, report.blocks
    )
    training = config.get("training")
    if path == "optimizer" and isinstance(training, dict):
        if isinstance(training.get("optimizer"), dict):
            report.errors.append(
                ConfigIssue(
                    "training.optimizer",
                    "the config has both [optimizer] and [training.optimizer]",
                    hint="keep one of them",
                )
            )


def _no_block(lay: ConfigSections) -> ConfigIssue:
    if lay.schedule_blocks:
        return ConfigIssue(
            "",
            "no optimizer block, and several schedule blocks: "
            + ", ".join(lay.schedule_blocks),
            hint=f"pick one with --block {lay.schedule_blocks[0]}",
        )
    return ConfigIssue(
        "optimizer",
        "no optimizer block: no [optimizer] section, nor spaCy's [training.optimizer]",
        hint='add [optimizer] with @optimizers = "Adam.v1"',
    )


def _construct(config: dict, path: str, report: Report) -> Any:
    try:
        return construct(get_path(config, path), path)
    except ConfigError as err:
        report.errors.extend(err.issues)
        return None


def _check_sections(
    config: dict, report: Report, for_training: bool
) -> dict[str, BaseModel | None]:
    """Check the sections other than the optimizer block; returns the
    validated [system] and [training] settings."""
    settings: dict[str, BaseModel | None] = {}
    for name, value in config.items():
        if name == "optimizer":
            continue
        if name in SECTION_REGISTRY:
            registry_name = SECTION_REGISTRY[name][0]
            check_block(value, name, registry_name, report.errors, report.blocks)
        elif name in SECTIONS:
            settings[name] = _check_settings(name, value, report)
        else:
            hint = did_you_mean(name, OPTSVC_SECTIONS)
            hint = hint or f"sections: {', '.join(OPTSVC_SECTIONS)}"
            report.errors.append(ConfigIssue(name, "unknown section", hint=hint))
    for name in ("data", "model", "training") if for_training else ():
        if name not in config:
            report.errors.append(
                ConfigIssue(name, f"a training config needs a [{name}] section")
            )
    return settings


def _check_settings(name: str, value: Any, report: Report) -> BaseModel | None:
    """[system] or [training] (its optimizer block is checked on its own, its
    logger block as a block of @loggers)."""
    issues = report.errors
    if not isinstance(value, dict):
        issues.append(ConfigIssue(name, "must be a section"))
        return None
    args = {}
    for key, sub in value.items():
        if key == "optimizer":
            continue
        if (name, key) == ("training", "logger"):
            check_block(sub, "training.logger", "loggers", issues, report.blocks)
        elif isinstance(sub, dict):
            issues.append(
                ConfigIssue(f"{name}.{key}", f"[{name}] has no subsection '{key}'")
            )
        else:
            args[key] = sub
    model = SECTIONS[name]
    try:
        return model.model_validate(args)
    except ValidationError as err:
        issues.extend(_section_issue(model, error, name) for error in err.errors())
        return None


# pydantic's words for a bound, and the sign a message shows instead.
_COMPARISONS = (
    ("greater than or equal to", ">="),
    ("less than or equal to", "<="),
    ("greater than", ">"),
    ("less than", "<"),
)


def _section_issue(model: type[BaseModel], error: dict, name: str) -> ConfigIssue:
    """One of pydantic's errors for section `name`, worded as optsvc words a
    function block's."""
    key = str(error["loc"][0]) if error["loc"] else ""
    where = f"{name}.{key}" if key else name
    if error["type"] == "extra_forbidden":
        fields = list(model.model_fields)
        hint = did_you_mean(key, fields) or f"arguments: {', '.join(fields)}"
        return ConfigIssue(where, f"unknown argument for [{name}]", hint=hint)
    message = error["msg"].replace("Input should be", "must be")
    for words, sign in _COMPARISONS:
        message = message.replace(words, sign)
    return ConfigIssue(where, message, value=error.get("input"), has_value=True)


def _build_optimizer(
    config: dict, report: Report, training: BaseModel | None = None
) -> None:
    """Build the checked optimizer block, then read its schedules over
    training.max_steps: a learning rate that dies early is a warning, a
    value outside its hyperparameter's range an error."""
    path = report.sections.optimizer_path
    report.optimizer = _construct(config, path, report)
    if not isinstance(report.optimizer, Optimizer):
        return
    section = config.get("training")
    section = section if isinstance(section, dict) else {}
    max_steps = getattr(training, "max_steps", section.get("max_steps"))
    every = getattr(training, "eval_frequency", section.get("eval_frequency"))
    if not isinstance(max_steps, int) or max_steps <= 0:
        max_steps = None  # none, or spaCy's 0 (no limit): no run to read over
    ranges = hyper_ranges(report.blocks[path][0])
    errors, warnings = schedule_issues(report.optimizer, path, ranges, max_steps, every)
    report.errors.extend(errors)
    report.warnings.extend(warnings)


__all__ = ["Report", "validate_config", "load_optimizer"]
