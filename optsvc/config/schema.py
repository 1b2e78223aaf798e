"""pydantic schemas: one per registered function, and one per training section.

A registered function's schema is derived from its signature: each argument's
type, range and description are declared there, once (`optsvc.spec.Arg`), and
the same declaration checks the function's calls from Python. So "the schema
of warmup_linear" is `warmup_linear`'s signature in optsvc/schedules/thinc.py;
this module only turns such signatures into pydantic models. Values that name
another function (a nested `[optimizer.learn_rate]` block) are checked on
their own and stand here as a `Nested` marker.
"""

from __future__ import annotations

import numbers
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictInt,
    create_model,
)

from optsvc.loggers.base import LoggerFactory
from optsvc.schedules.base import Schedule
from optsvc.spec import MAX_INT, Param, params_of

STRICT = ConfigDict(extra="forbid", strict=True)
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


def _nested_problem(param: Param, x: Nested) -> str | None:
    """Whether a nested block may stand for this argument."""
    if param.kind == "hyper":
        return None if x.registry == "schedules" else f"must be {SCHEDULE_BLOCK}"
    if param.kind == "instance":
        wanted = BLOCK_REGISTRY.get(param.cls)
        if wanted in (None, x.registry):
            return None
        return f"must be {BLOCK_WORDS[wanted]}"
    return param.problem(x)


def _config_problem(param: Param, x: Any) -> str | None:
    """`param.problem(x)`, worded for a config file where a config writes a
    nested block instead of a Python object."""
    if isinstance(x, Nested):
        return _nested_problem(param, x)
    if x is None and param.optional:
        return None
    if param.kind == "hyper" and not isinstance(x, (numbers.Number, list)):
        return f"must be a number, a list of numbers or {SCHEDULE_BLOCK}"
    if param.kind == "instance" and param.cls in BLOCK_REGISTRY:
        return f"must be {BLOCK_WORDS[BLOCK_REGISTRY[param.cls]]}"
    return param.problem(x)


def _validator(param: Param) -> PlainValidator:
    def check(x: Any) -> Any:
        problem = _config_problem(param, x)
        if problem:
            raise ValueError(problem)
        return x

    return PlainValidator(check)


@cache
def function_schema(func) -> type[BaseModel]:
    """The pydantic model of a registered function's config block."""
    fields: dict[str, Any] = {}
    for param in params_of(func):
        default = ... if param.required else param.default
        fields[param.name] = (
            Annotated[Any, _validator(param)],
            Field(default, description=param.arg.desc),
        )
    name = getattr(func, "__name__", "function")
    model_name = "".join(c for c in name.title() if c.isalnum()) + "Schema"
    return create_model(model_name, __config__=STRICT, **fields)


def config_params(func) -> list[Param]:
    """The arguments of a registered function that a config may set."""
    return list(params_of(func))


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
