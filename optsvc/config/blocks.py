"""One registered-function block of a config (`[optimizer]`, `[data]`, ...):
checking it against what its function's signature declares, and building it.

`check_block` collects every problem of a block and of the blocks nested in
it, each with its dotted path: an unknown argument (with a did-you-mean), a
missing one (with its description), each value against its `optsvc.spec.Param`
(worded for a config file, where a nested block stands for a Python object),
then the function's `Rule`s across arguments. `construct` calls the functions
of a block that passed, without checking the arguments a second time;
`build_block` does both.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

from optsvc.config.parse import OWN_REGISTRIES, ConfigError, ConfigIssue, did_you_mean
from optsvc.config.registry import registry
from optsvc.loggers.base import LoggerFactory
from optsvc.schedules.base import Schedule
from optsvc.spec import Param, params_of, rules_of, unchecked, whole_numbers

# Which registry each optsvc section's block names, and an example.
SECTION_REGISTRY = {"data": ("datasets", "blobs.v1"), "model": ("models", "mlp.v1")}
# Registries of Thinc and spaCy that their configs name: never a misspelling of
# one of optsvc's (`@layers` is not `@loggers`).
FOREIGN_REGISTRIES = frozenset(
    "layers architectures initializers losses misc readers callbacks tokenizers "
    "lemmatizers lookups batchers augmenters scorers vectors factories languages "
    "ops cli_commands displacy_colors assets".split()
)
# Thinc's registries hold optsvc's functions as "optsvc.<name>" (through entry
# points), and spaCy configs use that spelling: it names the same function.
THINC_PREFIX = "optsvc."
# The registry whose functions build each class a nested block may stand for.
BLOCK_REGISTRY: dict[type, str] = {Schedule: "schedules", LoggerFactory: "loggers"}
SCHEDULE_BLOCK = 'a [schedule] block (a section with @schedules = "...")'
BLOCK_WORDS = {
    "schedules": SCHEDULE_BLOCK,
    "loggers": 'a [logger] block (a section with @loggers = "...")',
}


class Nested:
    """A nested registered-function block that was checked on its own."""

    def __init__(self, registry: str, name: str) -> None:
        self.registry, self.name = registry, name

    def __repr__(self) -> str:
        return f"<{self.registry}: {self.name}>"


def known(registry_name: str) -> list[str]:
    """The names a registry holds, sorted."""
    return sorted(getattr(registry, registry_name).get_all())


def find_function(registry_name: str, name: Any) -> tuple[str, Callable] | None:
    """(name in optsvc's registry, function) for a name a config gives:
    "Adam.v1", or Thinc's spelling of it, "optsvc.Adam.v1"."""
    if not isinstance(name, str):
        return None
    functions = getattr(registry, registry_name).get_all()  # entry points too
    for candidate in (name, name.removeprefix(THINC_PREFIX)):
        if candidate in functions:
            return candidate, functions[candidate]
    return None


# --- checking ------------------------------------------------------------------------


def check_block(
    block: Any, path: str, expected: str, issues: list[ConfigIssue], found: dict
) -> Nested | None:
    """Check one registered-function block and its nested blocks; add every
    problem to `issues` and each block that passed to `found` (path -> (name,
    block)). Returns a marker for the check of the parent's arguments."""
    if not isinstance(block, dict):
        issues.append(
            ConfigIssue(path, f"must be a section naming a function from @{expected}")
        )
        return None
    # Nested blocks first, so that their problems are reported even when
    # this block's own function is unknown.
    args, sections = _arguments(block, path, issues, found)
    reference = _check_reference(block, path, expected, issues)
    if reference is None:
        return None
    reg_name, name, func = reference
    args.update(_sections_given_as_values(func, block, sections, path, issues))
    check_arguments(func, args, path, name, issues)
    found[path] = (name, block)
    return Nested(reg_name, name)


def _arguments(block: dict, path: str, issues: list, found: dict):
    """The block's arguments (nested blocks checked and replaced by a marker)
    and the names of its plain subsections."""
    args: dict[str, Any] = {}
    sections: list[str] = []
    for key, value in block.items():
        if key.startswith("@"):
            continue
        if _is_block(value):
            # A nested block is a schedule, unless it names another registry
            # that nests (a chain of @loggers).
            inner = "loggers" if "@loggers" in value else "schedules"
            nested = check_block(value, f"{path}.{key}", inner, issues, found)
            # A broken nested block is reported once, by itself.
            args[key] = nested or Nested(inner, "?")
        elif isinstance(value, dict):
            sections.append(key)
        else:
            args[key] = value
    return args, sections


def _sections_given_as_values(func, block, sections, path, issues) -> dict:
    """Subsections without a function: the value of an argument that takes a
    mapping (MLflow's tags), an error where another value is expected, else
    left for `check_arguments` to report as unknown arguments."""
    unknown = {}
    kinds = {p.name: p.kind for p in params_of(func)}
    for key in sections:
        if kinds.get(key, "mapping") == "mapping":
            unknown[key] = block[key]
        else:
            issues.append(
                ConfigIssue(
                    f"{path}.{key}",
                    "is a section, but a value is expected here",
                    hint="add @schedules = ... to make it a schedule",
                )
            )
    return unknown


def _check_reference(block, path, expected, issues) -> tuple[str, str, Callable] | None:
    """(registry, name, function) that a block's @-key names, if it is known."""
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
    problem = _reference_problem(reg_name, name, expected, names)
    if problem:
        issues.append(ConfigIssue(f"{path}.{refs[0]}", **problem))
        return None
    canonical, func = find_function(reg_name, name)
    return reg_name, canonical, func


def _reference_problem(reg_name, name, expected, names) -> dict | None:
    """What is wrong with `@reg_name = name` where @expected is wanted."""
    if reg_name not in OWN_REGISTRIES:
        if reg_name in FOREIGN_REGISTRIES:
            return {
                "message": f"@{reg_name} is a Thinc/spaCy registry, not one optsvc "
                "builds",
                "hint": f"this block needs a function from @{expected}",
            }
        # Its own cutoff, not parse's 0.8: a shared one would change the hints.
        hint = did_you_mean(reg_name, OWN_REGISTRIES, cutoff=0.75)
        hint = hint or f"use @{expected}"
        return {"message": f"unknown registry @{reg_name}", "hint": hint}
    if reg_name != expected:
        message = f"expects a function from @{expected}, not @{reg_name}"
        return {"message": message, "value": name, "has_value": True}
    if find_function(reg_name, name) is None:
        hint = did_you_mean(str(name).removeprefix(THINC_PREFIX), names)
        return {
            "message": f"unknown function in registry {reg_name}",
            "value": name,
            "has_value": True,
            "hint": (hint + " " if hint else "") + f"known: {', '.join(names)}",
        }
    return None


def check_arguments(func: Callable, args: dict, path: str, what: str, issues: list):
    """Check a block's arguments against `func`'s declared parameters, then
    its rules across arguments; add each problem to `issues`. `what` names
    the function in messages ("warmup_linear.v1")."""
    params = params_of(func)
    names = [p.name for p in params]
    failed = set()
    for param in params:
        where, value = _at(path, param.name), args.get(param.name, _MISSING)
        if value is _MISSING and param.required:
            message = f"missing required argument of {what}"
            issue = ConfigIssue(where, message, hint=param.arg.desc)
        elif value is not _MISSING and (problem := _config_problem(param, value)):
            issue = ConfigIssue(where, problem, value=value, has_value=True)
        else:
            continue
        failed.add(param.name)
        issues.append(issue)
    for key in (k for k in args if k not in names):
        failed.add(key)
        hint = did_you_mean(key, names) or f"arguments: {', '.join(names)}"
        issues.append(
            ConfigIssue(_at(path, key), f"unknown argument for {what}", hint=hint)
        )
    _check_rules(func, args, failed, path, issues)


_MISSING = object()


def _at(path: str, key: str) -> str:
    return f"{path}.{key}" if key else path


def _config_problem(param: Param, x: Any) -> str | None:
    """`param.problem(x)`, worded for a config file, where a nested block
    (here a `Nested` marker) stands for a schedule or a logger."""
    block = "schedules" if param.kind == "hyper" else BLOCK_REGISTRY.get(param.cls)
    if isinstance(x, Nested) and param.kind in ("hyper", "instance"):
        return None if block in (None, x.registry) else f"must be {BLOCK_WORDS[block]}"
    if x is None and param.optional:
        return None
    if param.kind == "hyper" and not isinstance(x, (numbers.Number, list)):
        return f"must be a number, a list of numbers or {SCHEDULE_BLOCK}"
    if param.kind == "instance" and block:
        return f"must be {BLOCK_WORDS[block]}"
    return param.problem(x)


def with_defaults(func: Callable, args: dict) -> dict[str, Any]:
    """A block's arguments (its @-key left out) with `func`'s defaults
    filled in."""
    values = {p.name: p.default for p in params_of(func) if not p.required}
    values.update({k: v for k, v in args.items() if not str(k).startswith("@")})
    return values


def _check_rules(func, args: dict, failed: set, path: str, issues) -> None:
    """The function's rules across arguments, over the values that passed
    their own checks (defaults filled in)."""
    values = with_defaults(func, args)
    for rule in rules_of(func):
        names = rule.names
        if failed & set(names) or any(isinstance(values.get(n), Nested) for n in names):
            continue
        problem = rule.problem(values)
        if problem and rule.at:
            where, value = f"{path}.{rule.at}", values[rule.at]
            issues.append(ConfigIssue(where, problem, value=value, has_value=True))
        elif problem:
            issues.append(ConfigIssue(path, problem))


# --- building ------------------------------------------------------------------------


def construct(block: dict, path: str) -> Any:
    """Call the function a checked block names, nested blocks first, without
    checking the arguments again; an error that a function raises becomes a
    ConfigError at `path`."""
    ref = next(k for k in block if k.startswith("@"))
    _, func = find_function(ref[1:], block[ref])
    kwargs = {
        key: construct(value, f"{path}.{key}") if _is_block(value) else value
        for key, value in block.items()
        if not key.startswith("@")
    }
    try:
        return unchecked(func)(**whole_numbers(func, kwargs))
    except (ValueError, TypeError, ArithmeticError) as err:
        raise ConfigError(ConfigIssue(path, str(err))) from None


def _is_block(value: Any) -> bool:
    return isinstance(value, dict) and any(str(k).startswith("@") for k in value)


def build_block(block: dict, path: str) -> Any:
    """Check a registered-function block as `validate_config` does, then
    build it; every problem is listed in one ConfigError with its dotted path.

    >>> build_block({"@schedules": "constant.v1", "rate": 0.5}, "lr")(10)
    0.5
    """
    issues: list[ConfigIssue] = []
    check_block(block, path, _registry_named(block, path), issues, {})
    if issues:
        raise ConfigError(issues)
    return construct(block, path)


def _registry_named(block: Any, path: str) -> str:
    if path in SECTION_REGISTRY:
        return SECTION_REGISTRY[path][0]
    if not isinstance(block, dict):
        return "optimizers"
    refs = [str(k)[1:] for k in block if str(k).startswith("@")]
    return next((r for r in refs if r in OWN_REGISTRIES), "optimizers")


__all__ = [
    "build_block",
    "check_arguments",
    "check_block",
    "construct",
    "find_function",
    "known",
    "with_defaults",
]
