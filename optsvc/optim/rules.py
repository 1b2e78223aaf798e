"""What a family of optimizers computes on the host: its `Rule`.

One `Optimizer` class serves every optimizer optsvc has; its rule says what
differs. A rule declares its hyperparameters (names, order and ranges: each
may be a schedule), its settings (plain options saved with the state), the
arrays each key keeps (`state`, in the order the kernels take them, see
`optsvc.backends.ops.STATE_ARRAYS`), and whether its averages are Thinc's
parameter averages or an evaluation point computed from the state. Once a
step it turns the hyperparameters' values into a scalars record
(`scalars`); from that record each key's update gets its kind and per-tensor
scalars (`tensor`) and every call the kernels' shared scalars (`host`). The
per-key call and `update_store` use these alone, so their numbers agree.

`THINC` is SGD, Adam and RAdam (Thinc's numbers: `optsvc.optim.step`,
`hyperparams.StepScalars`); the others are in `optsvc.optim.extra`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from optsvc.backends import UpdateKind
from optsvc.backends.ops import HostStep
from optsvc.optim.hyperparams import (
    HPARAM_ARGS,
    StepScalars,
    step_scalars,
    unsupported_betas,
)
from optsvc.optim.step import step_size
from optsvc.spec import Arg

# Every rule by the name its saved state carries (`Rule.name`).
RULES: dict[str, Rule] = {}


class Rule:
    """A family of optimizers, as the host sees it (see the module's doc).
    Subclasses set the class attributes and implement the methods."""

    name: ClassVar[str]  # saved with the state
    title: ClassVar[str]  # in messages and summaries
    registered: ClassVar[str]  # a registered function that makes one
    args: ClassVar[Mapping[str, Arg]]  # the hyperparameters, in this order
    always: ClassVar[frozenset[str]]  # hyperparameters in range at every step
    settings: ClassVar[Mapping[str, type]] = {}  # plain options, saved: their type
    state: ClassVar[tuple[str, ...]]  # each key's arrays (at most 3)
    from_weights: ClassVar[frozenset[str]] = frozenset()  # start as the weights
    nonnegative: ClassVar[frozenset[str]] = frozenset({"v"})
    # Thinc's parameter averages (use_averages), or none: the rule's own
    # evaluation point (Schedule-Free's x) is its averages.
    keeps_averages: ClassVar[bool] = True
    # The running scalars a rule keeps across steps (None: none).
    initial_sums: ClassVar[tuple[float, ...] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in vars(cls):  # a rule, not a base of rules
            RULES[cls.name] = cls()

    @classmethod
    def instance(cls) -> Rule:
        """The one object of this rule (every Optimizer of it holds it)."""
        return RULES[cls.name]

    @property
    def hparams(self) -> tuple[str, ...]:
        """The hyperparameters' names, in evaluation order."""
        return tuple(self.args)

    def scalars(self, values: tuple, settings: Mapping, sums: Any, step: int) -> Any:
        """The record of one step (an object with every hyperparameter's
        value as an attribute, `betas_supported` and `sums_after`), from
        the hyperparameters' `values` (in `hparams` order) at `step`."""
        raise NotImplementedError

    def tensor(
        self, s: Any, nr: int, lr_scale: float, radam_buffer: list
    ) -> tuple[UpdateKind, float, float, float]:
        """(kind, lr, bc1, bc2) of a key's nr-th update at scalars `s`."""
        raise NotImplementedError

    def host(self, s: Any, lr_scale: float) -> np.ndarray:
        """The kernels' shared scalars of a call (`HostStep.array()`)."""
        raise NotImplementedError

    def memoizable(self, s: Any) -> bool:
        """Whether keys of one step with the same update count and scale
        may reuse each other's `tensor` (Thinc's RAdam writes its memo on
        every call)."""
        return True

    def evaluation_weight(self, s: Any) -> float:  # pragma: no cover
        """The lerp weight of y towards z that gives the evaluation point,
        for a rule that does not keep averages."""
        raise NotImplementedError

    def settings_problem(self, settings: Mapping[str, Any]) -> str | None:
        """What is wrong with saved `settings` for this rule, or None: each
        of its settings, of its type (a whole number >= 0 for an int)."""
        if set(settings) != set(self.settings):
            return f"its settings must be {sorted(self.settings)}"
        for name, kind in self.settings.items():
            value = settings[name]
            if type(value) is not kind or (kind is int and value < 0):
                return f"its setting '{name}' is not a valid {kind.__name__}"
        return None

    def unsupported(self, s: Any, key: Any = None) -> ValueError:
        """The error for scalars whose `betas_supported` is False."""
        return unsupported_betas(s, key)

    def __repr__(self) -> str:
        return f"<Rule {self.title}>"


def scalars_record(rule: type[Rule], *derived: str) -> type:
    """A slotted dataclass for a rule's scalars: its hyperparameters, then
    the `derived` values, with `betas_supported` True and no `sums_after`
    unless it has one of those among `derived`."""
    names = [*rule.args, *derived]
    record = dataclasses.make_dataclass(
        f"{rule.__name__.removesuffix('Rule')}Scalars",
        [(name, Any) for name in names],
        slots=True,
    )
    record.betas_supported = True
    if "sums_after" not in derived:
        record.sums_after = None
    return record


class ThincRule(Rule):
    """SGD, Adam and RAdam: Thinc's `Optimizer` (its numbers, its kinds
    SGD, ADAM and MOMENTUM chosen per key, L2 as Thinc applies it)."""

    name = "thinc"
    title = "SGD/Adam/RAdam"
    registered = "Adam.v1"
    args = HPARAM_ARGS
    always = frozenset({"beta1", "beta2", "eps"})
    settings = {"use_radam": bool, "L2_is_weight_decay": bool}
    state = ("m", "v")

    def scalars(self, values, settings, sums, step) -> StepScalars:
        return step_scalars(
            values,
            use_radam=settings["use_radam"],
            L2_is_weight_decay=settings["L2_is_weight_decay"],
        )

    def tensor(self, s: StepScalars, nr, lr_scale, radam_buffer):
        kind, c = step_size(s, nr, lr_scale, radam_buffer)
        return kind, c, 0.0, 0.0

    def host(self, s: StepScalars, lr_scale) -> np.ndarray:
        return HostStep(
            b1=s.kernel_b1, b2=s.kernel_b2, eps=s.eps, l2=s.l2, clip=s.grad_clip,
            decay=s.decay(lr_scale),
        ).array()  # fmt: skip

    def memoizable(self, s: StepScalars) -> bool:
        return not s.use_radam


THINC = RULES["thinc"]

__all__ = ["Rule", "RULES", "THINC", "ThincRule", "scalars_record"]
