"""The typed form of the JSON that optsvc writes and reads back.

Each file optsvc reads again (a checkpoint's manifest and training state, the
metadata of an optimizer's saved state, metrics rows, a sweep's results, a
logger's run id) has one `Record`, a pydantic model with strict types, bounds
and no unknown keys, defined beside the code that writes it. The writer dumps
the record and the reader parses it with `Record.parse`, the one way in: what
does not fit is a StateError naming the file and the first value that is
wrong, and the code behind it trusts the record. pydantic's JSON parser stops
at 200 levels of nesting, the one limit for everything read; what optsvc
writes nests far less (`optsvc.schedules.base.MAX_DEPTH`).
"""

from __future__ import annotations

import math
from typing import Annotated, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
)

from optsvc.errors import StateError
from optsvc.spec import MAX_INT


def _not_nan(x: float) -> float:
    if math.isnan(x):
        raise ValueError("NaN")
    return x


# A counter or size: a whole number in [0, 2**63).
Count = Annotated[StrictInt, Field(ge=0, le=MAX_INT)]
# A number that may be infinite (a score of -inf is the worst) but not NaN.
Number = Annotated[float, AfterValidator(_not_nan)]
# A finite number (what a metric that was not finite is written as: null).
Finite = Annotated[float, Field(allow_inf_nan=False)]


RecordT = TypeVar("RecordT", bound="Record")


class Record(BaseModel):
    """A JSON document optsvc wrote: strict types, no unknown keys."""

    model_config = ConfigDict(extra="forbid", strict=True, ser_json_inf_nan="constants")

    @classmethod
    def parse(cls: type[RecordT], data: bytes | str | dict, what: str) -> RecordT:
        """The record in `data` (JSON text, or a dict already parsed);
        StateError, "`what` <the first problem>", when it does not fit."""
        try:
            if isinstance(data, dict):
                return cls.model_validate(data)
            return cls.model_validate_json(data)
        except ValidationError as err:
            raise StateError(f"{what} {problem(err, cls)}") from None

    def to_json(self) -> bytes:
        """The record as written: indented JSON, one line a field."""
        return self.model_dump_json(indent=1).encode() + b"\n"


def problem(err: ValidationError, record: type[BaseModel] | None = None) -> str:
    """The first problem of a validation error, in words: "has no 'step'",
    "has a bad 'epoch' (True)", "has 'step' = 1e+30 out of range", followed
    by the description of the record's field it is in, if there is one."""
    first = err.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"])
    kind, value, message = first["type"], first.get("input"), first["msg"]
    if kind == "json_invalid":
        if "recursion limit" in message:
            return "nests deeper than 200 levels, which optsvc never writes"
        return f"is not valid JSON ({message.removeprefix('Invalid JSON: ')})"
    if not where:
        return f"is not a JSON object of the form optsvc writes ({message})"
    field = record.model_fields.get(str(first["loc"][0])) if record else None
    about = f" ({field.description})" if field and field.description else ""
    if kind == "missing":
        return f"has no '{where}'{about}"
    if kind == "extra_forbidden":
        return f"has an unexpected '{where}'"
    if isinstance(value, float) and math.isnan(value):
        return f"has '{where}' = NaN{about}"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        shown = f"{value:.3g}" if abs(value) < 1e300 else f"{str(value)[:3]}..."
        return f"has '{where}' = {shown} out of range{about}"
    return f"has a bad '{where}' ({value!r:.60}){about}"


__all__ = ["Record", "Count", "Number", "Finite", "problem"]
