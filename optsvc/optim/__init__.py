"""The optimizer library: one `Optimizer` class for SGD, Adam and RAdam, its
hyperparameters, its state, the flat `ParamStore` and saving to bytes."""

from optsvc.optim.hyperparams import HPARAMS, StepScalars
from optsvc.optim.optimizer import SGD, Adam, Optimizer, RAdam
from optsvc.optim.params import ParamStore
from optsvc.optim.state import OptimizerState

__all__ = [
    "Optimizer",
    "SGD",
    "Adam",
    "RAdam",
    "ParamStore",
    "HPARAMS",
    "OptimizerState",
    "StepScalars",
]
