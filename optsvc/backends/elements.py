"""The optimizer update of one element, written once for every compiled kernel.

Plain Python on numpy scalars, importable without numba. numba compiles
these functions for each place they run (`compiled`): `numba_kernels` with
``njit(inline="always")``, inlined into its CPU loops (one per update kind,
driven per tensor, over many tensors and over threads), and `cuda_kernels`
with ``cuda.jit(device=True)``, called by its CUDA kernels (per tensor, many
tensors). Under numba's CUDA simulator, and in the tests against
``tests/kernel_reference.py``, they run as they are. The blocked numpy
kernel (`numpy_kernels`, the path without numba) is array code, not this.

Element i of a tensor (`update_element`): the L2 term into the gradient,
the clip scale, the rule of the tensor's kind (`rule`: it updates the kind's
state and gives the new weight), ``g = 0``, the average. Every kernel passes
three state arrays (a, b, c) and each kind uses the first
`ops.STATE_ARRAYS[kind]` of them (the others are empty). The rules read the
tensor's float32 scalars from a `Tensor` and the call's from one `Step`,
which every tensor of the call shares and whose type the kernels'
signatures follow; `step_scalars` makes it from the host's `ops.HostStep`.

Thinc's kinds (SGD, ADAM, MOMENTUM) follow Thinc 9.1.1's order. The others
follow the order of their reference implementations in PyTorch, whose
add-with-alpha, lerp and addcmul round once (`fma`) and whose lerp takes one
of two forms by its weight (`lerp`); see tests/reference/README.md.

Adding an optimizer: its rule (a function like `lion`, which returns the
new weight), its kind in `ops.UpdateKind` with its count in
`ops.STATE_ARRAYS`, the scalars it needs (fields of `ops.HostStep`, made
float32 in `step_scalars`), and its registration: a branch in `rule` and its
loop in `numba_kernels._apply`; its array code in `numpy_kernels` (the path
without numba); then the host's side in `optsvc.optim` (a `Rule`).

Arithmetic: float32 values are only mixed with float32 (no Python float
literals: numba would promote to float64), and host values are rounded to
float32 once, ``1 - b1`` formed in float64 first, as Thinc does. `fma` is
the one place that computes in float64: a product of two float32 is exact
there, so the sum rounds once, then to float32 (also where NVVM fuses it).
"""

from __future__ import annotations

import math
import types
from typing import NamedTuple

import numpy as np

from .ops import (
    CLIP_FLAG,
    DECAY_FLAG,
    EMA_FLAG,
    FAR1_FLAG,
    FAR2_FLAG,
    FARZ_FLAG,
    L2_FLAG,
    HostStep,
    UpdateKind,
)

# The kinds as plain ints: numba compiles them in as constants.
SGD, ADAM, MOMENTUM, LION, ADEMAMIX, SF_ADAMW, SF_SGD = map(int, UpdateKind)
# Where each of HostStep's values sits in the host's array.
_B1, _B2, _EPS, _L2, _CLIP, _DECAY, _TO_G1, _TO_G2, _ALPHA, _TO_Z, _Y_STEP = range(
    len(HostStep._fields)
)

f32, f64 = np.float32, np.float64


class Hyper(NamedTuple):
    """The rules' float32 scalars, the same for every tensor of a call
    (`ops.HostStep` says what each is). A lerp weight of 0.5 or more is held
    as w - 1, its flag set (see `lerp`)."""

    b1: np.float32
    one_minus_b1: np.float32
    b2: np.float32
    one_minus_b2: np.float32
    eps: np.float32
    to_g1: np.float32
    to_g2: np.float32
    alpha: np.float32
    to_z: np.float32
    y_step: np.float32


class Step(NamedTuple):
    """What every tensor of a call shares, as the kernels take it. `keep`:
    the factor the weights keep under decoupled decay applied first
    (1 - decay, rounded once; exactly 1 without decay)."""

    hyper: Hyper
    l2: np.float32
    clip: np.float32
    decay: np.float32
    keep: np.float32
    flags: np.int32


class Tensor(NamedTuple):
    """One tensor's float32 scalars (a column of `ops.TensorParams`)."""

    lr: np.float32
    rate: np.float32
    bc1: np.float32
    bc2: np.float32


def _weight(w):
    """A lerp weight as `lerp` takes it, and whether it is the far form."""
    w32 = f32(w)
    if abs(w32) < f32(0.5):
        return w32, False
    return w32 - f32(1.0), True  # exact: Sterbenz, for w in [0.5, 2]


def step_scalars(h, has_ema):
    """`Step` from the host's float64 values (`ops.HostStep.array()`). The
    ``flags`` bits (which optional parts of the update run) are decided on
    those, as the reference decides them: a value that rounds to 0 in
    float32 still takes the reference's branch."""
    b1, b2 = h[_B1], h[_B2]
    to_g1, far1 = _weight(h[_TO_G1])
    to_g2, far2 = _weight(h[_TO_G2])
    to_z, farz = _weight(h[_TO_Z])
    hyper = Hyper(
        f32(b1), f32(1.0 - b1), f32(b2), f32(1.0 - b2), f32(h[_EPS]), to_g1,
        to_g2, f32(h[_ALPHA]), to_z, f32(h[_Y_STEP]),
    )  # fmt: skip
    l2, clip, decay = h[_L2], h[_CLIP], h[_DECAY]
    flags = np.int32(
        (L2_FLAG if l2 != 0.0 else 0) | (CLIP_FLAG if clip > 0.0 else 0)
        | (DECAY_FLAG if decay != 0.0 else 0) | (EMA_FLAG if has_ema else 0)
        | (FAR1_FLAG if far1 else 0) | (FAR2_FLAG if far2 else 0)
        | (FARZ_FLAG if farz else 0)
    )  # fmt: skip
    return Step(hyper, f32(l2), f32(clip), f32(decay), f32(1.0 - decay), flags)


def tensor_scalars(lr, rate, bc1, bc2):
    """`Tensor` from a tensor's values (any float type)."""
    return Tensor(f32(lr), f32(rate), f32(bc1), f32(bc2))


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


# --- torch's rounding -------------------------------------------------------------


def fma(a, s, b):
    """a + s * b with one rounding (torch's add with alpha, addcmul and
    lerp are fused multiply-adds), for float32 a, s and b."""
    return f32(f64(a) + f64(s) * f64(b))


def lerp(a, b, weight, far):
    """torch.lerp(a, b, w) in float32: a + w * (b - a) when |w| < 0.5, else
    b - (1 - w) * (b - a), each with one rounding; `weight` is w, or w - 1
    when `far` (the second form), as `step_scalars` holds it."""
    base = a
    if far:
        base = b
    return fma(base, weight, b - a)


def second_moment(i, v, gi, hp):
    """torch's ``v.mul_(b2).addcmul_(g, g, value=1 - b2)`` for element i,
    updated in place and returned (AdEMAMix, Schedule-Free AdamW; Thinc's
    Adam rounds its sum twice, see `moments`)."""
    vi = fma(v[i] * hp.b2, hp.one_minus_b2 * gi, gi)
    v[i] = vi
    return vi


def sign(x):
    """torch.sign: -1, 0 or 1 (NaN stays NaN)."""
    s = x  # 0 and NaN as they are
    if x > f32(0.0):
        s = f32(1.0)
    elif x < f32(0.0):
        s = f32(-1.0)
    return s


# --- the rules --------------------------------------------------------------------
# Each gives the new weight of element i from its weight wi and clipped
# gradient gi, its tensor's `Tensor` and the call's `Step`, and updates the
# state it keeps (a, b, c: its arrays, in the order of ops.STATE_ARRAYS).


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


def thinc(kind, i, wi, gi, m, v, t, step):
    """SGD, Adam and RAdam's momentum, as Thinc: ``w -= step``, then the
    decoupled weight decay ``w -= decay * w``. The kinds that keep moments
    share one update of them, between the tests of the kind: so written,
    the CUDA kernels branch as they did with a copy of this code each (a
    chain of tests on the kind alone compiles to a switch, which NVVM splits
    less)."""
    if kind == SGD:
        wi = wi - sgd(gi, t.lr)
    else:
        mi, vi = moments(i, m, v, gi, step.hyper)
        if kind == ADAM:
            wi = wi - adam(mi, vi, t.lr, step.hyper)
        else:
            wi = wi - momentum(mi, vi, t.lr, step.hyper)
    if step.flags & DECAY_FLAG:
        wi = wi - step.decay * wi
    return wi


def lion(i, wi, gi, m, t, step):
    """Lion (Chen et al., 2023), as pytorch_optimizer's: decoupled decay,
    then ``w -= lr * sign(lerp(m, g, 1 - b1))`` and ``m = lerp(m, g, 1 - b2)``."""
    hp, flags = step.hyper, step.flags
    mi = m[i]
    wi = wi * step.keep
    wi = wi - t.lr * sign(lerp(mi, gi, hp.to_g1, flags & FAR1_FLAG))
    m[i] = lerp(mi, gi, hp.to_g2, flags & FAR2_FLAG)
    return wi


def ademamix(i, wi, gi, m, v, slow, t, step):
    """AdEMAMix (Pagliardini et al., 2024), as pytorch_optimizer's:
    decoupled decay, Adam's m and v and the slow momentum, then
    ``w -= lr * (m / bc1 + alpha * slow) / (sqrt(v) / bc2 + eps)``."""
    hp, flags = step.hyper, step.flags
    wi = wi * step.keep
    mi = lerp(m[i], gi, hp.to_g1, flags & FAR1_FLAG)
    m[i] = mi
    vi = second_moment(i, v, gi, hp)
    si = lerp(slow[i], gi, hp.to_g2, flags & FAR2_FLAG)
    slow[i] = si
    den = f32(math.sqrt(vi)) / t.bc2 + hp.eps
    return wi + (-t.lr * fma(mi / t.bc1, hp.alpha, si)) / den


def schedule_free(kind, i, wi, gi, z, v, t, step):
    """Schedule-Free AdamW and SGD (Defazio et al., 2024), as the
    `schedulefree` package: the gradient (AdamW: normalised by its second
    moment) plus the weight decay at y, then ``y = lerp(y, z, c) + y_step *
    g`` and ``z -= lr * g``. The weights are y."""
    hp = step.hyper
    if kind == SF_ADAMW:
        vi = second_moment(i, v, gi, hp)
        gi = gi / (f32(math.sqrt(vi / t.bc2)) + hp.eps)
    if step.flags & DECAY_FLAG:
        gi = fma(gi, step.decay, wi)
    zi = z[i]
    z[i] = fma(zi, -t.lr, gi)
    return fma(lerp(wi, zi, hp.to_z, step.flags & FARZ_FLAG), hp.y_step, gi)


def rule(kind, i, wi, gi, a, b, c, t, step):
    """The new weight of element i by the rule of `kind` (an `UpdateKind`
    value), its state in a, b, c updated in place."""
    if kind <= MOMENTUM:
        return thinc(kind, i, wi, gi, a, b, t, step)
    if kind == LION:
        return lion(i, wi, gi, a, t, step)
    if kind == ADEMAMIX:
        return ademamix(i, wi, gi, a, b, c, t, step)
    return schedule_free(kind, i, wi, gi, a, b, t, step)


def update_element(i, w, g, a, b, c, ema, kind, t, scale, step):
    """Element i's update in place: w, g, the state arrays a, b, c and ema
    (the ones the kind and the flags do not need unread); the tensor's
    kind, `Tensor` and clip scale (float32); the `Step`."""
    wi = w[i]
    gi = g[i]
    if step.flags & L2_FLAG:
        gi = gi + step.l2 * wi
    gi = gi * scale
    wi = rule(kind, i, wi, gi, a, b, c, t, step)
    g[i] = f32(0.0)
    w[i] = wi
    if step.flags & EMA_FLAG:
        e = ema[i]
        ema[i] = e - t.rate * (e - wi)


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
