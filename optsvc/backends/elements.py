"""The optimizer update of one element, written once for every compiled kernel.

Plain Python on numpy scalars, importable without numba. numba compiles
these functions for each place they run (`compiled`): `numba_kernels` with
``njit(inline="always")``, inlined into its CPU loops (one per update kind,
driven per tensor, over many tensors and over threads), and `cuda_kernels`
with ``cuda.jit(device=True)``, called by its CUDA kernels (per tensor, many
tensors). Under numba's CUDA simulator, and in the tests against
``tests/kernel_reference.py``, they run as they are. The blocked numpy
kernel (`numpy_kernels`, the path without numba) is array code, not this.

Element i of a tensor, in Thinc 9.1.1's order (`update_element`): the L2
term into the gradient, the clip scale, the rule of the tensor's kind (it
updates the optimizer state and gives the step), ``w -= step``, ``g = 0``,
weight decay, the average. The rules read their float32 scalars from one
`Hyper` tuple, which every tensor of a step shares; the kernels take it
inside a `Step`, and their signatures follow its type.

Adding an optimizer: its rule (a function like `adam`), the scalars it needs
(fields of `Hyper`, set in `step_scalars`), its kind in `ops.UpdateKind`, and its
registration: a branch in `rule` and its loop in `numba_kernels._apply`.
(The checks before a CUDA launch, `cuda_kernels.checked_arrays`, know SGD
as the kind without state and every other kind as one with m and v.)

Arithmetic: float32 values are only mixed with float32 (no Python float
literals: numba would promote to float64), and host values are rounded to
float32 once, ``1 - b1`` formed in float64 first, as Thinc does.
"""

from __future__ import annotations

import math
import types
from typing import NamedTuple

import numpy as np

from .ops import CLIP_FLAG, DECAY_FLAG, EMA_FLAG, L2_FLAG, UpdateKind

# The kinds as plain ints: numba compiles them in as constants.
SGD, ADAM, MOMENTUM = map(int, (UpdateKind.SGD, UpdateKind.ADAM, UpdateKind.MOMENTUM))

f32, f64 = np.float32, np.float64


class Hyper(NamedTuple):
    """The rules' float32 scalars, the same for every tensor of a step."""

    b1: np.float32
    one_minus_b1: np.float32
    b2: np.float32
    one_minus_b2: np.float32
    eps: np.float32


class Step(NamedTuple):
    """What every tensor of a step shares, as the kernels take it."""

    hyper: Hyper
    l2: np.float32
    clip: np.float32
    decay: np.float32
    flags: np.int32


def step_scalars(b1, b2, eps, l2, clip, decay, has_ema):
    """`Step` from the host's float64 values. The ``flags`` bits (which
    optional parts of the update run) are decided on those, as the reference
    decides them: a value that rounds to 0 in float32 still takes the
    reference's branch."""
    hyper = Hyper(f32(b1), f32(1.0 - b1), f32(b2), f32(1.0 - b2), f32(eps))
    flags = np.int32(
        (L2_FLAG if l2 != 0.0 else 0) | (CLIP_FLAG if clip > 0.0 else 0)
        | (DECAY_FLAG if decay != 0.0 else 0) | (EMA_FLAG if has_ema else 0)
    )  # fmt: skip
    return Step(hyper, f32(l2), f32(clip), f32(decay), flags)


def grad_sq(i, g, w, l2, flags):
    """Element i's term of the squared clipping norm, in float64."""
    gi = g[i]
    if flags & L2_FLAG:
        gi = gi + l2 * w[i]
    return f64(gi) * f64(gi)


def clip_scale(total, clip):
    """The gradient's factor for a squared norm `total` (callers test the
    clip flag): 1 below the clip, so "no clipping" needs no branch later."""
    scale = f32(1.0)  # x * 1 is exact
    norm = f32(math.sqrt(total))
    if norm >= clip:
        scale = clip / norm
    return scale


# The rules: the step of element i from its clipped gradient gi, the
# tensor's learning rate (bias correction folded in) and the step's `Hyper`.
# `rule` dispatches on the kind and updates the state the rule keeps.


def sgd(gi, lr):
    return lr * gi


def moments(i, m, v, gi, hp):
    """Adam's first and second moments of element i, updated and returned."""
    mi = m[i] * hp.b1 + hp.one_minus_b1 * gi
    vi = v[i] * hp.b2 + hp.one_minus_b2 * (gi * gi)
    m[i] = mi
    v[i] = vi
    return mi, vi


def adam(mi, vi, lr, hp):
    return lr * (mi / (f32(math.sqrt(vi)) + hp.eps))


def momentum(mi, vi, lr, hp):
    """RAdam before its variance is rectified (both moments still kept)."""
    return lr * mi


def rule(kind, i, m, v, gi, lr, hp):
    """The step of the rule of `kind` (an `UpdateKind` value), the state of
    element i updated in place. The kinds that keep moments share one update
    of them, between the tests of the kind: so written, the CUDA kernels
    branch as they did with a copy of this code each (a chain of tests on
    the kind alone compiles to a switch, which NVVM splits less)."""
    if kind == SGD:
        return sgd(gi, lr)
    mi, vi = moments(i, m, v, gi, hp)
    if kind == ADAM:
        return adam(mi, vi, lr, hp)
    return momentum(mi, vi, lr, hp)


def update_element(i, w, g, m, v, ema, kind, lr, rate, scale, step):
    """Element i's update in place: w, g, m, v, ema arrays (m, v, ema unread
    where the kind and the flags do not need them); the tensor's kind,
    learning rate, averaging rate and clip scale (float32); the `Step`."""
    wi = w[i]
    gi = g[i]
    if step.flags & L2_FLAG:
        gi = gi + step.l2 * wi
    gi = gi * scale
    wi = wi - rule(kind, i, m, v, gi, lr, step.hyper)
    g[i] = f32(0.0)
    if step.flags & DECAY_FLAG:
        wi = wi - step.decay * wi
    w[i] = wi
    if step.flags & EMA_FLAG:
        e = ema[i]
        ema[i] = e - rate * (e - wi)


def compiled(jit) -> types.SimpleNamespace:
    """Every function of this module compiled with `jit` (a decorator:
    numba's njit or cuda.jit, with options), each calling the others'
    compiled versions (copies of the functions, whose globals hold them)."""
    space = dict(globals())
    names = [
        name
        for name, f in space.items()
        if isinstance(f, types.FunctionType)
        and f.__module__ == __name__
        and name != "compiled"
    ]
    for name in names:
        space[name] = jit(types.FunctionType(space[name].__code__, space, name))
    return types.SimpleNamespace(**{name: space[name] for name in names})
