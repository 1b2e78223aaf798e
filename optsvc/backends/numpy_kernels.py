"""The optimizer update on numpy: one pure, in-place kernel.

`fused_update` applies Thinc 9.1.1's per-tensor update (L2 into the gradient,
clipping by the L2 norm, SGD / Adam / momentum, zeroing the gradient, weight
decay, parameter averages) to flat float32 arrays in place. It walks the
arrays in blocks that stay in the CPU cache, so every element is read from
memory once, and it writes every temporary into two scratch buffers it keeps,
so a step allocates nothing. Each operation rounds to float32 in Thinc's
order, which is what makes the results match Thinc's.
"""

from __future__ import annotations

import functools

import numpy as np

from .ops import UpdateKind

_SGD, _ADAM = UpdateKind.SGD, UpdateKind.ADAM

# Elements per block: 7 arrays of 16K float32 (448 KiB) stay in a typical L2.
BLOCK = 16384

_f32 = np.float32


class Scratch:
    """Two float32 work buffers of one block each, reused by every call."""

    __slots__ = ("a", "b")

    def __init__(self, size: int = BLOCK) -> None:
        self.a = np.empty(size, dtype=np.float32)
        self.b = np.empty(size, dtype=np.float32)


# The buffers of calls that bring none (NumpyOps brings its own).
_scratch = functools.cache(Scratch)


def fused_update(
    w, g, m, v, ema, kind, lr, b1, b2, eps, l2, clip, decay, ema_rate, scratch=None
) -> None:
    """Update flat float32 arrays in place; `m`, `v` are None for SGD and
    `ema` is None without averages. See tests/kernel_reference.py for the
    same update written plainly."""
    s = scratch or _scratch()
    n = w.shape[0]
    if l2 != 0:  # g += l2 * w, before the norm
        c_l2 = _f32(l2)
        for start in range(0, n, BLOCK):
            stop = min(start + BLOCK, n)
            t = s.a[: stop - start]
            np.multiply(w[start:stop], c_l2, out=t)
            np.add(g[start:stop], t, out=g[start:stop])
    scale = None
    if clip > 0:
        norm = _f32(np.sqrt(float(np.dot(g, g))))
        if norm >= clip:
            scale = _f32(clip) / norm
    c = _f32(lr)
    c_b1, c_1b1 = _f32(b1), _f32(1.0 - b1)
    c_b2, c_1b2 = _f32(b2), _f32(1.0 - b2)
    c_eps, c_decay, c_rate = _f32(eps), _f32(decay), _f32(ema_rate)
    for start in range(0, n, BLOCK):
        stop = min(start + BLOCK, n)
        k = stop - start
        wb, gb = w[start:stop], g[start:stop]
        t, u = s.a[:k], s.b[:k]
        if scale is not None:
            np.multiply(gb, scale, out=gb)
        if kind == _SGD:
            np.multiply(gb, c, out=t)
            np.subtract(wb, t, out=wb)
        else:
            mb, vb = m[start:stop], v[start:stop]
            np.multiply(mb, c_b1, out=mb)
            np.multiply(gb, c_1b1, out=t)
            np.add(mb, t, out=mb)
            np.multiply(vb, c_b2, out=vb)
            np.multiply(gb, gb, out=t)
            np.multiply(t, c_1b2, out=t)
            np.add(vb, t, out=vb)
            if kind == _ADAM:
                np.sqrt(vb, out=t)
                np.add(t, c_eps, out=t)
                np.divide(mb, t, out=t)
                np.multiply(t, c, out=t)
            else:
                np.multiply(mb, c, out=t)
            np.subtract(wb, t, out=wb)
        gb.fill(0)
        if decay != 0:
            np.multiply(wb, c_decay, out=t)
            np.subtract(wb, t, out=wb)
        if ema is not None:
            eb = ema[start:stop]
            np.subtract(eb, wb, out=u)
            np.multiply(u, c_rate, out=u)
            np.subtract(eb, u, out=eb)
