"""Plain-numpy reference for one optimizer update, written line by line: in
Thinc 9.1.1's order for Thinc's kinds, in the order of their PyTorch
reference implementations for the others (tests/reference/README.md says
which). The backends' fused kernels are tested against it, and so are
`optsvc.backends.elements`' functions, which the compiled kernels are built
from, run here as plain Python (`element_update`).

kind: an `UpdateKind`. `lr` is the tensor's step multiplier (bias correction
and lr_scale folded in, for Thinc's kinds), `bc1` / `bc2` its bias
corrections (AdEMAMix; Schedule-Free AdamW's bc2), `ema_rate` the averaging
rate (1 - d); the call's scalars (b1, b2, eps, l2, clip, decay, to_g1, to_g2,
alpha, to_z, y_step) are `ops.HostStep`'s, which says what each means.

Every function takes the arrays as a dict (`random_state`): w, g, the
kind's state s0, s1, s2 (None where it keeps fewer) and ema (None without
averages); `call` hands such a dict to a kernel.
"""

import numpy as np

from optsvc.backends import UpdateKind, elements
from optsvc.backends.ops import CLIP_FLAG, STATE_ARRAYS, HostStep

# the update kinds by the names the kernel tests give them
KINDS = {
    "sgd": UpdateKind.SGD,
    "adam": UpdateKind.ADAM,
    "momentum": UpdateKind.MOMENTUM,
    "lion": UpdateKind.LION,
    "ademamix": UpdateKind.ADEMAMIX,
    "sf_adamw": UpdateKind.SCHEDULE_FREE_ADAMW,
    "sf_sgd": UpdateKind.SCHEDULE_FREE_SGD,
}
THINC_KINDS = {k: v for k, v in KINDS.items() if v <= UpdateKind.MOMENTUM}
# the arrays of one update, in the kernels' argument order
STATE = ("s0", "s1", "s2")
NAMES = ("w", "g", *STATE, "ema")
# what a tensor brings besides its arrays; the rest of a call's values go
# to ops.HostStep
TENSOR = ("kind", "lr", "ema_rate", "bc1", "bc2")

# Typical scalars of one call, for every kind.
HYPER = dict(
    lr=0.01, b1=0.9, b2=0.999, eps=1e-8, ema_rate=0.1, bc1=0.19, bc2=0.0447,
    to_g1=0.1, to_g2=0.01, alpha=5.0, to_z=0.25, y_step=-0.0075,
)  # fmt: skip

f32, f64 = np.float32, np.float64


def split(hyper):
    """(the tensor's keyword arguments, the call's host array) of `hyper`."""
    tensor = {k: hyper.get(k, 0.0) for k in TENSOR}
    tensor["kind"] = int(hyper["kind"])
    host = HostStep(**{k: v for k, v in hyper.items() if k not in TENSOR})
    return tensor, host.array()


def state_of(arrays):
    """The kind's state arrays of an arrays dict, in order."""
    return tuple(arrays[k] for k in STATE if arrays[k] is not None)


def call(kernel, arrays, **hyper):
    """`kernel(w, g, state, ema, kind=, lr=, ema_rate=, bc1=, bc2=, host=)`
    (the kernels' common signature) on an arrays dict."""
    tensor, host = split(hyper)
    kernel(
        arrays["w"], arrays["g"], state_of(arrays), arrays["ema"], host=host, **tensor
    )


def _fma(a, s, b):
    """torch's fused a + s * b: one rounding (float64 holds s * b exactly)."""
    return (a.astype(f64) + np.asarray(s).astype(f64) * b.astype(f64)).astype(f32)


def _lerp(a, b, w):
    """torch.lerp(a, b, w) for a float weight."""
    w = f32(w)
    if abs(w) < 0.5:
        return _fma(a, w, b - a)
    return _fma(b, -(f32(1) - w), b - a)


def reference_update(
    w, g, s0, s1, s2, ema, *, kind, lr, b1=0.0, b2=0.0, eps=0.0, l2=0.0,
    clip=0.0, decay=0.0, ema_rate=0.0, bc1=0.0, bc2=0.0, to_g1=0.0, to_g2=0.0,
    alpha=0.0, to_z=0.0, y_step=0.0,
):  # fmt: skip
    if l2 != 0:
        g += f32(l2) * w
    if clip > 0:
        norm = f32(np.sqrt(np.dot(g.ravel().astype(np.float64), g.ravel())))
        if norm >= clip:
            g *= f32(clip) / norm
    if kind == UpdateKind.SGD:
        w -= f32(lr) * g
    elif kind in (UpdateKind.ADAM, UpdateKind.MOMENTUM):
        m, v = s0, s1
        m *= f32(b1)
        m += f32(1.0 - b1) * g
        v *= f32(b2)
        v += f32(1.0 - b2) * (g * g)
        if kind == UpdateKind.ADAM:
            w -= f32(lr) * (m / (np.sqrt(v) + f32(eps)))
        else:
            w -= f32(lr) * m
    elif kind == UpdateKind.LION:  # pytorch_optimizer's Lion
        m = s0
        w *= f32(1.0 - decay)
        c = _lerp(m, g, to_g1)
        w[...] = _fma(w, -f32(lr), np.sign(c))
        m[...] = _lerp(m, g, to_g2)
    elif kind == UpdateKind.ADEMAMIX:  # pytorch_optimizer's AdEMAMix
        m, v, slow = s0, s1, s2
        w *= f32(1.0 - decay)
        m[...] = _lerp(m, g, to_g1)
        v[...] = _fma(v * f32(b2), f32(1.0 - b2) * g, g)
        slow[...] = _lerp(slow, g, to_g2)
        den = np.sqrt(v) / f32(bc2) + f32(eps)
        update = _fma(m / f32(bc1), f32(alpha), slow)
        w += (-f32(lr) * update) / den
    else:  # schedulefree's AdamWScheduleFree and SGDScheduleFree
        z = s0
        if kind == UpdateKind.SCHEDULE_FREE_ADAMW:
            v = s1
            v[...] = _fma(v * f32(b2), f32(1.0 - b2) * g, g)
            g /= np.sqrt(v / f32(bc2)) + f32(eps)
        if decay != 0:
            g[...] = _fma(g, f32(decay), w)
        w[...] = _fma(_lerp(w, z, to_z), f32(y_step), g)
        z[...] = _fma(z, -f32(lr), g)
    if kind <= UpdateKind.MOMENTUM and decay != 0:
        w -= f32(decay) * w
    g[...] = 0
    if ema is not None:
        ema -= f32(ema_rate) * (ema - w)


def element_update(w, g, s0, s1, s2, ema, **hyper):
    """`reference_update`'s arguments and effect, through the element
    functions as plain Python, element by element: the clipping norm summed
    in float64 in index order, then `elements.update_element` on each."""
    tensor, host = split(hyper)
    step = elements.step_scalars(host, ema is not None)
    scale = np.float32(1.0)
    if step.flags & CLIP_FLAG:
        total = 0.0
        for i in range(w.shape[0]):
            total += elements.grad_sq(i, g, w, step.l2, step.flags)
        scale = elements.clip_scale(total, step.clip)
    t = elements.tensor_scalars(
        tensor["lr"], tensor["ema_rate"], tensor["bc1"], tensor["bc2"]
    )
    for i in range(w.shape[0]):
        elements.update_element(
            i, w, g, s0, s1, s2, ema, tensor["kind"], t, scale, step
        )


def random_state(n, kind, averages, seed=0):
    """Random float32 inputs of one update: w, g, the kind's state s0, s1,
    s2 (second moments nonnegative) and ema (with averages), as the arrays
    dict of `call`."""
    rng = np.random.default_rng(seed)
    arrays = {
        "w": rng.standard_normal(n).astype(np.float32),
        "g": rng.standard_normal(n).astype(np.float32),
        **dict.fromkeys(STATE),
        "ema": rng.standard_normal(n).astype(np.float32) if averages else None,
    }
    for i in range(STATE_ARRAYS[kind]):
        if i == 1:  # a second moment
            arrays[STATE[i]] = rng.random(n).astype(np.float32) * 0.1
        else:
            arrays[STATE[i]] = rng.standard_normal(n).astype(np.float32) * 0.1
    return arrays


def copy_state(arrays):
    """A deep copy of `random_state`'s dict."""
    return {k: None if a is None else a.copy() for k, a in arrays.items()}
