"""Toy models for training jobs, their losses, and their evaluation score.

The forward and backward passes are written once against `ops.xp`, so the
same code runs on numpy and on cupy. Parameters are keyed as in Thinc,
`(node_id, name)`: `(0, "W")`, `(0, "b")`, `(1, "W")`, ... in layer order, with
Thinc's `W` of shape `(n_out, n_in)`. `grads` has the same keys and shapes, and
backprop adds into those arrays in place, so they can be views into a
`ParamStore`'s flat buffers (`use_params`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, get_args

import numpy as np

from optsvc import registries
from optsvc.backends import Ops, get_current_ops
from optsvc.spec import Arg, checked

Key = tuple[int, str]

Activation = Literal["relu", "tanh"]
ACTIVATIONS = get_args(Activation)


class Model:
    """A stack of dense layers: `hidden_widths` hidden layers with the
    activation, then a linear output layer (no hidden layers: a linear model).

    >>> from optsvc import NumpyOps
    >>> model = mlp(hidden_width=8, depth=1)
    >>> model.initialize(n_in=2, n_out=3, ops=NumpyOps(), seed=0)
    >>> list(model.params), model.n_params()
    ([(0, 'W'), (0, 'b'), (1, 'W'), (1, 'b')], 51)
    >>> model.predict(np.zeros((5, 2), dtype="float32")).shape
    (5, 3)
    """

    def __init__(
        self,
        name: str,
        hidden_widths: tuple[int, ...] = (),
        activation: str = "relu",
    ) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"{name}: 'activation' must be one of {ACTIVATIONS}, got {activation!r}"
            )
        self.name = name
        self.hidden_widths = tuple(int(w) for w in hidden_widths)
        self.activation = activation
        self.ops: Ops | None = None
        self.n_in: int | None = None
        self.n_out: int | None = None
        self.params: dict[Key, Any] = {}
        self.grads: dict[Key, Any] = {}

    @property
    def n_layers(self) -> int:
        """Dense layers, the output layer included."""
        return len(self.hidden_widths) + 1

    def initialize(
        self, n_in: int, n_out: int, ops: Ops | None = None, seed: int = 0
    ) -> None:
        """Allocate seeded parameters on `ops` (the current backend by default)
        and zeroed gradients.

        Weights are drawn on the CPU with `numpy.random.default_rng(seed)`, so
        every backend starts from the same numbers: He uniform for ReLU layers,
        Glorot uniform for tanh and output layers; biases are zero.
        """
        for arg, value in (("n_in", n_in), ("n_out", n_out)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(f"{self.name}: '{arg}' must be an integer")
            if value < 1:
                raise ValueError(f"{self.name}: '{arg}' must be >= 1, got {value}")
        ops = ops or get_current_ops()
        rng = np.random.default_rng(seed)
        widths = (int(n_in), *self.hidden_widths, int(n_out))
        params: dict[Key, Any] = {}
        grads: dict[Key, Any] = {}
        for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            hidden = i < len(self.hidden_widths)
            if hidden and self.activation == "relu":
                limit = math.sqrt(6.0 / fan_in)
            else:
                limit = math.sqrt(6.0 / (fan_in + fan_out))
            W = rng.uniform(-limit, limit, size=(fan_out, fan_in)).astype(np.float32)
            params[(i, "W")] = ops.asarray(np.ascontiguousarray(W))
            params[(i, "b")] = ops.alloc((fan_out,))
            grads[(i, "W")] = ops.alloc((fan_out, fan_in))
            grads[(i, "b")] = ops.alloc((fan_out,))
        self.ops, self.n_in, self.n_out = ops, int(n_in), int(n_out)
        self.params, self.grads = params, grads

    def use_params(self, params: Mapping[Key, Any], grads: Mapping[Key, Any]) -> None:
        """Compute with these arrays from now on, e.g. views into a ParamStore.

        Both mappings need exactly the model's keys, with the same shapes, as
        arrays of the model's backend.
        """
        self._check_initialized()
        for label, given in (("params", params), ("grads", grads)):
            missing = [k for k in self.params if k not in given]
            extra = [k for k in given if k not in self.params]
            if missing or extra:
                raise ValueError(
                    f"{self.name}: use_params: {label} must have the keys "
                    f"{list(self.params)}; missing {missing}, unexpected {extra}"
                )
            for key, current in self.params.items():
                array = given[key]
                if tuple(array.shape) != tuple(current.shape):
                    raise ValueError(
                        f"{self.name}: use_params: {label}[{key!r}] has shape "
                        f"{tuple(array.shape)}, expected {tuple(current.shape)}"
                    )
                if not self.ops.owns(array):
                    raise ValueError(
                        f"{self.name}: use_params: {label}[{key!r}] is on "
                        f"{self.ops.device_of(array)}, but the model computes with "
                        f"{self.ops!r}"
                    )
        self.params = {key: params[key] for key in self.params}
        self.grads = {key: grads[key] for key in self.params}

    def predict(self, X):
        """The output for a batch `X` of shape (n, n_in): logits or values."""
        return self._forward(X, keep=False)[0]

    def begin_update(self, X) -> tuple[Any, Callable[[Any], None]]:
        """The output for `X`, and `backprop(dY)`, which adds the gradients of
        `sum(output * dY)` with respect to the parameters into `self.grads`."""
        Y, inputs = self._forward(X, keep=True)
        weights = [self.params[(i, "W")] for i in range(self.n_layers)]

        def backprop(dY) -> None:
            if tuple(dY.shape) != tuple(Y.shape):
                raise ValueError(
                    f"{self.name}: dY has shape {tuple(dY.shape)}, "
                    f"expected {tuple(Y.shape)}"
                )
            d = dY
            for i in reversed(range(self.n_layers)):
                if i < self.n_layers - 1:
                    H = inputs[i + 1]  # this layer's activation output
                    if self.activation == "relu":
                        d = d * (H > 0)
                    else:
                        d = d * (1 - H * H)
                grad_W = self.grads[(i, "W")]
                grad_W += d.T @ inputs[i]
                grad_b = self.grads[(i, "b")]
                grad_b += d.sum(axis=0)
                if i > 0:
                    d = d @ weights[i]

        return Y, backprop

    def n_params(self) -> int:
        """The number of parameters (0 before `initialize`)."""
        return sum(int(p.size) for p in self.params.values())

    def _check_initialized(self) -> None:
        if self.ops is None:
            raise ValueError(f"{self.name}: call initialize(n_in, n_out, ops) first")

    def _forward(self, X, *, keep: bool):
        self._check_initialized()
        xp = self.ops.xp
        X = self.ops.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_in:
            raise ValueError(
                f"{self.name}: expected input of shape (n, {self.n_in}), "
                f"got {tuple(X.shape)}"
            )
        inputs = []
        H = X
        for i in range(self.n_layers):
            if keep:
                inputs.append(H)
            Z = H @ self.params[(i, "W")].T
            Z += self.params[(i, "b")]
            if i < self.n_layers - 1:
                if self.activation == "relu":
                    xp.maximum(Z, 0, out=Z)
                else:
                    xp.tanh(Z, out=Z)
            H = Z
        return H, inputs

    def __repr__(self) -> str:
        if self.ops is None:
            return f"<Model {self.name}, not initialized>"
        widths = " -> ".join(
            str(w) for w in (self.n_in, *self.hidden_widths, self.n_out)
        )
        act = f" ({self.activation})" if self.hidden_widths else ""
        return f"<Model {self.name}: {widths}{act}, {self.n_params()} parameters>"


# --- registered models -----------------------------------------------------------


@registries.models.register("linear.v1")
@checked()
def linear() -> Model:
    """One linear layer: softmax regression on the logits (classification) or
    linear least squares (regression). Sizes come from the data set.

    >>> linear().n_layers
    1
    """
    return Model("linear")


@registries.models.register("mlp.v1")
@checked()
def mlp(
    *,
    hidden_width: Annotated[int, Arg("units in each hidden layer", ge=1)] = 64,
    depth: Annotated[int, Arg("number of hidden layers", ge=1)] = 2,
    activation: Annotated[Activation, Arg("hidden activation")] = "relu",
) -> Model:
    """A multi-layer perceptron: `depth` hidden layers of `hidden_width` units
    with the activation, then a linear output layer.

    hidden_width (int): Units in each hidden layer.
    depth (int): Hidden layers (at least 1).
    activation (str): "relu" or "tanh".

    >>> mlp(hidden_width=32, depth=3, activation="tanh").hidden_widths
    (32, 32, 32)
    """
    return Model("mlp", (hidden_width,) * depth, activation)


# --- losses and score --------------------------------------------------------------


def softmax_cross_entropy(logits, y_ids, xp) -> tuple[float, Any]:
    """Mean cross-entropy of softmax(logits) against class ids, and its
    gradient with respect to the logits (so divided by the batch size).

    >>> loss, dY = softmax_cross_entropy(np.zeros((2, 4), "f"), np.array([0, 3]), np)
    >>> round(loss, 4), dY[0]
    (1.3863, array([-0.375,  0.125,  0.125,  0.125], dtype=float32))
    """
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ValueError(f"logits must be (n, n_classes), got {tuple(logits.shape)}")
    n, n_classes = logits.shape
    y_ids = xp.asarray(y_ids)
    if tuple(y_ids.shape) != (n,) or y_ids.dtype.kind not in "iu":
        raise ValueError(
            f"y_ids must be {n} integer class ids, got shape {tuple(y_ids.shape)} "
            f"of {y_ids.dtype}"
        )
    onehot = y_ids[:, None] == xp.arange(n_classes)[None, :]
    if not bool(onehot.any(axis=1).all()):
        raise ValueError(f"y_ids must be class ids in [0, {n_classes})")
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = xp.exp(shifted)
    sums = exp.sum(axis=1, keepdims=True)
    log_probs = shifted - xp.log(sums)
    loss = -float(xp.where(onehot, log_probs, 0).sum()) / n
    dY = exp / sums
    dY -= onehot.astype(dY.dtype)
    dY /= n
    return loss, dY


def mean_squared_error(pred, y, xp) -> tuple[float, Any]:
    """The mean of `(pred - y) ** 2` over all entries (PyTorch's MSELoss), and
    its gradient with respect to `pred`.

    >>> loss, dY = mean_squared_error(np.ones((2, 1), "f"), np.zeros((2, 1), "f"), np)
    >>> loss, dY.ravel()
    (1.0, array([1., 1.], dtype=float32))
    """
    y = xp.asarray(y)
    if tuple(y.shape) != tuple(pred.shape) or pred.size == 0:
        raise ValueError(
            f"targets of shape {tuple(y.shape)} do not match predictions of shape "
            f"{tuple(pred.shape)}"
        )
    d = pred - y
    loss = float((d * d).mean())
    d *= 2.0 / d.size
    return loss, d


def evaluate(model: Model, X, y, task: str, xp) -> float:
    """The model's score on `(X, y)`, higher is better: accuracy for
    "classification", R² for "regression" (the mean over outputs of
    `1 - SSE / SST`, as scikit-learn's `r2_score`).

    >>> from optsvc import NumpyOps
    >>> model = linear()
    >>> model.initialize(2, 2, NumpyOps())
    >>> X, y = np.ones((4, 2), "f"), np.array([0, 0, 1, 1])
    >>> evaluate(model, X, y, "classification", np)
    0.5
    """
    out = model.predict(X)
    y = xp.asarray(y)
    if task == "classification":
        if tuple(y.shape) != (out.shape[0],):
            raise ValueError(f"expected {out.shape[0]} class ids, got {y.shape}")
        return float((out.argmax(axis=1) == y).sum()) / max(1, int(y.shape[0]))
    if task == "regression":
        if tuple(y.shape) != tuple(out.shape):
            raise ValueError(f"expected targets of shape {out.shape}, got {y.shape}")
        y = y.astype(xp.float64)
        sse = ((y - out.astype(xp.float64)) ** 2).sum(axis=0)
        sst = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
        # A constant target scores 1 when matched exactly, else 0 (scikit-learn).
        r2 = xp.where(sst > 0, 1.0 - sse / xp.where(sst > 0, sst, 1.0), 0.0)
        r2 = xp.where((sst == 0) & (sse == 0), 1.0, r2)
        return float(r2.mean())
    raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")


__all__ = [
    "Model",
    "linear",
    "mlp",
    "softmax_cross_entropy",
    "mean_squared_error",
    "evaluate",
]
