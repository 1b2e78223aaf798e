"""What a sweep varies: `--grid PATH=V1,V2,...` lists and `--sample PATH=DIST`
distributions, read from the command line.

Values are read as overrides are (JSON when they parse, else text), so
`--grid training.batch_size=32,64` gives ints and `--grid x.name=a,b` strings.
Random values are drawn here, from a generator seeded by the config's
`system.seed`, so a sweep has the same trials on every engine and when it is
resumed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from optsvc.config import parse_overrides
from optsvc.errors import ConfigError

DISTRIBUTIONS = {
    "uniform": "uniform(LOW,HIGH)",
    "loguniform": "loguniform(LOW,HIGH)",
    "randint": "randint(LOW,HIGH) (HIGH excluded)",
    "choice": "choice(V1,V2,...)",
}
_CALL = re.compile(r"^\s*([a-z_]+)\s*\((.*)\)\s*$", re.S)


@dataclass(frozen=True)
class Distribution:
    """A random value for one config path: `kind` is one of DISTRIBUTIONS.

    >>> Distribution("loguniform", (1e-4, 1e-1)).draw(np.random.default_rng(0))
    0.00814489
    """

    kind: str
    args: tuple

    def draw(self, rng: np.random.Generator) -> Any:
        """One value; floats are rounded to 6 significant digits, which
        keeps trial names and configs readable."""
        if self.kind == "choice":
            return self.args[int(rng.integers(len(self.args)))]
        low, high = self.args
        if self.kind == "randint":
            return int(rng.integers(low, high))
        if self.kind == "loguniform":
            value = math.exp(rng.uniform(math.log(low), math.log(high)))
        else:
            value = rng.uniform(low, high)
        return float(f"{value:.6g}")

    def __str__(self) -> str:
        return f"{self.kind}({','.join(map(str, self.args))})"


def split_values(text: str) -> list[str]:
    """Split V1,V2,... at the commas outside brackets and quotes.

    >>> split_values('1,[2,3],"a,b"')
    ['1', '[2,3]', '"a,b"']
    """
    parts, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def _path_and_rest(text: str, option: str, example: str) -> tuple[str, str]:
    path, eq, rest = text.partition("=")
    path = path.strip().removeprefix("--").replace("-", "_")
    if not eq or not rest.strip() or "." not in path:
        raise ConfigError(
            f"{option} {text!r} is not PATH=VALUES; write it as {option} {example}"
        )
    return path, rest


def _value(path: str, text: str) -> Any:
    # The same reading as a `--path value` override on the command line.
    return parse_overrides([f"--{path}={text}"])[path]


def parse_grid(text: str) -> tuple[str, list[Any]]:
    """`PATH=V1,V2,...` into the dotted path and its values.

    >>> parse_grid("optimizer.learn_rate.initial_rate=0.001,0.01")
    ('optimizer.learn_rate.initial_rate', [0.001, 0.01])
    """
    example = "optimizer.learn_rate.initial_rate=0.001,0.003,0.01"
    path, rest = _path_and_rest(text, "--grid", example)
    raw = split_values(rest)
    if any(not v for v in raw):
        raise ConfigError(f"--grid {text!r} has an empty value; remove the extra comma")
    values = [_value(path, v) for v in raw]
    if len(set(map(repr, values))) != len(values):
        raise ConfigError(f"--grid {text!r} lists a value twice; list each value once")
    return path, values


# The widest bounds a distribution takes: numpy draws from HIGH - LOW, which
# must be finite (a float) or fit 64 bits (randint).
MAX_BOUND = 2**62


def parse_sample(text: str) -> tuple[str, Distribution]:
    """`PATH=DIST` into the dotted path and its distribution.

    >>> parse_sample("optimizer.beta1=uniform(0.8,0.99)")
    ('optimizer.beta1', Distribution(kind='uniform', args=(0.8, 0.99)))
    """
    known = ", ".join(DISTRIBUTIONS.values())
    path, rest = _path_and_rest(text, "--sample", "optimizer.L2=loguniform(1e-6,1e-2)")
    match = _CALL.match(rest)
    if not match or match.group(1) not in DISTRIBUTIONS:
        raise ConfigError(f"--sample {text!r}: the distribution must be one of {known}")
    kind = match.group(1)
    args = tuple(_value(path, v) for v in split_values(match.group(2)) if v)
    if kind == "choice":
        if not args:
            raise ConfigError(f"--sample {text!r}: choice() needs at least one value")
        return path, Distribution(kind, args)
    numbers = len(args) == 2 and all(
        isinstance(a, (int, float)) and not isinstance(a, bool) for a in args
    )
    if not numbers or not args[0] < args[1]:
        raise ConfigError(
            f"--sample {text!r}: {DISTRIBUTIONS[kind]} needs two numbers, LOW < HIGH"
        )
    if kind == "loguniform" and args[0] <= 0:
        raise ConfigError(f"--sample {text!r}: loguniform needs LOW > 0")
    if not all(abs(a) <= MAX_BOUND for a in args):  # numpy's draw must hold HIGH-LOW
        raise ConfigError(
            f"--sample {text!r}: LOW and HIGH must lie within +-{MAX_BOUND:.3g}"
        )
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        raise ConfigError(f"--sample {text!r}: randint needs two integers")
    return path, Distribution(kind, args)
