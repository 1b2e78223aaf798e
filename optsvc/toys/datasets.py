"""Toy data sets for training jobs, generated locally from a seed.

Each registered function (`blobs.v1`, `spirals.v1`, `regression.v1`) returns a
`Dataset` of float32 numpy arrays on the CPU, split into train and dev parts;
the training loop moves them to the device. The same arguments always give the
same arrays. Samples are drawn first and then shuffled and split (stratified
by class for classification), so `dev_fraction` changes which samples land in
dev, never the samples themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated

import numpy as np

from optsvc import registries
from optsvc.spec import Arg, Rule, checked


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/dev split of a toy task; the arrays are read-only.

    `task` is "classification" (`y_*` hold int64 class ids in
    `[0, n_outputs)`) or "regression" (`y_*` are float32 of shape
    `(n, n_outputs)`). `X_*` are float32 of shape `(n, n_features)`.

    >>> blobs(n_samples=100, seed=1)
    Dataset(name='blobs', task='classification', ..., n_train=80, n_dev=20)
    """

    name: str
    task: str
    X_train: np.ndarray = field(repr=False)
    y_train: np.ndarray = field(repr=False)
    X_dev: np.ndarray = field(repr=False)
    y_dev: np.ndarray = field(repr=False)
    n_features: int
    n_outputs: int

    @property
    def n_train(self) -> int:
        """The number of training samples."""
        return int(self.X_train.shape[0])

    @property
    def n_dev(self) -> int:
        """The number of dev samples."""
        return int(self.X_dev.shape[0])

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, task={self.task!r}, "
            f"n_features={self.n_features}, n_outputs={self.n_outputs}, "
            f"n_train={self.n_train}, n_dev={self.n_dev})"
        )


# --- the arguments the data sets share ------------------------------------------

Samples = Annotated[int, Arg("examples to generate (train + dev)", ge=2)]
Features = Annotated[int, Arg("input dimensions", ge=1)]
Classes = Annotated[int, Arg("number of classes", ge=2)]
Noise = Annotated[float, Arg("standard deviation of the added noise", ge=0)]
DevFraction = Annotated[
    float, Arg("share of examples held out for evaluation", gt=0, lt=1)
]
Seed = Annotated[int, Arg("random seed of the generator", ge=0)]


def _dev_split(n_samples: int, dev_fraction: float) -> str | None:
    n_dev = _n_dev(n_samples, dev_fraction)
    if not 1 <= n_dev <= n_samples - 1:
        return (
            f"leaves {n_dev} dev and {n_samples - n_dev} training samples of "
            f"n_samples ({n_samples}); both need at least 1"
        )
    return None


def _a_sample_per_class(n_samples: int, n_classes: int) -> str | None:
    if n_samples < n_classes:
        return (
            f"must be at least n_classes ({n_classes}), so that every class has "
            "a sample"
        )
    return None


# Both splits hold a sample; with classes, every class holds one.
DEV_SPLIT = Rule(_dev_split, at="dev_fraction")
CLASS_SPLIT = (Rule(_a_sample_per_class, at="n_samples"), DEV_SPLIT)


@registries.datasets.register("blobs.v1")
@checked(*CLASS_SPLIT)
def blobs(
    *,
    n_samples: Samples = 2000,
    n_features: Features = 2,
    n_classes: Classes = 3,
    spread: Annotated[float, Arg("standard deviation of each cluster", ge=0)] = 1.0,
    dev_fraction: DevFraction = 0.2,
    seed: Seed = 0,
) -> Dataset:
    """Gaussian blobs: one isotropic cluster per class (classification).

    Cluster centres are drawn uniformly from the box [-10, 10]^n_features, as in
    scikit-learn's `make_blobs`; the classes get equal shares of the samples.
    Features are standardized with the training split's mean and deviation.

    n_samples (int): Samples in total, train and dev together.
    n_features (int): Input dimensions.
    n_classes (int): Classes, one blob each (at least 2).
    spread (float): Standard deviation of each blob around its centre.
    dev_fraction (float): Share of the samples held out for dev, in (0, 1).
    seed (int): Seed of the random generator.

    >>> data = blobs(n_samples=100, n_features=4, n_classes=5)
    >>> data.X_train.shape, data.X_train.dtype, data.y_dev.shape, data.n_outputs
    ((80, 4), dtype('float32'), (20,), 5)
    """
    rng = np.random.default_rng(seed)
    centers = rng.uniform(-10.0, 10.0, size=(n_classes, n_features))
    y = _balanced_labels(n_samples, n_classes)
    X = centers[y] + spread * rng.standard_normal((n_samples, n_features))
    X_train, y_train, X_dev, y_dev = _split(rng, X, y, dev_fraction, stratify=True)
    X_train, X_dev = _standardize(X_train, X_dev)
    return _dataset(
        "blobs", "classification", X_train, y_train, X_dev, y_dev, n_classes
    )


@registries.datasets.register("spirals.v1")
@checked(*CLASS_SPLIT)
def spirals(
    *,
    n_samples: Samples = 2000,
    n_classes: Classes = 3,
    noise: Noise = 0.2,
    turns: Annotated[float, Arg("turns of each spiral arm", ge=0)] = 1.0,
    dev_fraction: DevFraction = 0.2,
    seed: Seed = 0,
) -> Dataset:
    """Interleaved 2-D spirals, one arm per class (classification).

    A point of class k at radius r in [0, 1) lies at the angle
    `2 * pi * (k / n_classes + turns * r)`, plus Gaussian noise. Neighbouring
    arms are `2 * pi / n_classes` radians apart at every radius, so a linear
    model does poorly and an MLP can do well: the set that shows optimizers
    apart. The features stay in about [-1, 1] and are not standardized.

    n_samples (int): Samples in total, train and dev together.
    n_classes (int): Classes, one arm each (at least 2).
    noise (float): Standard deviation of the noise on each point's angle, in
        radians.
    turns (float): How many full turns each arm makes from the centre out.
    dev_fraction (float): Share of the samples held out for dev, in (0, 1).
    seed (int): Seed of the random generator.

    >>> data = spirals(n_samples=300, n_classes=2)
    >>> data.X_train.shape, data.n_features, data.n_outputs
    ((240, 2), 2, 2)
    """
    rng = np.random.default_rng(seed)
    y = _balanced_labels(n_samples, n_classes)
    radius = rng.uniform(0.0, 1.0, size=n_samples)
    angle = 2.0 * np.pi * (y / n_classes + turns * radius)
    angle += noise * rng.standard_normal(n_samples)
    X = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    X_train, y_train, X_dev, y_dev = _split(rng, X, y, dev_fraction, stratify=True)
    return _dataset(
        "spirals", "classification", X_train, y_train, X_dev, y_dev, n_classes
    )


@registries.datasets.register("regression.v1")
@checked(DEV_SPLIT)
def regression(
    *,
    n_samples: Samples = 2000,
    n_features: Features = 8,
    n_outputs: Annotated[int, Arg("regression targets per example", ge=1)] = 1,
    noise: Noise = 0.1,
    nonlinear: Annotated[bool, Arg("add a nonlinear part to the targets")] = True,
    dev_fraction: DevFraction = 0.2,
    seed: Seed = 0,
) -> Dataset:
    """A synthetic regression set: targets from a random smooth function.

    Inputs are standard normal. Each target is a random linear function of the
    inputs plus, with `nonlinear`, a random sum of 32 sinusoids of them (random
    Fourier features, i.e. a draw from a smooth random function). Each clean
    target is scaled to zero mean and unit variance before the noise is added,
    so the best R² reachable is about `1 / (1 + noise**2)`.

    n_samples (int): Samples in total, train and dev together.
    n_features (int): Input dimensions.
    n_outputs (int): Regression targets per sample.
    noise (float): Standard deviation of the Gaussian noise on the targets,
        relative to the clean targets' (which is 1).
    nonlinear (bool): Add the sinusoidal part; without it the task is linear.
    dev_fraction (float): Share of the samples held out for dev, in (0, 1).
    seed (int): Seed of the random generator.

    >>> data = regression(n_samples=50, n_features=3, n_outputs=2)
    >>> data.task, data.X_dev.shape, data.y_dev.shape, data.y_dev.dtype
    ('regression', (10, 3), (10, 2), dtype('float32'))
    """
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_samples, n_features))
    linear = rng.standard_normal((n_features, n_outputs)) / math.sqrt(n_features)
    y = X @ linear
    n_waves = 32
    freqs = rng.standard_normal((n_features, n_waves)) / math.sqrt(n_features)
    phases = rng.uniform(0.0, 2.0 * np.pi, size=n_waves)
    amplitudes = rng.standard_normal((n_waves, n_outputs)) * math.sqrt(2.0 / n_waves)
    if nonlinear:
        # Phases that vary by 1.5 radians per standard deviation of the
        # inputs: smooth, yet far from linear (a linear fit reaches R² ~0.5).
        y = y + np.sin(1.5 * X @ freqs + phases) @ amplitudes
    std = y.std(axis=0)
    y = (y - y.mean(axis=0)) / np.where(std > 0, std, 1.0)
    y = y + noise * rng.standard_normal((n_samples, n_outputs))
    X_train, y_train, X_dev, y_dev = _split(rng, X, y, dev_fraction, stratify=False)
    return _dataset(
        "regression", "regression", X_train, y_train, X_dev, y_dev, n_outputs
    )


# --- helpers -------------------------------------------------------------------


def _balanced_labels(n_samples: int, n_classes: int) -> np.ndarray:
    """Class ids with equal counts (the first classes get the remainder)."""
    return np.arange(n_samples, dtype=np.int64) % n_classes


def _n_dev(n_samples: int, dev_fraction: float) -> int:
    return math.floor(n_samples * dev_fraction + 0.5)


def _split(rng: np.random.Generator, X, y, dev_fraction: float, *, stratify):
    n = X.shape[0]
    order = rng.permutation(n)
    if stratify:  # one class after another, shuffled within each class
        order = order[np.argsort(y[order], kind="stable")]
    # Every (1 / dev_fraction)-th sample goes to dev, so each class gets its share.
    ticks = np.floor(np.arange(n + 1) * dev_fraction + 0.5)
    to_dev = np.diff(ticks) > 0
    dev, train = rng.permutation(order[to_dev]), rng.permutation(order[~to_dev])
    return X[train], y[train], X[dev], y[dev]


def _standardize(X_train: np.ndarray, X_dev: np.ndarray):
    mean = X_train.mean(axis=0)
    std = X_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return (X_train - mean) / std, (X_dev - mean) / std


def _frozen(array: np.ndarray, dtype) -> np.ndarray:
    array = np.ascontiguousarray(array, dtype=dtype)
    array.setflags(write=False)
    return array


def _dataset(name, task, X_train, y_train, X_dev, y_dev, n_outputs) -> Dataset:
    y_dtype = np.int64 if task == "classification" else np.float32
    return Dataset(
        name=name,
        task=task,
        X_train=_frozen(X_train, np.float32),
        y_train=_frozen(y_train, y_dtype),
        X_dev=_frozen(X_dev, np.float32),
        y_dev=_frozen(y_dev, y_dtype),
        n_features=int(X_train.shape[1]),
        n_outputs=int(n_outputs),
    )


__all__ = ["Dataset", "blobs", "spirals", "regression"]
