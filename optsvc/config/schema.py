"""pydantic schemas for every registered function and every config section.

A registered function's schema is derived from its signature and the
argument table `ARGS` below, which gives each argument's kind, range and a
one-line description (shown by `optsvc validate` and `optsvc registry`).
Every argument of every registered function must have an entry: a test
checks that, and that each entry's kind agrees with the annotation.
"""

from __future__ import annotations

import inspect
import math
import numbers
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictInt,
    StrictStr,
    create_model,
)

STRICT = ConfigDict(extra="forbid", strict=True)


class Nested:
    """A nested registered-function block that was checked on its own."""

    def __init__(self, registry: str, name: str) -> None:
        self.registry, self.name = registry, name

    def __repr__(self) -> str:
        return f"<{self.registry}: {self.name}>"


@dataclass(frozen=True)
class Arg:
    """What a registered function's argument accepts.

    kind: "hyper" (number, list of numbers or a schedule block), "number",
    "int", "bool", "str", "schedule", "ints", "numbers" (lists) or "choice".
    """

    kind: str
    desc: str
    ge: float | None = None
    gt: float | None = None
    lt: float | None = None
    le: float | None = None
    choices: tuple = ()

    def expected(self) -> str:
        bounds = []
        if self.ge is not None:
            bounds.append(f">= {self.ge:g}")
        if self.gt is not None:
            bounds.append(f"> {self.gt:g}")
        if self.le is not None:
            bounds.append(f"<= {self.le:g}")
        if self.lt is not None:
            bounds.append(f"< {self.lt:g}")
        if self.ge is not None and self.lt is not None:
            bounds = [f"in [{self.ge:g}, {self.lt:g})"]
        if self.gt is not None and self.lt is not None:
            bounds = [f"in ({self.gt:g}, {self.lt:g})"]
        return " and ".join(bounds)


def _range_ok(spec: Arg, x: float) -> bool:
    return not (
        (spec.ge is not None and x < spec.ge)
        or (spec.gt is not None and x <= spec.gt)
        or (spec.le is not None and x > spec.le)
        or (spec.lt is not None and x >= spec.lt)
    )


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _number(spec: Arg, x: Any, what: str = "") -> None:
    if not _is_number(x):
        raise ValueError(f"{what}must be a number")
    try:
        finite = math.isfinite(x)
    except OverflowError:  # an int too large for a float, e.g. 10**400
        finite = False
    if not finite:
        raise ValueError(f"{what}must be a finite number")
    if not _range_ok(spec, x):
        raise ValueError(f"{what}must be {spec.expected()}")


# Step counts and sizes beyond this are mistakes (and overflow float maths).
MAX_INT = 2**63 - 1


def _integer(spec: Arg, x: Any, what: str = "") -> None:
    if isinstance(x, bool) or not isinstance(x, int):
        raise ValueError(f"{what}must be a whole number")
    if abs(x) > MAX_INT:
        raise ValueError(f"{what}must be a whole number below 2**63")
    if not _range_ok(spec, x):
        raise ValueError(f"{what}must be {spec.expected()}")


def _validator(spec: Arg):
    def check(x: Any) -> Any:
        if spec.kind == "hyper":
            if isinstance(x, Nested):
                return x
            if isinstance(x, list):
                if not x:
                    raise ValueError("must be a number, a non-empty list or a schedule")
                for i, item in enumerate(x):
                    _number(spec, item, f"list item {i} ")
                return x
            if not _is_number(x):
                raise ValueError(
                    "must be a number, a list of numbers or a [schedule] block "
                    '(a section with @schedules = "...")'
                )
            _number(spec, x)
        elif spec.kind == "schedule":
            if not isinstance(x, Nested) or x.registry != "schedules":
                raise ValueError(
                    'must be a [schedule] block (a section with @schedules = "...")'
                )
        elif spec.kind == "number":
            _number(spec, x)
        elif spec.kind == "int":
            _integer(spec, x)
        elif spec.kind in ("ints", "numbers"):
            if not isinstance(x, list):
                raise ValueError("must be a list")
            for i, item in enumerate(x):
                (_integer if spec.kind == "ints" else _number)(spec, item, f"item {i} ")
        elif spec.kind == "choice":
            if x not in spec.choices:
                raise ValueError(f"must be one of {', '.join(map(repr, spec.choices))}")
        return x

    return PlainValidator(check)


def field_type(spec: Arg) -> Any:
    """The pydantic type of an argument."""
    if spec.kind == "bool":
        return StrictBool
    if spec.kind == "str":
        return StrictStr
    return Annotated[Any, _validator(spec)]


_BETA = "exponential decay rate of the {} moment estimate"
ARGS: dict[str, Arg] = {
    # optimizers
    "learn_rate": Arg("hyper", "learning rate", ge=0),
    "L2": Arg("hyper", "L2 penalty (weight decay when L2_is_weight_decay)", ge=0),
    "beta1": Arg("hyper", _BETA.format("first"), ge=0, lt=1),
    "beta2": Arg("hyper", _BETA.format("second"), ge=0, lt=1),
    "eps": Arg("hyper", "added to the denominator for numerical stability", gt=0),
    "grad_clip": Arg("hyper", "clip each gradient to this L2 norm (0: off)", ge=0),
    "weight_decay": Arg("hyper", "decoupled weight decay (RAdam's name for L2)", ge=0),
    "L2_is_weight_decay": Arg("bool", "apply L2 as decoupled weight decay (AdamW)"),
    "use_averages": Arg("bool", "keep moving averages of the parameters"),
    # schedules
    "rate": Arg("number", "the value"),
    "steps": Arg("int", "number of steps", ge=0),
    "schedule": Arg("schedule", "the schedule to wrap"),
    "base_rate": Arg("number", "value at step 0"),
    "decay": Arg("number", "decay per step"),
    "t": Arg("number", "step offset"),
    "start": Arg("number", "value at step 0"),
    "stop": Arg("number", "the value is clipped at this bound"),
    "compound": Arg("number", "factor per step"),
    "initial_rate": Arg("number", "peak value, reached after warmup", ge=0),
    "warmup_steps": Arg("int", "steps of linear warmup", ge=0),
    "total_steps": Arg("int", "step at which the schedule ends", ge=1),
    "max_rate": Arg("number", "peak value", ge=0),
    "num_steps": Arg("int", "length of the schedule", ge=1),
    "cut_frac": Arg("number", "fraction of steps spent increasing", gt=0, lt=1),
    "ratio": Arg("number", "how much smaller the lowest value is than the peak", gt=0),
    "min_lr": Arg("number", "lowest value", ge=0),
    "max_lr": Arg("number", "highest value", ge=0),
    "period": Arg("int", "half the length of a cycle, in steps", ge=1),
    "max_patience": Arg("int", "evaluations without improvement to a plateau", ge=1),
    "scale": Arg("number", "factor applied at each plateau", ge=0),
    "final_rate": Arg("number", "the value never goes below this floor", ge=0),
    "decay_rate": Arg("number", "factor per decay_steps", ge=0),
    "decay_steps": Arg("int", "steps per factor of decay_rate", ge=1),
    "staircase": Arg("bool", "decay in discrete steps"),
    "step_size": Arg("int", "steps between decays", ge=1),
    "gamma": Arg("number", "factor per decay", ge=0),
    "boundaries": Arg("ints", "steps where the value changes", ge=0),
    "values": Arg("numbers", "one more value than boundaries"),
    "pct_start": Arg("number", "fraction of steps spent increasing", gt=0, lt=1),
    "div_factor": Arg("number", "initial value = max_rate / div_factor", gt=0),
    "final_div_factor": Arg("number", "final value = initial / final_div_factor", gt=0),
    # data sets
    "n_samples": Arg("int", "examples to generate (train + dev)", ge=2),
    "n_features": Arg("int", "input dimensions", ge=1),
    "n_classes": Arg("int", "number of classes", ge=2),
    "n_outputs": Arg("int", "regression targets per example", ge=1),
    "spread": Arg("number", "standard deviation of each cluster", gt=0),
    "noise": Arg("number", "standard deviation of the added noise", ge=0),
    "turns": Arg("number", "turns of each spiral arm", gt=0),
    "nonlinear": Arg("bool", "add a nonlinear part to the targets"),
    "dev_fraction": Arg(
        "number", "share of examples held out for evaluation", gt=0, lt=1
    ),
    "seed": Arg("int", "random seed of the generator", ge=0),
    # models
    "hidden_width": Arg("int", "units in each hidden layer", ge=1),
    "depth": Arg("int", "number of hidden layers", ge=1),
    "activation": Arg("choice", "hidden activation", choices=("relu", "tanh")),
}

# Arguments of registered functions that configs never set.
NOT_CONFIGURABLE = {"ops"}


def config_params(func) -> list[inspect.Parameter]:
    """The arguments of a registered function that a config may set."""
    return [
        p
        for p in inspect.signature(func).parameters.values()
        if p.name not in NOT_CONFIGURABLE
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


@cache
def function_schema(registry_name: str, func_name: str, func) -> type[BaseModel]:
    """The pydantic model of a registered function's config block."""
    fields: dict[str, Any] = {}
    for param in config_params(func):
        spec = ARGS.get(param.name)
        if spec is None:
            raise KeyError(
                f"{registry_name} '{func_name}': argument '{param.name}' has no "
                "entry in optsvc.config.schema.ARGS"
            )
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (field_type(spec), Field(default, description=spec.desc))
    model_name = "".join(c for c in func_name.title() if c.isalnum()) + "Schema"
    return create_model(model_name, __config__=STRICT, **fields)


# --- training sections -------------------------------------------------------------


def _int(ge: int, desc: str):
    return Annotated[StrictInt, Field(ge=ge, le=MAX_INT, description=desc)]


class SystemSection(BaseModel):
    """[system]: seed and device."""

    model_config = STRICT
    seed: _int(0, "seed for data order, initialisation and everything random") = 0
    gpu_id: _int(-1, "GPU to run on; -1 is the CPU") = -1


class TrainingSection(BaseModel):
    """[training]: the loop's settings (its optimizer block is checked on its own)."""

    model_config = STRICT
    max_steps: _int(1, "optimizer steps to run") = 1000
    batch_size: _int(1, "examples per step") = 64
    eval_frequency: _int(1, "steps between evaluations on the dev split") = 100
    checkpoint_frequency: _int(1, "steps between checkpoints") = 500
    keep_checkpoints: _int(1, "how many checkpoints to keep") = 3
    patience: _int(0, "evaluations without improvement before stopping; 0: never") = 0
    nonfinite: Literal["refuse", "skip"] = Field(
        "refuse",
        description="a NaN/inf gradient or loss: stop with an error, or skip the step",
    )


SECTIONS: dict[str, type[BaseModel]] = {
    "system": SystemSection,
    "training": TrainingSection,
}
