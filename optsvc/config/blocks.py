"""One registered-function block of a config (`[optimizer]`, `[data]`, ...):
checking it against the schema its function declares, and building it.

`check_block` collects every problem of a block and of the blocks nested in
it, each with its dotted path; `construct` calls the functions of a block that
passed, without checking the arguments a second time; `build_block` does both.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from optsvc.config.parse import OWN_REGISTRIES, ConfigError, ConfigIssue, did_you_mean
from optsvc.config.registry import registry
from optsvc.config.schema import Nested, function_schema
from optsvc.spec import params_of, rules_of, unchecked

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
    block)). Returns a marker for the parent's schema check."""
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
    schema = function_schema(func)
    args.update(_sections_given_as_values(func, block, sections, path, issues))
    _, failed = check_model(schema, args, path, name, issues)
    _check_rules(func, schema, args, failed, path, issues)
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
        if isinstance(value, dict) and any(k.startswith("@") for k in value):
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
    left for the schema to report as unknown arguments."""
    unknown = {}
    kinds = {p.name: p.kind for p in params_of(func)}
    for key in sections:
        if kinds.get(key) == "mapping":
            unknown[key] = block[key]
        elif key in kinds:
            issues.append(
                ConfigIssue(
                    f"{path}.{key}",
                    "is a section, but a value is expected here",
                    hint="add @schedules = ... to make it a schedule",
                )
            )
        else:
            unknown[key] = block[key]
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
        close = difflib.get_close_matches(reg_name, OWN_REGISTRIES, n=1, cutoff=0.75)
        hint = f"did you mean '{close[0]}'?" if close else f"use @{expected}"
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


_COMPARISONS = (
    ("greater than or equal to", ">="),
    ("less than or equal to", "<="),
    ("greater than", ">"),
    ("less than", "<"),
)


def check_model(
    schema: type[BaseModel], args: dict, path: str, what: str, issues: list
) -> tuple[BaseModel | None, set[str]]:
    """Validate `args` against `schema`: the model, or None and the names of
    the arguments that failed (each problem added to `issues`)."""
    try:
        return schema.model_validate(args), set()
    except ValidationError as err:
        failed = set()
        for error in err.errors():
            key = str(error["loc"][0]) if error["loc"] else ""
            failed.add(key)
            issues.append(_issue(schema, error, path, key, what))
        return None, failed


def _issue(schema, error: dict, path: str, key: str, what: str) -> ConfigIssue:
    where = f"{path}.{key}" if key else path
    fields = list(schema.model_fields)
    if error["type"] == "extra_forbidden":
        hint = did_you_mean(key, fields) or f"arguments: {', '.join(fields)}"
        return ConfigIssue(where, f"unknown argument for {what}", hint=hint)
    if error["type"] == "missing":
        desc = schema.model_fields[key].description or ""
        return ConfigIssue(where, f"missing required argument of {what}", hint=desc)
    message = error["msg"].removeprefix("Value error, ")
    message = message.replace("Input should be", "must be")
    for words, sign in _COMPARISONS:
        message = message.replace(words, sign)
    return ConfigIssue(where, message, value=error.get("input"), has_value=True)


def _check_rules(func, schema, args: dict, failed: set, path: str, issues) -> None:
    """The function's rules across arguments, over the values that passed
    their own checks (defaults filled in)."""
    values = {
        name: info.default
        for name, info in schema.model_fields.items()
        if not info.is_required()
    }
    values.update(args)
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
        return unchecked(func)(**kwargs)
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


__all__ = ["build_block", "check_block", "construct", "find_function", "known"]
