"""The toy data sets: shapes, dtypes, determinism, splits, balance, errors."""

import inspect
import math
import typing

import numpy as np
import pytest
from confection import Config

from optsvc import registry
from optsvc.toys.datasets import Dataset, blobs, regression, spirals

FUNCS = {"blobs": blobs, "spirals": spirals, "regression": regression}
SMALL = {
    "blobs": dict(n_samples=300, n_features=3, n_classes=4),
    "spirals": dict(n_samples=300, n_classes=3),
    "regression": dict(n_samples=300, n_features=5, n_outputs=2),
}


def arrays(data: Dataset):
    return [data.X_train, data.y_train, data.X_dev, data.y_dev]


@pytest.mark.parametrize("name", FUNCS)
def test_shapes_and_dtypes_with_the_defaults(name):
    data = FUNCS[name]()
    assert isinstance(data, Dataset) and data.name == name
    assert (data.n_train, data.n_dev) == (1600, 400)
    assert data.X_train.shape == (1600, data.n_features)
    assert data.X_dev.shape == (400, data.n_features)
    assert data.X_train.dtype == data.X_dev.dtype == np.float32
    if name == "regression":
        assert data.task == "regression"
        assert (data.n_features, data.n_outputs) == (8, 1)
        assert data.y_train.shape == (1600, 1) and data.y_dev.shape == (400, 1)
        assert data.y_train.dtype == data.y_dev.dtype == np.float32
    else:
        assert data.task == "classification"
        assert (data.n_features, data.n_outputs) == (2, 3)
        assert data.y_train.shape == (1600,) and data.y_dev.shape == (400,)
        assert data.y_train.dtype == data.y_dev.dtype == np.int64
        assert set(np.unique(data.y_train)) == {0, 1, 2}
    for a in arrays(data):
        assert isinstance(a, np.ndarray) and a.flags.c_contiguous
        assert np.isfinite(a).all()
        assert not a.flags.writeable


@pytest.mark.parametrize("name", FUNCS)
def test_same_arguments_give_identical_arrays(name):
    first, second = FUNCS[name](**SMALL[name]), FUNCS[name](**SMALL[name])
    for a, b in zip(arrays(first), arrays(second)):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    other = FUNCS[name](**SMALL[name], seed=1)
    assert not np.array_equal(first.X_train, other.X_train)


@pytest.mark.parametrize("name", FUNCS)
@pytest.mark.parametrize("fraction", [0.001, 0.1, 0.25, 0.5, 0.999])
def test_dev_split_sizes(name, fraction):
    n = 1001
    data = FUNCS[name](n_samples=n, dev_fraction=fraction)
    assert data.n_dev == math.floor(n * fraction + 0.5)
    assert data.n_train + data.n_dev == n


@pytest.mark.parametrize("name", ["spirals", "regression"])
def test_dev_fraction_only_moves_samples_between_the_splits(name):
    # (blobs standardizes with the training split's statistics, so its
    # numbers move a little with the split)
    def rows(data):
        X = np.concatenate([data.X_train, data.X_dev])
        return X[np.lexsort(X.T)]

    a = FUNCS[name](n_samples=500, dev_fraction=0.1)
    b = FUNCS[name](n_samples=500, dev_fraction=0.4)
    assert np.array_equal(rows(a), rows(b))


@pytest.mark.parametrize("name", ["blobs", "spirals"])
@pytest.mark.parametrize("n_classes", [2, 3, 7])
def test_classes_are_balanced(name, n_classes):
    data = FUNCS[name](n_samples=1000, n_classes=n_classes)
    counts = np.bincount(np.concatenate([data.y_train, data.y_dev]))
    assert len(counts) == n_classes and counts.max() - counts.min() <= 1
    # the split is stratified: each class sends its share to dev, give or take one
    in_dev = np.bincount(data.y_dev, minlength=n_classes)
    assert np.abs(in_dev - counts * 0.2).max() <= 1
    # and the splits are shuffled, not grouped by class
    assert len(set(data.y_train[:20].tolist())) > 1


def test_blobs_are_standardized_on_the_training_split():
    data = blobs(n_features=5, spread=2.5)
    np.testing.assert_allclose(data.X_train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(data.X_train.std(axis=0), 1, atol=1e-5)


def test_blob_spread_sets_the_overlap():
    def within_class_std(data):
        X, y = data.X_train, data.y_train
        return np.mean([X[y == k].std(axis=0).mean() for k in range(3)])

    assert within_class_std(blobs(spread=0.5)) < within_class_std(blobs(spread=3.0))


def test_spiral_points_lie_on_their_arms():
    data = spirals(n_samples=600, n_classes=3, noise=0.0, turns=1.5)
    X, y = data.X_train.astype(np.float64), data.y_train
    radius = np.hypot(X[:, 0], X[:, 1])
    assert radius.max() < 1.0
    expected = 2 * np.pi * (y / 3 + 1.5 * radius)
    # the angle matches the arm's, up to whole turns
    gap = np.angle(np.exp(1j * (np.arctan2(X[:, 1], X[:, 0]) - expected)))
    np.testing.assert_allclose(gap, 0, atol=1e-4)


def r2_of_least_squares(data: Dataset) -> float:
    def with_bias(X):
        return np.hstack([X, np.ones((len(X), 1), X.dtype)]).astype(np.float64)

    coef, *_ = np.linalg.lstsq(with_bias(data.X_train), data.y_train, rcond=None)
    residual = data.y_dev - with_bias(data.X_dev) @ coef
    return 1 - (residual**2).sum() / ((data.y_dev - data.y_dev.mean(0)) ** 2).sum()


def test_regression_targets_noise_and_linearity():
    noise = 0.3
    linear = regression(noise=noise, nonlinear=False)
    y = np.concatenate([linear.y_train, linear.y_dev])
    # unit-variance clean targets plus the noise
    assert y.std() == pytest.approx(math.sqrt(1 + noise**2), rel=0.05)
    assert r2_of_least_squares(linear) == pytest.approx(1 / (1 + noise**2), abs=0.03)
    # the nonlinear part is what a linear model cannot fit
    assert r2_of_least_squares(regression(noise=noise)) < 0.7


def test_regression_with_several_outputs():
    data = regression(n_outputs=3, noise=0.0)
    y = np.concatenate([data.y_train, data.y_dev])
    np.testing.assert_allclose(y.std(axis=0), 1, atol=1e-5)
    assert not np.allclose(y[:, 0], y[:, 1])


def test_dataset_is_frozen_and_has_a_short_repr():
    data = blobs(n_samples=50)
    with pytest.raises(AttributeError):
        data.name = "other"
    assert repr(data) == (
        "Dataset(name='blobs', task='classification', n_features=2, n_outputs=3, "
        "n_train=40, n_dev=10)"
    )


BAD = [
    (blobs, dict(n_samples=0), "n_samples"),
    (blobs, dict(n_samples=1.5), "n_samples"),
    (blobs, dict(n_samples=True), "n_samples"),
    (blobs, dict(n_samples=2, n_classes=3), "n_samples"),
    (blobs, dict(n_features=0), "n_features"),
    (blobs, dict(n_classes=1), "n_classes"),
    (blobs, dict(spread=-1.0), "spread"),
    (blobs, dict(spread=math.inf), "spread"),
    (blobs, dict(dev_fraction=0.0), "dev_fraction"),
    (blobs, dict(dev_fraction=1.0), "dev_fraction"),
    (blobs, dict(dev_fraction="0.2"), "dev_fraction"),
    (blobs, dict(n_samples=10, dev_fraction=0.01), "dev_fraction"),
    (blobs, dict(seed=-1), "seed"),
    (spirals, dict(n_classes=1), "n_classes"),
    (spirals, dict(noise=-0.1), "noise"),
    (spirals, dict(turns=math.nan), "turns"),
    (spirals, dict(dev_fraction=1.5), "dev_fraction"),
    (spirals, dict(seed=0.5), "seed"),
    (regression, dict(n_samples=-5), "n_samples"),
    (regression, dict(n_features=0), "n_features"),
    (regression, dict(n_outputs=0), "n_outputs"),
    (regression, dict(noise=-1), "noise"),
    (regression, dict(nonlinear=1), "nonlinear"),
    (regression, dict(dev_fraction=-0.2), "dev_fraction"),
]


@pytest.mark.parametrize(
    "func, kwargs, arg", BAD, ids=[f"{f.__name__}-{a}" for f, _, a in BAD]
)
def test_bad_arguments_name_the_argument(func, kwargs, arg):
    with pytest.raises(ValueError, match=f"{func.__name__}: '{arg}'"):
        func(**kwargs)


def test_ints_are_accepted_for_floats():
    # confection passes `spread = 2` as an int
    assert blobs(n_samples=20, spread=2).n_train == 16
    assert spirals(n_samples=20, noise=0, turns=2).n_train == 16


@pytest.mark.parametrize("name", FUNCS)
def test_signatures_suit_a_derived_schema(name):
    func = FUNCS[name]
    hints = typing.get_type_hints(func)
    for param in inspect.signature(func).parameters.values():
        assert param.kind is param.KEYWORD_ONLY
        assert param.default is not param.empty
        assert hints[param.name] in (int, float, bool)
        assert type(param.default) is hints[param.name]
        assert f"{param.name} ({hints[param.name].__name__}):" in func.__doc__


def test_registered_and_buildable_from_a_config():
    assert registry.datasets.get("spirals.v1") is spirals
    config = Config().from_str(
        '[data]\n@datasets = "blobs.v1"\nn_samples = 100\nn_classes = 4\nseed = 3\n'
    )
    data = registry.resolve(config)["data"]
    assert np.array_equal(data.X_dev, blobs(n_samples=100, n_classes=4, seed=3).X_dev)
