"""Reading config files: the text, command-line overrides, and where the
optimizer block stands. Every user mistake becomes a `ConfigError` holding
one `ConfigIssue` per problem, each naming the dotted config path."""

from __future__ import annotations

import copy
import difflib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confection import Config

from optsvc import registries
from optsvc.config.schema import SystemSection
from optsvc.errors import OptsvcError
from optsvc.fileio import TEXT_LIMIT, FileReadError, read_regular
from optsvc.spec import params_of

# Sections that mark a spaCy config: optsvc checks only its optimizer block.
SPACY_SECTIONS = {"nlp", "components", "corpora", "paths", "pretraining", "initialize"}
OPTSVC_SECTIONS = ("system", "data", "model", "training", "optimizer")


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config: where, what was given, and what is expected."""

    path: str
    message: str
    value: Any = None
    has_value: bool = False
    hint: str = ""

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        if self.has_value:
            text += f", got {_show(self.value)}"
        if self.hint:
            text += f" ({self.hint})"
        return text


class ConfigError(OptsvcError, ValueError):
    """A config that cannot be used; `.issues` lists every problem found."""

    def __init__(self, issues: Sequence[ConfigIssue] | ConfigIssue | str):
        if isinstance(issues, str):
            issues = [ConfigIssue("", issues)]
        elif isinstance(issues, ConfigIssue):
            issues = [issues]
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a section"
    try:
        if isinstance(value, (str, list, bool)) or value is None:
            text = json.dumps(value)  # as configs write them: "a", [1, 2], true, null
        else:
            text = repr(value)
    except (ValueError, RecursionError):  # e.g. a list that holds itself
        text = "a value that refers to itself"
    return text if len(text) <= 80 else text[:77] + "..."


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """'did you mean X?' for the closest of `choices`, or ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else ""


# --- overrides --------------------------------------------------------------------


def parse_overrides(args: Sequence[str]) -> dict[str, Any]:
    """spaCy-style dotted overrides, `--training.max_steps 500` or
    `--optimizer.learn_rate=0.01`, into {"training.max_steps": 500, ...}.
    Values are read as JSON when they parse, else kept as strings.

    >>> parse_overrides(["--training.max_steps", "500", "--x.name=adam"])
    {'training.max_steps': 500, 'x.name': 'adam'}
    """
    overrides: dict[str, Any] = {}
    issues = []
    args = list(args)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("--") or len(arg) <= 2:
            issues.append(
                ConfigIssue(
                    "",
                    f"unexpected argument {arg!r}",
                    hint="overrides look like --section.key value",
                )
            )
            continue
        name, eq, value = arg[2:].partition("=")
        if not eq:
            if i >= len(args) or args[i].startswith("--"):
                issues.append(
                    ConfigIssue(
                        name, "override has no value", hint=f"use --{name} VALUE"
                    )
                )
                continue
            value = args[i]
            i += 1
        if "." not in name:
            issues.append(
                ConfigIssue(
                    name,
                    "override must name a section and a key",
                    hint=f"e.g. --{_section_for(name)}.{name} VALUE",
                )
            )
            continue
        overrides[name.replace("-", "_")] = _parse_value(value)
    if issues:
        raise ConfigError(issues)
    return overrides


def _section_for(key: str) -> str:
    """The section a bare key most likely belongs to, for a hint."""
    if key in SystemSection.model_fields:
        return "system"
    optimizers = registries.optimizers.get_all().values()
    if any(p.name == key for func in optimizers for p in params_of(func)):
        return "optimizer"
    return "training"


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


# --- loading ------------------------------------------------------------------------


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Read and interpolate a config file, applying dotted `overrides`.
    Raises ConfigError (never a parser traceback) for a missing, unreadable,
    empty or malformed file and for overrides that do not fit it."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file '{path}' does not exist; check the path")
    if path.is_dir():
        raise ConfigError(f"'{path}' is a folder; give the path of a .cfg file")
    try:
        text = read_regular(path, TEXT_LIMIT, "config file").decode("utf8")
    except FileReadError as err:
        raise ConfigError(str(err)) from None
    except UnicodeDecodeError:
        raise ConfigError(
            f"config file '{path}' is not UTF-8 text; is it the right file?"
        ) from None
    except OSError as err:
        raise ConfigError(f"cannot read config file '{path}': {err.strerror}") from None
    return config_from_str(text, overrides, source=str(path))


def config_from_str(
    text: str, overrides: dict[str, Any] | None = None, *, source: str = "config"
) -> Config:
    """`load_config` for text already in memory."""
    if not text.strip():
        raise ConfigError(
            f"{source} is empty; it needs at least an [optimizer] section"
        )
    overrides = dict(overrides or {})
    try:  # the text is parsed once; ${...} is resolved below
        config = Config().from_str(text, interpolate=False)
    except Exception as err:  # confection/configparser raise many kinds
        raise ConfigError(
            f"{source} is not a valid config file: {_one_line(err, source)}"
        ) from None
    _check_override_sections(config, overrides)
    _set_values(config, overrides)
    _check_references(config, text, source)
    if overrides or "$" in text:  # something to interpolate
        try:  # confection resolves ${...} on its own serialization of the config
            config = config.interpolate()
        except Exception as err:
            raise ConfigError(f"{source}: {_one_line(err, source)}") from None
    config.is_interpolated = True
    if not isinstance(config, dict) or not config:
        raise ConfigError(f"{source} holds no sections")
    _refuse_cycles(config)
    return config


def with_overrides(config: dict, overrides: dict[str, Any]) -> dict:
    """A copy of a config already read, with dotted `overrides` applied."""
    _check_override_sections(config, overrides)
    config = copy.deepcopy(config)
    _set_values(config, overrides)
    return config


def _check_override_sections(config: dict, overrides: dict[str, Any]) -> None:
    issues = [
        ConfigIssue(
            name,
            "override names a section that is not in the config",
            hint=did_you_mean(name.rsplit(".", 1)[0], _section_paths(config))
            or f"sections: {', '.join(sorted(_section_paths(config)))}",
        )
        for name in overrides
        if not _has_section(config, name.rsplit(".", 1)[0])
    ]
    # `--a.b 1 --a.b.c 2`: the first replaces the section the second sets a
    # value in, so neither order can mean what was asked.
    issues += [
        ConfigIssue(
            inner,
            f"sets a value inside '{outer}', which another override replaces",
            hint=f"give --{outer} or --{inner}, not both",
        )
        for outer in overrides
        for inner in overrides
        if inner.startswith(outer + ".")
    ]
    # A section optsvc does not check (spaCy's [nlp], Thinc's [hyper_params]):
    # nothing else would catch a misspelt key, so it must be one that is there.
    issues += [
        ConfigIssue(
            name,
            "override names a key that is not in the config",
            hint=did_you_mean(name, _value_paths(config))
            or "overrides of sections optsvc does not check must name existing keys",
        )
        for name in overrides
        if name.split(".", 1)[0] not in OPTSVC_SECTIONS
        and _has_section(config, name.rsplit(".", 1)[0])
        and name.rsplit(".", 1)[1] not in get_path(config, name.rsplit(".", 1)[0])
    ]
    if issues:
        raise ConfigError(issues)


_REFERENCE = re.compile(r"\$\{([^}]*)\}")


def _check_references(config: dict, text: str, source: str) -> None:
    """Every ${section.key} must name something the config has: say which
    one does not, on which line, and what there is (configparser's own
    message names neither)."""
    known = _section_paths(config) | _value_paths(config)
    issues = []
    for path, value in _values(config):
        for ref in _REFERENCE.findall(value) if isinstance(value, str) else ():
            if ref in known:
                continue
            line = next(
                (
                    i
                    for i, row in enumerate(text.splitlines(), 1)
                    if f"${{{ref}}}" in row
                ),
                None,
            )
            where = f" (line {line} of {source})" if line else ""
            hint = did_you_mean(ref, known) or (
                f"sections: {', '.join(sorted(_section_paths(config)))}"
            )
            issues.append(
                ConfigIssue(
                    path, f"${{{ref}}} names nothing in the config{where}", hint=hint
                )
            )
    if issues:
        raise ConfigError(issues)


def _values(config: dict, prefix: str = ""):
    for key, value in config.items():
        here = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _values(value, here + ".")
        else:
            yield here, value


def _value_paths(config: dict) -> set[str]:
    return {path for path, _ in _values(config)}


def _set_values(config: dict, overrides: dict[str, Any]) -> None:
    for name, value in overrides.items():
        *sections, key = name.split(".")
        node = config
        for part in sections:
            node = node[part]
        node[key] = value


def _refuse_cycles(node: dict, path: str = "", inside: tuple = ()) -> None:
    """A ${section} reference inside that same section makes the config hold
    itself, which nothing can read or write: refuse it here, with its path."""
    inside = (*inside, (id(node), path))
    for key, value in node.items():
        if not isinstance(value, dict):
            continue
        here = f"{path}.{key}" if path else str(key)
        outer = next((p for i, p in inside if i == id(value)), None)
        if outer is not None:
            raise ConfigError(
                ConfigIssue(
                    here,
                    f"refers to [{outer or 'the whole config'}], a section it is "
                    "inside (a circular ${...} reference), so the config cannot "
                    "be read",
                    hint="remove that reference",
                )
            )
        _refuse_cycles(value, here, inside)


def _one_line(err: Exception, source: str = "config") -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = " ".join(" ".join(lines[:3]).split()) or type(err).__name__
    text = text.replace("'<string>'", f"'{source}'").replace("<string>", source)
    text = text.removeprefix("Config validation error ")
    return text if len(text) <= 300 else text[:297] + "..."


def _section_paths(config: dict, prefix: str = "") -> set[str]:
    paths = set()
    for key, value in config.items():
        if isinstance(value, dict):
            here = f"{prefix}{key}"
            paths.add(here)
            paths |= _section_paths(value, here + ".")
    return paths


def _has_section(config: dict, dotted: str) -> bool:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or not isinstance(node.get(part), dict):
            return False
        node = node[part]
    return True


# --- where things are ---


@dataclass
class ConfigSections:
    """Which sections a config has and where its optimizer block is."""

    optimizer_path: str | None
    is_spacy: bool
    checked: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)


def find_sections(config: dict) -> ConfigSections:
    """Find the optimizer block (`[optimizer]` or spaCy's `[training.optimizer]`)
    and tell which top-level sections optsvc checks."""
    is_spacy = bool(SPACY_SECTIONS & set(config))
    path = None
    if isinstance(config.get("optimizer"), dict):
        path = "optimizer"
    training = config.get("training")
    if isinstance(training, dict) and isinstance(training.get("optimizer"), dict):
        path = "training.optimizer" if path is None else path
    if is_spacy:
        checked = [path] if path else []
        unchecked = [s for s in config if s != "training" or path is None]
        if path == "training.optimizer":
            unchecked.append("training (other than training.optimizer)")
        return ConfigSections(
            path, True, checked, sorted(set(unchecked) - set(checked))
        )
    checked = [s for s in config if s in OPTSVC_SECTIONS]
    return ConfigSections(
        path, False, checked, [s for s in config if s not in OPTSVC_SECTIONS]
    )


def config_to_str(config: dict) -> str:
    """A config dict as .cfg text."""
    return Config(config).to_str()


def get_path(config: dict, dotted: str) -> Any:
    """The value at a dotted path of a config."""
    node: Any = config
    for part in dotted.split("."):
        node = node[part]
    return node
