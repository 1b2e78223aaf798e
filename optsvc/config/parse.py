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
from optsvc.config.schema import SystemSection, TrainingSection
from optsvc.errors import ConfigError, ConfigIssue, StateError
from optsvc.fileio import TEXT_LIMIT, read_regular
from optsvc.spec import params_of

# Sections that mark a spaCy config: optsvc checks only its optimizer block.
SPACY_SECTIONS = {"nlp", "components", "corpora", "paths", "pretraining", "initialize"}
OPTSVC_SECTIONS = ("system", "data", "model", "training", "optimizer")


def did_you_mean(word: str, choices: Iterable[str], cutoff: float = 0.6) -> str:
    """'did you mean X?' for the closest of `choices`, or ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
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
    return config_from_str(read_config_text(path), overrides, source=str(path))


def read_config_text(path: str | Path) -> str:
    """The text of a config file, as `load_config` reads it; ConfigError for
    a missing, unreadable or non-UTF-8 file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file '{path}' does not exist; check the path")
    if path.is_dir():
        raise ConfigError(f"'{path}' is a folder; give the path of a .cfg file")
    try:
        text = read_regular(path, TEXT_LIMIT, "config file").decode("utf8")
    except StateError as err:
        raise ConfigError(str(err)) from None
    except UnicodeDecodeError:
        raise ConfigError(
            f"config file '{path}' is not UTF-8 text; is it the right file?"
        ) from None
    except OSError as err:
        raise ConfigError(f"cannot read config file '{path}': {err.strerror}") from None
    return text


# The most sections a config may have (spaCy's have a few dozen): confection's
# parser compares every section with every other, so 100,000 took minutes.
MAX_SECTIONS = 2000
_SECTION_LINE = re.compile(r"^[ \t]*\[", re.MULTILINE)


def config_from_str(
    text: str, overrides: dict[str, Any] | None = None, *, source: str = "config"
) -> Config:
    """`load_config` for text already in memory."""
    if not text.strip():
        raise ConfigError(
            f"{source} is empty; it needs at least an [optimizer] section"
        )
    sections = sum(1 for _ in _SECTION_LINE.finditer(text))
    if sections > MAX_SECTIONS:  # confection checks each section against all
        raise ConfigError(
            f"{source} has {sections:,} sections, more than the {MAX_SECTIONS:,} "
            "optsvc reads; is it the right file?"
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
    if overrides or "$" in text:  # something to interpolate
        try:  # confection resolves ${...} on its own serialization of the config
            config = config.interpolate()
        except Exception as err:
            undefined = undefined_variables(text, config)
            if undefined:
                raise ConfigError(undefined) from None
            raise ConfigError(f"{source}: {_one_line(err, source)}") from None
    config.is_interpolated = True
    if not isinstance(config, dict) or not config:
        raise ConfigError(f"{source} holds no sections")
    _refuse_cycles(config)
    return config


_VARIABLE = re.compile(r"\$\{([^}]*)\}")
_HEADER = re.compile(r"^\s*\[([^\]]+)\]")
_KEY = re.compile(r"^\s*([^=\s#;][^=]*?)\s*=")


def variable_users(text: str, variable: str) -> list[str]:
    """The dotted path of every key whose value uses `${variable}`."""
    found, section = [], ""
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            section = header.group(1).strip()
            continue
        key = _KEY.match(line)
        if key and section and variable in map(str.strip, _VARIABLE.findall(line)):
            found.append(f"{section}.{key.group(1)}")
    return found


def undefined_variables(text: str, config: dict) -> list[ConfigIssue]:
    """One issue per `${...}` variable that names nothing in `config` (read
    without interpolation), with its line and a did-you-mean from the
    sections and keys that exist."""
    issues, section = [], ""
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        if header:
            section = header.group(1).strip()
            continue
        key = _KEY.match(line)
        where = f"{section}.{key.group(1)}" if key and section else section
        for name in _VARIABLE.findall(line):
            problem = _missing(config, name.strip())
            if problem:
                message = (
                    f"undefined variable ${{{name}}} in an interpolation "
                    f"(line {number}): {problem[0]}"
                )
                issues.append(ConfigIssue(where, message, hint=problem[1]))
    return issues


def _missing(config: dict, name: str) -> tuple[str, str] | None:
    """(what is missing, a hint) for a dotted variable, or None if it exists."""
    node: Any = config
    parts = name.split(".")
    for i, part in enumerate(parts):
        if isinstance(node, dict) and part in node:
            node = node[part]
            continue
        if i == 0 or not isinstance(node, dict):
            sections = sorted(_section_paths(config))
            hint = did_you_mean(name.rsplit(".", 1)[0], sections)
            return (
                f"there is no section [{'.'.join(parts[: max(1, i)])}]",
                hint or f"sections: {', '.join(sections) or 'none'}",
            )
        here = ".".join(parts[:i])
        keys = [str(k) for k in node]
        hint = did_you_mean(part, keys) or f"[{here}] has: {', '.join(keys)}"
        return f"[{here}] has no '{part}'", hint
    return None


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
    if not issues:
        issues = _new_keys_outside_checks(config, overrides)
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
    if issues:
        raise ConfigError(issues)


def _new_keys_outside_checks(config: dict, overrides: dict) -> list[ConfigIssue]:
    """The rule for overrides: one may add a key only in a section optsvc
    checks (which then reports a misspelt key itself); elsewhere
    (`--nlp.langg`) it must name a key the config has, or nothing would ever
    tell a typo from a new key."""
    checked = find_sections(config).checked
    issues = []
    for name in overrides:
        section, key = name.rsplit(".", 1)
        keys = list(get_path(config, section))
        if key in keys or any(
            section == c or section.startswith(c + ".") for c in checked
        ):
            continue
        issues.append(
            ConfigIssue(
                name,
                f"override names a key that [{section}] does not have, in a "
                "section optsvc does not check",
                hint=did_you_mean(key, keys) or f"[{section}] has: {', '.join(keys)}",
            )
        )
    return issues


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

# The registries whose blocks optsvc checks; any other (Thinc's @layers,
# spaCy's @readers, ...) marks a Thinc or spaCy config.
OWN_REGISTRIES = tuple(registries.__all__)
# Where Thinc and spaCy keep the optimizer a run trains with, by preference.
PREFERRED_BLOCKS = ("training.optimizer", "optimizer")


@dataclass
class ConfigSections:
    """Which sections a config has and where its optimizer block is.

    optimizer_path: the optimizer block validate builds and show-schedule
    shows; schedule_path: a standalone schedule block (`[learn_rate]`) shown
    instead when the config has no optimizer block or one is picked. A
    foreign config (Thinc's or spaCy's) has only its optimizer and schedule
    blocks checked; every other section is listed as not checked."""

    optimizer_path: str | None
    is_spacy: bool
    checked: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)
    optimizer_blocks: list[str] = field(default_factory=list)
    schedule_blocks: list[str] = field(default_factory=list)
    is_foreign: bool = False
    schedule_path: str | None = None

    @property
    def blocks(self) -> list[str]:
        """Every optimizer and standalone schedule block found."""
        return [*self.optimizer_blocks, *self.schedule_blocks]


def _registry_of(node: dict) -> str | None:
    return next((str(k)[1:] for k in node if str(k).startswith("@")), None)


def _find_blocks(node: dict, prefix: str, found: dict[str, list[str]]) -> None:
    """Optimizer blocks and standalone schedule blocks, at any depth (a
    block's own nested blocks are its arguments, not standalone)."""
    for key, value in node.items():
        if not isinstance(value, dict):
            continue
        path = f"{prefix}{key}"
        registry = _registry_of(value)
        if registry == "optimizers" or path in PREFERRED_BLOCKS:
            found["optimizers"].append(path)
        elif registry == "schedules":
            found["schedules"].append(path)
        elif registry is None or _is_own_typo(registry):
            _find_blocks(value, path + ".", found)
        found["registries"].append(registry or "")


def _is_own_typo(registry: str) -> bool:
    """`@schedulez`: a misspelt registry of optsvc's, not a foreign one."""
    close = did_you_mean(registry, OWN_REGISTRIES, cutoff=0.8)
    return registry in OWN_REGISTRIES or bool(close)


def _looks_foreign(config: dict, registries_named: list[str]) -> bool:
    """A Thinc or spaCy config: a spaCy section, a block of a registry optsvc
    does not have (@layers), a section that is neither optsvc's nor a
    misspelling of one ([hyper_params]), or a [training] key likewise
    (Thinc's n_iter)."""
    if SPACY_SECTIONS & set(config):
        return True
    if any(r and not _is_own_typo(r) for r in registries_named):
        return True
    if any(
        isinstance(value, dict)
        and name not in OPTSVC_SECTIONS
        and not did_you_mean(name, OPTSVC_SECTIONS)
        for name, value in config.items()
    ):
        return True
    # Thinc's [training] holds its own loop's settings (n_iter, ...).
    training = config.get("training")
    fields = TrainingSection.model_fields
    return isinstance(training, dict) and any(
        not isinstance(value, dict)
        and key not in fields
        and not did_you_mean(key, fields)
        for key, value in training.items()
    )


def find_sections(config: dict, block: str | None = None) -> ConfigSections:
    """Find the optimizer blocks (`[optimizer]`, spaCy's `[training.optimizer]`,
    `[pretraining.optimizer]`, ...) and standalone schedule blocks, pick the
    one to build (`block`, else the one Thinc or spaCy would train with) and
    tell which sections optsvc checks. Raises ConfigError for a `block` that
    the config does not hold."""
    found: dict[str, list[str]] = {"optimizers": [], "schedules": [], "registries": []}
    _find_blocks(config, "", found)
    foreign = _looks_foreign(config, found["registries"])
    if not foreign:  # optsvc's own config: only its two places count
        found["optimizers"] = [p for p in found["optimizers"] if p in PREFERRED_BLOCKS]
        found["schedules"] = []
    sections = ConfigSections(
        None,
        bool(SPACY_SECTIONS & set(config)),
        optimizer_blocks=sorted(
            found["optimizers"], key=lambda p: _preference(p, foreign)
        ),
        schedule_blocks=found["schedules"],
        is_foreign=foreign,
    )
    _pick(sections, block, config)
    if foreign:
        sections.checked = sections.blocks
        sections.unchecked = _unchecked(config, sections.checked)
    else:
        checked = [s for s in config if s in OPTSVC_SECTIONS]
        sections.checked = checked
        sections.unchecked = [s for s in config if s not in OPTSVC_SECTIONS]
    return sections


def _preference(path: str, foreign: bool) -> int:
    """spaCy trains from [training.optimizer]; optsvc's own configs name
    [optimizer] first (having both is an error there)."""
    order = PREFERRED_BLOCKS if foreign else PREFERRED_BLOCKS[::-1]
    return order.index(path) if path in order else 2


def _pick(sections: ConfigSections, block: str | None, config: dict) -> None:
    if block is None:
        if sections.optimizer_blocks:
            sections.optimizer_path = sections.optimizer_blocks[0]
        elif len(sections.schedule_blocks) == 1:
            sections.schedule_path = sections.schedule_blocks[0]
        return
    node: Any = config
    for part in block.split("."):  # a schedule inside another block, asked for
        node = node.get(part) if isinstance(node, dict) else None
    if block in sections.optimizer_blocks:
        sections.optimizer_path = block
    elif block in sections.schedule_blocks or (
        isinstance(node, dict) and _registry_of(node) == "schedules"
    ):
        sections.schedule_path = block
    else:
        names = sections.blocks
        raise ConfigError(
            ConfigIssue(
                block,
                "--block names no optimizer or schedule block of the config",
                hint=did_you_mean(block, names)
                or f"blocks: {', '.join(names) or 'none'}",
            )
        )


def _unchecked(config: dict, checked: list[str]) -> list[str]:
    """Top-level sections a foreign config's check left out, with the ones
    holding a checked block named as 'training (other than ...)'."""
    left = []
    for name in config:
        inner = [p for p in checked if p.startswith(f"{name}.")]
        if name in checked:
            continue
        if inner:
            left.append(f"{name} (other than {', '.join(inner)})")
        else:
            left.append(name)
    return sorted(left)


def config_to_str(config: dict) -> str:
    """A config dict as .cfg text."""
    return Config(config).to_str()


def get_path(config: dict, dotted: str) -> Any:
    """The value at a dotted path of a config."""
    node: Any = config
    for part in dotted.split("."):
        node = node[part]
    return node
