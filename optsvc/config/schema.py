"""The pydantic models of a training config's own sections, `[system]` and
`[training]` (checked by `optsvc.config.validation`).

A registered function's block (`[optimizer]`, `[optimizer.learn_rate]`, ...)
has no model here: its arguments are declared once, on the function's
signature (`optsvc.spec.Arg`), and `optsvc.config.blocks` checks a block
against that declaration directly. So "the schema of warmup_linear" is
`warmup_linear`'s signature in optsvc/schedules/thinc.py.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from optsvc.spec import MAX_INT

STRICT = ConfigDict(extra="forbid", strict=True)


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


__all__ = ["SECTIONS", "SystemSection", "TrainingSection"]
