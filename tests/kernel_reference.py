"""Plain-numpy reference for one optimizer update, written line by line in
Thinc 9.1.1's order. The backends' fused kernels are tested against it, and
so are `optsvc.backends.elements`' functions, which the compiled kernels are
built from, run here as plain Python (`element_update`).

kind: an `UpdateKind`: SGD (w -= lr * g), ADAM (w -= lr * m / (sqrt(v) +
eps)), MOMENTUM (RAdam before its variance is rectified: w -= lr * m).
`lr` is the final per-step multiplier (bias correction and lr_scale folded
in), `decay` the weight-decay multiplier applied after the update and
`ema_rate` the averaging rate (1 - d).
"""

import numpy as np

from optsvc.backends import UpdateKind, elements
from optsvc.backends.ops import CLIP_FLAG

# the update kinds by the names the kernel tests give them
KINDS = {
    "sgd": UpdateKind.SGD,
    "adam": UpdateKind.ADAM,
    "momentum": UpdateKind.MOMENTUM,
}
# the arrays of one update, in the kernels' argument order
NAMES = ("w", "g", "m", "v", "ema")


def reference_update(
    w, g, m, v, ema, *, kind, lr, b1, b2, eps, l2, clip, decay, ema_rate
):
    f32 = np.float32
    if l2 != 0:
        g += f32(l2) * w
    if clip > 0:
        norm = f32(np.sqrt(np.dot(g.ravel().astype(np.float64), g.ravel())))
        if norm >= clip:
            g *= f32(clip) / norm
    if kind == UpdateKind.SGD:
        w -= f32(lr) * g
    else:
        m *= f32(b1)
        m += f32(1.0 - b1) * g
        v *= f32(b2)
        v += f32(1.0 - b2) * (g * g)
        if kind == UpdateKind.ADAM:
            w -= f32(lr) * (m / (np.sqrt(v) + f32(eps)))
        else:
            w -= f32(lr) * m
    g[...] = 0
    if decay != 0:
        w -= f32(decay) * w
    if ema is not None:
        ema -= f32(ema_rate) * (ema - w)


def element_update(
    w, g, m, v, ema, *, kind, lr, b1, b2, eps, l2, clip, decay, ema_rate
):
    """`reference_update`'s arguments and effect, through the element
    functions as plain Python, element by element: the clipping norm summed
    in float64 in index order, then `elements.update_element` on each."""
    step = elements.step_scalars(b1, b2, eps, l2, clip, decay, ema is not None)
    scale = np.float32(1.0)
    if step.flags & CLIP_FLAG:
        total = 0.0
        for i in range(w.shape[0]):
            total += elements.grad_sq(i, g, w, step.l2, step.flags)
        scale = elements.clip_scale(total, step.clip)
    lr32, rate32 = np.float32(lr), np.float32(ema_rate)
    for i in range(w.shape[0]):
        elements.update_element(
            i, w, g, m, v, ema, int(kind), lr32, rate32, scale, step
        )


def random_state(n, kind, averages, seed=0):
    """Random float32 inputs of one update: w, g, and m, v (not for SGD) and
    ema (with averages), as the keyword arguments of the kernels."""
    rng = np.random.default_rng(seed)
    arrays = {
        "w": rng.standard_normal(n).astype(np.float32),
        "g": rng.standard_normal(n).astype(np.float32),
        "m": None,
        "v": None,
        "ema": rng.standard_normal(n).astype(np.float32) if averages else None,
    }
    if kind != UpdateKind.SGD:
        arrays["m"] = rng.standard_normal(n).astype(np.float32) * 0.1
        arrays["v"] = rng.random(n).astype(np.float32) * 0.1
    return arrays


def copy_state(arrays):
    """A deep copy of `random_state`'s dict."""
    return {k: None if a is None else a.copy() for k, a in arrays.items()}
