"""Checking a whole config before anything is built, then building it.

`validate_config` walks the raw (interpolated) sections, checks each
registered-function block against its schema (`optsvc.config.schema`), collects
every problem with its dotted path, and only then builds the optimizer to
catch what only the functions themselves know. `build_block` turns a checked
block into objects, with errors naming the path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from optsvc.config.parse import (
    ConfigError,
    ConfigIssue,
    ConfigSections,
    did_you_mean,
    find_sections,
    get_path,
)
from optsvc.config.registry import registry
from optsvc.config.schema import (
    ARGS,
    SECTIONS,
    Nested,
    SystemSection,
    TrainingSection,
    function_schema,
)
from optsvc.optim.optimizer import HPARAMS, Optimizer

REGISTRIES = ("optimizers", "schedules", "datasets", "models")
# Which registry each optsvc section's block names, and an example.
SECTION_REGISTRY = {"data": ("datasets", "blobs.v1"), "model": ("models", "mlp.v1")}


@dataclass
class Report:
    """What `validate_config` found: errors, warnings and what would be built."""

    sections: ConfigSections
    errors: list[ConfigIssue] = field(default_factory=list)
    warnings: list[ConfigIssue] = field(default_factory=list)
    blocks: dict[str, tuple[str, dict]] = field(default_factory=dict)
    optimizer: Optimizer | None = None
    # A training config's [system] and [training] settings, defaults filled
    # in (None for a config that is not optsvc's training config).
    system: SystemSection | None = None
    training: TrainingSection | None = None

    @property
    def ok(self) -> bool:
        return not self.errors


def known(registry_name: str) -> list[str]:
    return sorted(getattr(registry, registry_name).get_all())


def check_block(
    block: Any, path: str, expected: str, issues: list[ConfigIssue], found: dict
) -> Nested | None:
    """Check one registered-function block and its nested blocks; add every
    problem to `issues`. Returns a marker for the parent's schema check."""
    if not isinstance(block, dict):
        issues.append(
            ConfigIssue(path, f"must be a section naming a function from @{expected}")
        )
        return None
    # Nested blocks first, so that their problems are reported even when
    # this block's own function is unknown.
    args: dict[str, Any] = {}
    sections: list[str] = []
    for key, value in block.items():
        if key.startswith("@"):
            continue
        if isinstance(value, dict) and any(k.startswith("@") for k in value):
            nested = check_block(value, f"{path}.{key}", "schedules", issues, found)
            # A broken nested block is reported once, by itself.
            args[key] = nested or Nested("schedules", "?")
        elif isinstance(value, dict):
            sections.append(key)
        else:
            args[key] = value
    func_name = _check_reference(block, path, expected, issues)
    if func_name is None:
        return None
    reg_name, name = func_name
    func = getattr(registry, reg_name).get(name)
    schema = function_schema(reg_name, name, func)
    for key in sections:
        if key in schema.model_fields:
            issues.append(
                ConfigIssue(
                    f"{path}.{key}",
                    "is a section, but a value is expected here",
                    hint="add @schedules = ... to make it a schedule",
                )
            )
        else:
            args[key] = block[key]  # reported as an unknown argument
    _check_model(schema, args, path, name, issues)
    if "warmup_steps" in args and "total_steps" in args:
        warm, total = args["warmup_steps"], args["total_steps"]
        if isinstance(warm, int) and isinstance(total, int) and warm > total:
            issues.append(
                ConfigIssue(
                    f"{path}.warmup_steps",
                    f"must be <= total_steps ({total})",
                    value=warm,
                    has_value=True,
                )
            )
    found[path] = (name, block)
    return Nested(reg_name, name)


def _check_reference(block, path, expected, issues) -> tuple[str, str] | None:
    """The (registry, name) a block's @-key names, if it is a known one."""
    refs = [k for k in block if k.startswith("@")]
    names = known(expected)
    if not refs:
        example = SECTION_REGISTRY.get(path, (expected, names[0]))[1]
        issues.append(
            ConfigIssue(
                path,
                f'names no function; add @{expected} = "{example}"',
                hint=f"known: {', '.join(names)}",
            )
        )
        return None
    if len(refs) > 1:
        issues.append(ConfigIssue(path, f"names more than one function: {refs}"))
        return None
    reg_name, name = refs[0][1:], block[refs[0]]
    where = f"{path}.{refs[0]}"
    if reg_name not in REGISTRIES:
        hint = did_you_mean(reg_name, REGISTRIES) or f"use @{expected}"
        issues.append(ConfigIssue(where, f"unknown registry @{reg_name}", hint=hint))
        return None
    if reg_name != expected:
        issues.append(
            ConfigIssue(
                where,
                f"expects a function from @{expected}, not @{reg_name}",
                value=name,
                has_value=True,
            )
        )
        return None
    if not isinstance(name, str) or name not in names:
        hint = did_you_mean(str(name), names)
        issues.append(
            ConfigIssue(
                where,
                f"unknown function in registry {reg_name}",
                value=name,
                has_value=True,
                hint=(hint + " " if hint else "") + f"known: {', '.join(names)}",
            )
        )
        return None
    return reg_name, name


_COMPARISONS = (
    ("greater than or equal to", ">="),
    ("less than or equal to", "<="),
    ("greater than", ">"),
    ("less than", "<"),
)


def _check_model(
    schema: type[BaseModel], args: dict, path: str, what: str, issues: list
) -> None:
    try:
        schema.model_validate(args)
    except ValidationError as err:
        fields = list(schema.model_fields)
        for e in err.errors():
            key = str(e["loc"][0]) if e["loc"] else ""
            where = f"{path}.{key}" if key else path
            if e["type"] == "extra_forbidden":
                hint = did_you_mean(key, fields) or f"arguments: {', '.join(fields)}"
                issues.append(
                    ConfigIssue(where, f"unknown argument for {what}", hint=hint)
                )
            elif e["type"] == "missing":
                desc = schema.model_fields[key].description or ""
                issues.append(
                    ConfigIssue(
                        where, f"missing required argument of {what}", hint=desc
                    )
                )
            else:
                msg = e["msg"].removeprefix("Value error, ")
                msg = msg.replace("Input should be", "must be")
                for words, sign in _COMPARISONS:
                    msg = msg.replace(words, sign)
                issues.append(
                    ConfigIssue(where, msg, value=e.get("input"), has_value=True)
                )


def validate_config(config: dict, *, for_training: bool = False) -> Report:
    """Check every section optsvc knows, then build the optimizer."""
    report = Report(find_sections(config))
    issues = report.errors
    lay = report.sections
    if lay.optimizer_path is None:
        issues.append(
            ConfigIssue(
                "optimizer",
                "no optimizer block",
                hint='add [optimizer] with @optimizers = "Adam.v1" '
                "(or [training.optimizer] as in spaCy)",
            )
        )
    else:
        opt_block = get_path(config, lay.optimizer_path)
        check_block(opt_block, lay.optimizer_path, "optimizers", issues, report.blocks)
    if lay.optimizer_path == "optimizer" and _has_training_optimizer(config):
        issues.append(
            ConfigIssue(
                "training.optimizer",
                "the config has both [optimizer] and [training.optimizer]",
                hint="keep one of them",
            )
        )
    if not lay.is_spacy:
        _check_sections(config, issues, report.blocks, for_training)
    if not issues and lay.optimizer_path:
        try:
            report.optimizer = build_block(
                get_path(config, lay.optimizer_path), lay.optimizer_path
            )
        except ConfigError as err:
            issues.extend(err.issues)
    if report.optimizer is not None and isinstance(config.get("training"), dict):
        max_steps = config["training"].get("max_steps")
        if isinstance(max_steps, int) and max_steps > 0:
            try:
                report.warnings.extend(
                    _dead_schedule_warnings(config, lay.optimizer_path, max_steps)
                )
            except ConfigError as err:
                issues.extend(err.issues)
    if for_training and not issues and not lay.is_spacy:
        report.system = SystemSection.model_validate(config.get("system", {}))
        report.training = TrainingSection.model_validate(
            {k: v for k, v in config["training"].items() if k != "optimizer"}
        )
    return report


def _has_training_optimizer(config: dict) -> bool:
    training = config.get("training")
    return isinstance(training, dict) and isinstance(training.get("optimizer"), dict)


def _check_sections(config, issues, found, for_training) -> None:
    for name, value in config.items():
        if name == "optimizer":
            continue
        if name in SECTION_REGISTRY:
            check_block(value, name, SECTION_REGISTRY[name][0], issues, found)
        elif name in SECTIONS:
            if not isinstance(value, dict):
                issues.append(ConfigIssue(name, "must be a section"))
                continue
            args = {k: v for k, v in value.items() if not (k == "optimizer")}
            for key, sub in list(args.items()):
                if isinstance(sub, dict):
                    issues.append(
                        ConfigIssue(
                            f"{name}.{key}", f"[{name}] has no subsection '{key}'"
                        )
                    )
                    del args[key]
            _check_model(SECTIONS[name], args, name, f"[{name}]", issues)
        else:
            hint = did_you_mean(name, [*SECTIONS, *SECTION_REGISTRY, "optimizer"])
            issues.append(
                ConfigIssue(
                    name,
                    "unknown section",
                    hint=hint or "sections: system, data, model, training, optimizer",
                )
            )
    if for_training:
        for name in ("data", "model", "training"):
            if name not in config:
                issues.append(
                    ConfigIssue(name, f"a training config needs a [{name}] section")
                )


def build_block(block: dict, path: str) -> Any:
    """Call the registered function a checked block names, building nested
    blocks first; a ValueError from a function becomes a ConfigError at `path`."""
    ref = next(k for k in block if k.startswith("@"))
    func = getattr(registry, ref[1:]).get(block[ref])
    kwargs = {}
    for key, value in block.items():
        if key.startswith("@"):
            continue
        if isinstance(value, dict):
            value = build_block(value, f"{path}.{key}")
        kwargs[key] = value
    try:
        return func(**kwargs)
    except (ValueError, TypeError, ArithmeticError) as err:
        raise ConfigError(ConfigIssue(path, str(err))) from None


def _dead_schedule_warnings(config, opt_path, max_steps) -> list[ConfigIssue]:
    """Warn when learn_rate is 0 from some step on, long before max_steps."""
    opt = build_block(get_path(config, opt_path), opt_path)
    stride = max(1, max_steps // 2000)
    last_live = -1
    for step in range(0, max_steps, stride):
        opt._step = step
        try:
            live = opt.learn_rate > 0  # evaluates every hyperparameter
        except (ValueError, ArithmeticError) as err:
            reason = str(err) if isinstance(err, ValueError) else "the value overflows"
            raise ConfigError(
                ConfigIssue(
                    opt_path,
                    f"a schedule fails at step {step}, before training.max_steps "
                    f"({max_steps}): {reason}",
                )
            ) from None
        if live:
            last_live = step
    dead_from = last_live + stride
    if last_live >= 0 and 10 * dead_from < 9 * max_steps:
        return [
            ConfigIssue(
                f"{opt_path}.learn_rate",
                f"reaches 0 at about step {dead_from}, long before training.max_steps "
                f"({max_steps}); the steps after that will not change the weights",
            )
        ]
    return []


def describe_arg(name: str) -> str:
    spec = ARGS.get(name)
    return spec.desc if spec else ""


__all__ = ["Report", "validate_config", "build_block", "check_block", "HPARAMS"]
