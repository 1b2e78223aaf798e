"""The optimizer library: one `Optimizer` class for SGD, Adam and RAdam (and,
by their rules, Lion, AdEMAMix and Schedule-Free AdamW and SGD), its
hyperparameters, its state, the flat `ParamStore` and saving to bytes."""

from optsvc.optim.extra import AdEMAMix, Lion, ScheduleFreeAdamW, ScheduleFreeSGD
from optsvc.optim.hyperparams import HPARAMS, StepScalars
from optsvc.optim.optimizer import SGD, Adam, Optimizer, RAdam
from optsvc.optim.params import ParamStore
from optsvc.optim.rules import RULES, Rule
from optsvc.optim.state import OptimizerState

__all__ = [
    "Optimizer",
    "SGD",
    "Adam",
    "RAdam",
    "Lion",
    "AdEMAMix",
    "ScheduleFreeAdamW",
    "ScheduleFreeSGD",
    "ParamStore",
    "HPARAMS",
    "OptimizerState",
    "Rule",
    "RULES",
    "StepScalars",
]
