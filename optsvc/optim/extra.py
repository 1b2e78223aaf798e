"""Optimizers that modern training uses and Thinc lacks: Lion, AdEMAMix and
Schedule-Free AdamW and SGD, each registered as `NAME.v1`.

Each is an `Optimizer` of its own `Rule`, with the numbers of its reference
implementation (tests/reference/README.md): pytorch_optimizer's Lion and
AdEMAMix, the `schedulefree` package's AdamWScheduleFree and
SGDScheduleFree. Their arguments keep the references' names in Thinc's
spelling (`learn_rate`, `beta1`, ...) and defaults, and add Thinc's
`grad_clip` (each gradient clipped to that L2 norm first, default 1.0 as in
Thinc; 0 gives the reference's numbers) and, where the optimizer has no
average of its own, `use_averages`. Every hyperparameter may be a number, a
list, a generator or a Schedule.

Schedule-Free: the weights the optimizer updates are the training point y;
`optimizer.averages` is the evaluation point x = lerp(y, z, 1 - 1/beta1),
computed when read, which `optsvc train` and spaCy evaluate and save. The
step's averaging weight uses the optimizer's step k (`optimizer.step`) and
the largest learning rate so far; both sums are taken when the step ends
(`step_schedules`), as Thinc's and spaCy's loops call it once a step.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import numpy as np

from optsvc import registries
from optsvc.backends import Ops, UpdateKind
from optsvc.backends.ops import HostStep
from optsvc.optim.hyperparams import HPARAM_ARGS, ScheduleT, expose
from optsvc.optim.optimizer import Eps, GradClip, LearnRate, Optimizer, UseAverages
from optsvc.optim.rules import Rule, scalars_record
from optsvc.spec import Arg, checked

# Each argument's meaning and range, declared once: the rules check against
# these, the signatures below annotate with them.
_DECAY = Arg("decoupled weight decay: the weights lose lr * weight_decay a step", ge=0)
_LION_BETA1 = Arg("weight of the momentum in the update's sign", ge=0, lt=1)
_LION_BETA2 = Arg("exponential decay rate of the momentum", ge=0, lt=1)
_BETA3 = Arg("exponential decay rate of the slow momentum", ge=0, lt=1)
_ALPHA = Arg("weight of the slow momentum in the update", ge=0)
_SF_BETA1 = Arg("interpolation of y between x and z (x = lerp(y, z, 1 - 1/beta1))",
                gt=0, lt=1)  # fmt: skip
_SF_DECAY = Arg("weight decay, added to the gradient at y", ge=0)
_R = Arg("the averaging weights grow as (step + 1) ** r", ge=0)
_POWER = Arg("... and as (the largest learning rate so far) ** weight_lr_power", ge=0)

WeightDecay = Annotated[ScheduleT, _DECAY]
LionBeta1 = Annotated[ScheduleT, _LION_BETA1]
LionBeta2 = Annotated[ScheduleT, _LION_BETA2]
Beta1 = Annotated[ScheduleT, HPARAM_ARGS["beta1"]]
Beta2 = Annotated[ScheduleT, HPARAM_ARGS["beta2"]]
Beta3 = Annotated[ScheduleT, _BETA3]
Alpha = Annotated[ScheduleT, _ALPHA]
SFBeta1 = Annotated[ScheduleT, _SF_BETA1]
SFWeightDecay = Annotated[ScheduleT, _SF_DECAY]
AveragingR = Annotated[ScheduleT, _R]
WeightLrPower = Annotated[ScheduleT, _POWER]
WarmupSteps = Annotated[int, Arg("steps of linear warmup of the learning rate", ge=0)]

_LR, _CLIP, _EPS = (
    HPARAM_ARGS["learn_rate"],
    HPARAM_ARGS["grad_clip"],
    HPARAM_ARGS["eps"],
)


# --- Lion ------------------------------------------------------------------------


class LionRule(Rule):
    """Lion: one momentum, the update its interpolation's sign."""

    name, title, registered = "lion", "Lion", "Lion.v1"
    args = {"learn_rate": _LR, "beta1": _LION_BETA1, "beta2": _LION_BETA2,
            "weight_decay": _DECAY, "grad_clip": _CLIP}  # fmt: skip
    always = frozenset({"beta1", "beta2"})
    state = ("m",)

    def scalars(self, values, settings, sums, step):
        return _LionScalars(*values)

    def tensor(self, s, nr, lr_scale, radam_buffer):
        return UpdateKind.LION, s.learn_rate * lr_scale, 0.0, 0.0

    def host(self, s, lr_scale) -> np.ndarray:
        return HostStep(
            clip=s.grad_clip, decay=lr_scale * s.learn_rate * s.weight_decay,
            to_g1=1.0 - s.beta1, to_g2=1.0 - s.beta2,
        ).array()  # fmt: skip


_LionScalars = scalars_record(LionRule)


@registries.optimizers.register("Lion.v1")
@checked()
def Lion(
    learn_rate: LearnRate = 1e-4,
    *,
    beta1: LionBeta1 = 0.9,
    beta2: LionBeta2 = 0.99,
    weight_decay: WeightDecay = 0.0,
    grad_clip: GradClip = 1.0,
    use_averages: UseAverages = True,
    ops: Ops | None = None,
) -> Optimizer:
    """Lion (Chen et al., 2023; registered as `Lion.v1`): the update is
    ``learn_rate * sign(lerp(m, g, 1 - beta1))``, then
    ``m = lerp(m, g, 1 - beta2)``; weight decay decoupled, applied first.

    >>> Lion(3e-4, weight_decay=0.1).b2
    0.99
    """
    return Optimizer._of(RULE_LION, locals())


# --- AdEMAMix ----------------------------------------------------------------------


class AdEMAMixRule(Rule):
    """AdEMAMix: Adam plus a slow momentum mixed in by alpha."""

    name, title, registered = "ademamix", "AdEMAMix", "AdEMAMix.v1"
    args = {"learn_rate": _LR, "beta1": HPARAM_ARGS["beta1"],
            "beta2": HPARAM_ARGS["beta2"], "beta3": _BETA3, "alpha": _ALPHA,
            "eps": _EPS, "weight_decay": _DECAY, "grad_clip": _CLIP}  # fmt: skip
    always = frozenset({"beta1", "beta2", "beta3", "eps"})
    state = ("m", "v", "m_slow")

    def scalars(self, values, settings, sums, step):
        return _AdEMAMixScalars(*values)

    def tensor(self, s, nr, lr_scale, radam_buffer):
        # The bias corrections of the key's nr-th update, as the reference
        # computes them: 1 - b ** n, and the square root of the second's.
        bc1 = 1.0 - math.pow(s.beta1, nr)
        bc2 = math.sqrt(1.0 - math.pow(s.beta2, nr))
        return UpdateKind.ADEMAMIX, s.learn_rate * lr_scale, bc1, bc2

    def host(self, s, lr_scale) -> np.ndarray:
        return HostStep(
            b2=s.beta2, eps=s.eps, clip=s.grad_clip,
            decay=lr_scale * s.learn_rate * s.weight_decay, to_g1=1.0 - s.beta1,
            to_g2=1.0 - s.beta3, alpha=s.alpha,
        ).array()  # fmt: skip


_AdEMAMixScalars = scalars_record(AdEMAMixRule)


@registries.optimizers.register("AdEMAMix.v1")
@checked()
def AdEMAMix(
    learn_rate: LearnRate = 1e-3,
    *,
    beta1: Beta1 = 0.9,
    beta2: Beta2 = 0.999,
    beta3: Beta3 = 0.9999,
    alpha: Alpha = 5.0,
    eps: Eps = 1e-8,
    weight_decay: WeightDecay = 0.0,
    grad_clip: GradClip = 1.0,
    use_averages: UseAverages = True,
    ops: Ops | None = None,
) -> Optimizer:
    """AdEMAMix (Pagliardini et al., 2024; registered as `AdEMAMix.v1`):
    Adam's moments m, v with bias correction, plus a slow momentum (decay
    `beta3`) weighted by `alpha`; weight decay decoupled, applied first. The
    paper's warmups of alpha and beta3 are the schedules
    `ademamix_alpha_warmup.v1` and `ademamix_beta3_warmup.v1`.

    >>> from optsvc import ademamix_alpha_warmup
    >>> AdEMAMix(alpha=ademamix_alpha_warmup(5.0, 100)).alpha
    0.05
    """
    return Optimizer._of(RULE_ADEMAMIX, locals())


# --- Schedule-Free ----------------------------------------------------------------


class _ScheduleFree(Rule):
    """The two Schedule-Free optimizers: y (the weights), z, and for AdamW
    the second moment v; their averaging weights' running sums."""

    always: Any
    keeps_averages = False
    from_weights = frozenset({"z"})
    # schedulefree's weight_sum and lr_max before the first step
    initial_sums = (0.0, -1.0)
    settings = {"warmup_steps": int}
    kind: UpdateKind
    beta: str  # the hyperparameter that places y between x and z

    def scalars(self, values, settings, sums, step):
        s = self.record(*values, None, None, None, None)
        k, warmup = step, settings["warmup_steps"]
        s.lr = s.learn_rate * ((k + 1) / warmup if k < warmup else 1.0)
        weight_sum, lr_max = sums
        lr_max = max(s.lr, lr_max)
        weight = ((k + 1) ** s.r) * (lr_max**s.weight_lr_power)
        weight_sum = weight_sum + weight
        s.c = weight / weight_sum if weight_sum else 0.0
        s.sums_after = (weight_sum, lr_max)
        s.bc2 = 1.0 - s.beta2 ** (k + 1) if self.kind is _ADAMW else 0.0
        return s

    def tensor(self, s, nr, lr_scale, radam_buffer):
        return self.kind, s.lr * lr_scale, 0.0, s.bc2

    def host(self, s, lr_scale) -> np.ndarray:
        beta = getattr(s, self.beta)
        adamw = self.kind is _ADAMW
        return HostStep(
            b2=s.beta2 if adamw else 0.0, eps=s.eps if adamw else 0.0,
            clip=s.grad_clip, decay=s.weight_decay, to_z=s.c,
            y_step=s.lr * lr_scale * (beta * (1 - s.c) - 1),
        ).array()  # fmt: skip

    def evaluation_weight(self, s) -> float:
        return 1 - 1 / getattr(s, self.beta)


_ADAMW = UpdateKind.SCHEDULE_FREE_ADAMW
_DERIVED = ("lr", "c", "bc2", "sums_after")


class ScheduleFreeAdamWRule(_ScheduleFree):
    """Schedule-Free AdamW."""

    name, title, registered = (
        "schedulefree_adamw", "Schedule-Free AdamW", "ScheduleFreeAdamW.v1",
    )  # fmt: skip
    args = {"learn_rate": _LR, "beta1": _SF_BETA1, "beta2": HPARAM_ARGS["beta2"],
            "eps": _EPS, "weight_decay": _SF_DECAY, "grad_clip": _CLIP, "r": _R,
            "weight_lr_power": _POWER}  # fmt: skip
    always = frozenset({"beta1", "beta2", "eps"})
    state = ("z", "v")
    kind, beta = _ADAMW, "beta1"


class ScheduleFreeSGDRule(_ScheduleFree):
    """Schedule-Free SGD."""

    name, title, registered = (
        "schedulefree_sgd", "Schedule-Free SGD", "ScheduleFreeSGD.v1",
    )  # fmt: skip
    args = {"learn_rate": _LR, "momentum": _SF_BETA1, "weight_decay": _SF_DECAY,
            "grad_clip": _CLIP, "r": _R, "weight_lr_power": _POWER}  # fmt: skip
    always = frozenset({"momentum"})
    state = ("z",)
    kind, beta = UpdateKind.SCHEDULE_FREE_SGD, "momentum"


ScheduleFreeAdamWRule.record = scalars_record(ScheduleFreeAdamWRule, *_DERIVED)
ScheduleFreeSGDRule.record = scalars_record(ScheduleFreeSGDRule, *_DERIVED)


@registries.optimizers.register("ScheduleFreeAdamW.v1")
@checked()
def ScheduleFreeAdamW(
    learn_rate: LearnRate = 0.0025,
    *,
    beta1: SFBeta1 = 0.9,
    beta2: Beta2 = 0.999,
    eps: Eps = 1e-8,
    weight_decay: SFWeightDecay = 0.0,
    warmup_steps: WarmupSteps = 0,
    r: AveragingR = 0.0,
    weight_lr_power: WeightLrPower = 2.0,
    grad_clip: GradClip = 1.0,
    ops: Ops | None = None,
) -> Optimizer:
    """Schedule-Free AdamW (Defazio et al., 2024; registered as
    `ScheduleFreeAdamW.v1`), as `schedulefree.AdamWScheduleFree`: no
    learning-rate schedule needed. The weights are the training point y;
    `optimizer.averages` is the evaluation point x, which is what to
    evaluate and save.

    >>> opt = ScheduleFreeAdamW(warmup_steps=100)
    >>> opt.learn_rate, opt.settings["warmup_steps"]
    (0.0025, 100)
    """
    return Optimizer._of(RULE_SCHEDULE_FREE_ADAMW, locals())


@registries.optimizers.register("ScheduleFreeSGD.v1")
@checked()
def ScheduleFreeSGD(
    learn_rate: LearnRate = 1.0,
    *,
    momentum: SFBeta1 = 0.9,
    weight_decay: SFWeightDecay = 0.0,
    warmup_steps: WarmupSteps = 0,
    r: AveragingR = 0.0,
    weight_lr_power: WeightLrPower = 2.0,
    grad_clip: GradClip = 1.0,
    ops: Ops | None = None,
) -> Optimizer:
    """Schedule-Free SGD (Defazio et al., 2024; registered as
    `ScheduleFreeSGD.v1`), as `schedulefree.SGDScheduleFree`. The weights
    are the training point y; `optimizer.averages` is the evaluation point x.

    >>> ScheduleFreeSGD(0.5, momentum=0.8).momentum
    0.8
    """
    return Optimizer._of(RULE_SCHEDULE_FREE_SGD, locals())


RULE_LION = LionRule.instance()
RULE_ADEMAMIX = AdEMAMixRule.instance()
RULE_SCHEDULE_FREE_ADAMW = ScheduleFreeAdamWRule.instance()
RULE_SCHEDULE_FREE_SGD = ScheduleFreeSGDRule.instance()
for _rule in (LionRule, AdEMAMixRule, ScheduleFreeAdamWRule, ScheduleFreeSGDRule):
    expose(_rule.args)

__all__ = ["Lion", "AdEMAMix", "ScheduleFreeAdamW", "ScheduleFreeSGD"]
