"""A finished (or running) run's weights, put to use.

A run folder keeps two sets of weights, written atomically by the loop
(`optsvc.training.state.run_weights` says what each holds):

- ``best.safetensors``: the weights of the best evaluation so far (rewritten
  each time the dev score improves, and carried by every checkpoint, so that
  a resumed run keeps it), as spaCy keeps ``model-best``;
- ``final.safetensors``: the weights at the last step.

`load_run` rebuilds the run's model from its own ``config.cfg`` and loads one
of them; `LoadedRun.evaluate` scores it on the run's dev set, which is what
``optsvc evaluate RUN`` prints. Loading reads arrays only (no pickle). In
Python::

    from optsvc.training import load_run

    run = load_run("runs/quickstart")          # best weights; "final" for final
    labels = run.model.predict(X).argmax(axis=1)
    print(run.metric, run.evaluate())          # accuracy on the run's dev set
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from optsvc.backends import ops_for_device
from optsvc.config import load_config, validate_config
from optsvc.errors import ConfigError, RunError, StateError
from optsvc.toys.models import Model, evaluate
from optsvc.training.run_folder import RunFolder
from optsvc.training.state import key_name

WEIGHTS = ("best", "final")
METRICS = {"classification": "accuracy", "regression": "R²"}


@dataclass
class LoadedRun:
    """A run's model with its best or final weights.

    `model` computes on `ops` (the CPU unless a GPU was asked for); `data` is
    the run's data set, generated again from its config (it is seeded, so it
    is the one the run trained and evaluated on).
    """

    path: Path
    weights: str  # "best" or "final"
    model: Model
    data: Any  # a toy Dataset
    ops: Any
    step: int | None  # the step the weights are from
    saved_score: float | None  # the dev score recorded with them
    averaged: bool  # whether the model computes with the averaged weights
    scored_averaged: bool  # whether the run's own evaluations used averages

    @property
    def file(self) -> Path:
        return RunFolder(self.path).weights_file(self.weights)

    @property
    def metric(self) -> str:
        """What the score is: accuracy, or R² for a regression."""
        return METRICS[self.data.task]

    def evaluate(self) -> float:
        """The model's score on the run's dev set, as the run computed it
        (overflows in weights that diverged are scored, not warned about)."""
        xp = self.ops.xp
        X, y = self.ops.asarray(self.data.X_dev), self.ops.asarray(self.data.y_dev)
        with np.errstate(all="ignore"):
            return evaluate(self.model, X, y, self.data.task, xp)


def load_run(
    run: str | os.PathLike,
    weights: str = "best",
    *,
    averages: bool = True,
    gpu_id: int = -1,
) -> LoadedRun:
    """The model of the run in folder `run`, built from its config.cfg, with
    the weights of best.safetensors (`weights="best"`) or final.safetensors ("final").

    averages: when the optimizer kept averages (use_averages), compute with
    them, as the run's evaluations did (and spaCy's model-best is saved);
    False loads the raw weights. RunError or StateError, saying what to do, when the
    folder holds no run or not those weights.
    """
    if weights not in WEIGHTS:
        raise ConfigError(f"weights must be 'best' or 'final', not {weights!r}")
    path = Path(run)
    data, model, ops = _build(path, gpu_id)
    folder = RunFolder(path)
    arrays, file = folder.read_weights(weights), folder.weights_file(weights)
    has_averages = all(f"avg:{key_name(k)}" in arrays for k in model.params)
    averaged = averages and has_averages
    kind = "avg" if averaged else "w"
    params = {
        key: ops.asarray(_array(arrays, f"{kind}:{key_name(key)}", a.shape, file))
        for key, a in model.params.items()
    }
    model.use_params(params, model.grads)
    return LoadedRun(
        path=path,
        weights=weights,
        model=model,
        data=data,
        ops=ops,
        step=_scalar(arrays.get("step"), int),
        saved_score=_scalar(arrays.get("score"), float),
        averaged=averaged,
        scored_averaged=has_averages,
    )


def _build(path: Path, gpu_id: int) -> tuple[Any, Model, Any]:
    """The run's data set and its model, initialised on the device."""
    if not path.is_dir():
        raise RunError(
            f"'{path}' is not a run folder; give the folder optsvc train wrote (its -o)"
        )
    own = RunFolder(path).config_file
    if not own.is_file():
        if (path / "trials").is_dir():
            raise RunError(
                f"'{path}' is a sweep; evaluate one of its trials: optsvc evaluate "
                f"{path / 'trials' / 'NAME'} (optsvc runs {path} lists them)"
            )
        raise RunError(f"'{path}' holds no run (no config.cfg); is it the -o of a run?")
    report = validate_config(load_config(own), for_training=True)
    if not report.ok:
        raise ConfigError(report.errors)
    if report.system is None:  # a spaCy config: not a run optsvc trained
        raise ConfigError(f"'{own}' is not an optsvc training config")
    data, model = report.build("data"), report.build("model")
    ops = ops_for_device(gpu_id)
    model.initialize(data.n_features, data.n_outputs, ops, seed=report.system.seed)
    return data, model, ops


def _array(arrays: dict, name: str, shape: tuple, file: Path) -> np.ndarray:
    array = arrays.get(name)
    if array is None or tuple(array.shape) != tuple(shape):
        found = "none" if array is None else f"shape {tuple(array.shape)}"
        raise StateError(
            f"{file.name} in '{file.parent}' does not fit the model its config.cfg "
            f"builds: parameter {name[name.index(':') + 1 :]} should have shape "
            f"{tuple(shape)}, it has {found}"
        )
    if array.dtype.kind != "f":
        raise StateError(
            f"{file.name} in '{file.parent}': '{name}' is not a float array"
        )
    return array.astype(np.float32, copy=False)


def _scalar(array: np.ndarray | None, kind: type) -> Any:
    if array is None or array.shape != ():
        return None
    return kind(array)


__all__ = ["load_run", "LoadedRun", "WEIGHTS"]
