"""What a registered function's arguments accept, declared once, on its signature.

Each argument that a config may set is annotated with its type and an `Arg`
giving its meaning and range::

    @registries.schedules.register("warmup_cosine.v1")
    @checked(WARMUP_WITHIN_TOTAL)
    def warmup_cosine(
        initial_rate: Annotated[float, Arg("peak value, reached after warmup", ge=0)],
        warmup_steps: Annotated[int, Arg("steps of linear warmup", ge=0)],
        ...

That one declaration drives both checks: `@checked` tests each call from
Python against it, and `optsvc.config.blocks` checks a config block against
it (`check_arguments`) for `optsvc validate`. So a value is
accepted from Python exactly when it is accepted in a config; a `Rule` that
must stay looser from Python (for Thinc's sake) says so where it is declared
(`Rule.config_only`). What the types accept:

- `float`: a finite real number (ints too), never a bool.
- `int`: a whole number whose size is below 2**63, never a bool.
- `bool`: True or False. `str`: a string. `Literal[...]`: one of the literals.
- `list[int]`, `list[float]`: a list (from Python, a tuple too) of such numbers.
- a class, e.g. `Schedule[float]`: an instance (in a config, a nested block).
- a hyperparameter, `float | list | ... | Schedule`: a number, a non-empty list
  of numbers, or something the function turns into a schedule itself (from
  Python, a Schedule or a generator; in a config, a nested block).
- `X | None`: X, or None.

This module imports neither pydantic nor confection: the optimizer library
does not depend on the config layer.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, replace
from typing import Annotated, Any, Literal, Union

import numpy as np

from optsvc.errors import ConfigError

# Step counts and sizes beyond this are mistakes (and overflow float maths).
MAX_INT = 2**63 - 1
# Arguments of registered functions that configs never set.
NOT_CONFIGURABLE = frozenset({"ops"})


@dataclass(frozen=True)
class Arg:
    """An argument's meaning and range, e.g. `Arg("learning rate", ge=0)`."""

    desc: str = ""
    _: KW_ONLY
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def expected(self) -> str:
        """The range in words: `>= 0`, `in [0, 1)`, `> 0`."""
        if self.lt is not None and self.ge is not None:
            return f"in [{self.ge:g}, {self.lt:g})"
        if self.lt is not None and self.gt is not None:
            return f"in ({self.gt:g}, {self.lt:g})"
        bounds = [
            f"{sign} {bound:g}"
            for sign, bound in ((">=", self.ge), (">", self.gt), ("<=", self.le),
                                ("<", self.lt))
            if bound is not None
        ]  # fmt: skip
        return " and ".join(bounds)

    def in_range(self, x: float) -> bool:
        """Whether `x` lies within every bound."""
        return not (
            (self.ge is not None and x < self.ge)
            or (self.gt is not None and x <= self.gt)
            or (self.le is not None and x > self.le)
            or (self.lt is not None and x >= self.lt)
        )


# --- checks by kind: each returns what is wrong, or None --------------------------


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _number(arg: Arg, x: Any, what: str = "") -> str | None:
    if not _is_number(x):
        return f"{what}must be a number"
    try:
        finite = math.isfinite(x)
    except OverflowError:  # an int too large for a float, e.g. 10**400
        finite = False
    if not finite:
        return f"{what}must be a finite number"
    if not arg.in_range(x):
        return f"{what}must be {arg.expected()}"
    return None


def _integer(arg: Arg, x: Any, what: str = "") -> str | None:
    # A float that is a whole number counts, as in Thinc (20.0 steps).
    whole = isinstance(x, float) and x.is_integer()
    if isinstance(x, bool) or not (isinstance(x, numbers.Integral) or whole):
        return f"{what}must be a whole number"
    if abs(x) > MAX_INT:
        return f"{what}must be a whole number below 2**63"
    if not arg.in_range(x):
        return f"{what}must be {arg.expected()}"
    return None


def _items(
    check: Callable[..., str | None], arg: Arg, x: Any, prefix: str = "item "
) -> str | None:
    if not isinstance(x, (list, tuple)):
        return "must be a list"
    for i, item in enumerate(x):
        problem = check(arg, item, f"{prefix}{i} ")
        if problem:
            return problem
    return None


def _hyperparameter(arg: Arg, x: Any) -> str | None:
    """A number or a list of numbers is checked here; anything else (a
    Schedule, a generator) is the function's to turn into a schedule."""
    if isinstance(x, (list, tuple)):
        if not x:
            return "must be a number, a non-empty list or a schedule"
        return _items(_number, arg, x, "list item ")
    if isinstance(x, numbers.Number):
        return _number(arg, x)
    return None


# --- what a signature declares -------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One argument a config may set, as the function's signature declares it.

    kind: "number", "int", "bool", "str", "mapping", "choice", "ints", "numbers",
    "instance" (of `cls`), "hyper" (a hyperparameter) or "any".
    """

    name: str
    kind: str
    arg: Arg
    default: Any = inspect.Parameter.empty
    optional: bool = False
    choices: tuple = ()
    cls: type | None = None

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty

    def problem(self, x: Any) -> str | None:
        """What is wrong with `x` for this argument ("must be >= 0"), or None."""
        if x is None and self.optional:
            return None
        kind = self.kind
        if kind == "number":
            return _number(self.arg, x)
        if kind == "int":
            return _integer(self.arg, x)
        if kind in ("ints", "numbers"):
            return _items(_integer if kind == "ints" else _number, self.arg, x)
        if kind == "hyper":
            return _hyperparameter(self.arg, x)
        return self._other_problem(x)

    def _other_problem(self, x: Any) -> str | None:
        if self.kind == "bool" and not isinstance(x, (bool, np.bool_)):
            return "must be a boolean (true or false)"
        if self.kind == "str" and not isinstance(x, str):
            return "must be a string"
        if self.kind == "mapping" and not isinstance(x, dict):
            return "must be a mapping (a section, or {...})"
        if self.kind == "choice" and not any(
            type(x) is type(c) and x == c for c in self.choices
        ):
            return f"must be one of {', '.join(map(repr, self.choices))}"
        if self.kind == "instance" and not isinstance(x, self.cls):
            return f"must be a {self.cls.__name__}"
        return None


def _strip_optional(hint: Any) -> tuple[Any, bool]:
    if typing.get_origin(hint) in (Union, types.UnionType):
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(rest) < len(typing.get_args(hint)):
            # Several types left: _kind reads them past the None.
            return (rest[0] if len(rest) == 1 else hint), True
    return hint, False


def _kind(hint: Any) -> tuple[str, tuple, type | None]:
    """(kind, choices, class) of a type without Annotated or None."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    simple = {bool: "bool", int: "int", float: "number", str: "str"}
    if hint is Any:  # a class of its own since Python 3.11
        return "any", (), None
    if hint in simple:
        return simple[hint], (), None
    if origin is Literal:
        return "choice", args, None
    if origin in (Union, types.UnionType):
        kinds = {typing.get_origin(a) or a for a in args}
        return ("hyper" if {float, list} <= kinds else "any"), (), None
    if hint is dict or origin is dict:
        return "mapping", (), None
    if origin in (list, tuple, Sequence) and args and args[0] in (int, float):
        return ("ints" if args[0] is int else "numbers"), (), None
    cls = origin or hint
    if isinstance(cls, type) and cls not in (list, tuple, dict, object):
        return "instance", (), cls
    return "any", (), None


def _param(p: inspect.Parameter, hint: Any) -> Param:
    # Python < 3.11 wraps `Annotated[...] = None` in Optional: strip it first.
    hint, optional = _strip_optional(hint)
    arg = Arg()
    if typing.get_origin(hint) is Annotated:
        arg = next((m for m in hint.__metadata__ if isinstance(m, Arg)), arg)
        hint = hint.__origin__
    hint, also_optional = _strip_optional(hint)
    kind, choices, cls = _kind(hint)
    optional = optional or also_optional
    return Param(p.name, kind, arg, p.default, optional, choices, cls)


@functools.cache
def params_of(func: Callable) -> tuple[Param, ...]:
    """The arguments of `func` that a config may set, with what each accepts
    (a function without annotations accepts anything)."""
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except Exception:  # a third-party annotation that does not resolve
        hints = {}
    return tuple(
        _param(p, hints.get(p.name, Any))
        for p in inspect.signature(func).parameters.values()
        if p.name not in NOT_CONFIGURABLE
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    )


# --- rules across arguments, and the check of a Python call ---------------------------


@dataclass(frozen=True)
class Rule:
    """A condition on several arguments of one function, e.g. warmup_steps <=
    total_steps. `check` takes those arguments by name and returns what is
    wrong, or None; the problem is reported at argument `at` (None: the whole
    call). It runs only once each of its arguments passed its own check.
    `python=False`: configs only, for Thinc's sake (see `config_only`)."""

    check: Callable[..., str | None]
    at: str | None = None
    python: bool = True

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(inspect.signature(self.check).parameters)

    def config_only(self) -> Rule:
        """The same rule for configs, while calls from Python keep Thinc's
        looser contract."""
        return replace(self, python=False)

    def problem(self, values: Mapping[str, Any]) -> str | None:
        """What is wrong with these argument values, or None (also when one
        of the rule's arguments is missing)."""
        if not all(name in values for name in self.names):
            return None
        return self.check(**{name: values[name] for name in self.names})


@dataclass(frozen=True)
class _Checked:
    raw: Callable
    rules: tuple[Rule, ...]
    signature: inspect.Signature


_CHECKED: dict[Callable, _Checked] = {}


def checked(*rules: Rule) -> Callable[[Callable], Callable]:
    """Check every call of the decorated function against the `Arg`s of its
    signature, then `rules`; a bad value is a ConfigError naming the argument.

    >>> @checked()
    ... def halve(rate: Annotated[float, Arg("the value", ge=0)]) -> float:
    ...     return rate / 2
    >>> halve(-1.0)
    Traceback (most recent call last):
    optsvc.errors.ConfigError: halve: 'rate' must be >= 0, got -1.0
    """

    def decorate(func: Callable) -> Callable:
        @functools.wraps(func)
        def call(*args: Any, **kwargs: Any) -> Any:
            args, kwargs = _check_call(call, args, kwargs)
            return func(*args, **kwargs)

        _CHECKED[call] = _Checked(func, rules, inspect.signature(func))
        return call

    return decorate


def rules_of(func: Callable) -> tuple[Rule, ...]:
    """The cross-argument rules declared with `@checked` (none otherwise)."""
    found = _CHECKED.get(func)
    return found.rules if found else ()


def unchecked(func: Callable) -> Callable:
    """The function without its Python-side check, for callers (the config
    layer) that checked the arguments against the same declarations already."""
    found = _CHECKED.get(func)
    return found.raw if found else func


def show(value: Any) -> str:
    """A value for a message, cut to a readable length."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def whole_numbers(func: Callable, arguments: dict[str, Any]) -> dict[str, Any]:
    """`arguments` for `func`, each whole-number argument given as a float
    (20.0) turned into an int."""
    ints = {p.name for p in params_of(func) if p.kind == "int"}
    return {
        k: int(v) if k in ints and isinstance(v, float) else v
        for k, v in arguments.items()
    }


def _check_call(func: Callable, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The call's arguments, checked (ConfigError) and as the function takes
    them (`whole_numbers`)."""
    checked_ = _CHECKED[func]
    try:
        bound = checked_.signature.bind(*args, **kwargs)
    except TypeError:
        return args, kwargs  # the call itself raises the usual TypeError
    bound.apply_defaults()
    values = bound.arguments
    name = func.__qualname__.removesuffix(".__init__")  # a class: its name
    for param in params_of(func):
        problem = param.problem(values[param.name])
        if problem:
            value = show(values[param.name])
            raise ConfigError(f"{name}: '{param.name}' {problem}, got {value}")
    for rule in checked_.rules:
        problem = rule.problem(values) if rule.python else None
        if problem and rule.at:
            raise ConfigError(
                f"{name}: '{rule.at}' {problem}, got {show(values[rule.at])}"
            )
        if problem:
            raise ConfigError(f"{name}: {problem}")
    bound.arguments.update(whole_numbers(func, values))
    return bound.args, bound.kwargs


__all__ = [
    "Arg",
    "Param",
    "Rule",
    "checked",
    "params_of",
    "rules_of",
    "unchecked",
    "whole_numbers",
    "MAX_INT",
    "NOT_CONFIGURABLE",
]
