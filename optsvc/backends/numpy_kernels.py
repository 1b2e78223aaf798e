"""The optimizer update on numpy: one pure, in-place kernel.

`fused_update` applies one tensor's update (Thinc 9.1.1's for SGD / Adam /
momentum: L2 into the gradient, clipping by the L2 norm, the rule, zeroing
the gradient, weight decay, parameter averages; the other kinds in their
reference's order, as `elements` states them) to flat float32 arrays in
place. It walks the arrays in blocks that stay in the CPU cache, so every
element is read from memory once, and it writes every temporary into
scratch buffers it keeps, so a step allocates nothing. Each operation
rounds to float32 in the reference's order (the fused multiply-adds of the
PyTorch references through float64, as `elements.fma`), which is what makes
the results match the references.
"""

from __future__ import annotations

import functools

import numpy as np

from .ops import HostStep, UpdateKind

_SGD, _ADAM, _MOMENTUM = UpdateKind.SGD, UpdateKind.ADAM, UpdateKind.MOMENTUM
_LION, _ADEMAMIX = UpdateKind.LION, UpdateKind.ADEMAMIX
_SF_ADAMW = UpdateKind.SCHEDULE_FREE_ADAMW

# Elements per block: 7 arrays of 16K float32 (448 KiB) stay in a typical L2.
BLOCK = 16384

_f32, _f64 = np.float32, np.float64


class Scratch:
    """Work buffers of one block each, reused by every call: two float32
    (`a`, `b`) and, made on first use, two float64 (for the fused
    multiply-adds)."""

    __slots__ = ("a", "b", "_wide")

    def __init__(self, size: int = BLOCK) -> None:
        self.a = np.empty(size, dtype=np.float32)
        self.b = np.empty(size, dtype=np.float32)
        self._wide = None

    @property
    def wide(self) -> tuple[np.ndarray, np.ndarray]:
        if self._wide is None:
            n = self.a.shape[0]
            self._wide = (np.empty(n, np.float64), np.empty(n, np.float64))
        return self._wide


# The buffers of calls that bring none (NumpyOps brings its own).
_scratch = functools.cache(Scratch)


def _fma(out, a, s, b, wide):
    """out = a + s * b with one rounding (`elements.fma`): float32 arrays
    `a`, `b` and `s` (or a float32 scalar) through `wide`, two float64
    buffers of their length (a ufunc that casts its inputs itself would
    allocate buffers of its own)."""
    x, y = wide
    np.copyto(x, b)
    if np.ndim(s):
        np.copyto(y, s)
        np.multiply(x, y, out=x)
    else:
        np.multiply(x, _f64(s), out=x)
    np.copyto(y, a)
    np.add(x, y, out=x)
    np.copyto(out, x, casting="same_kind")


def _weight(w):
    """`elements._weight`: the float32 lerp weight and whether it is far."""
    w32 = _f32(w)
    return (w32, False) if abs(w32) < _f32(0.5) else (w32 - _f32(1.0), True)


def _lerp(out, a, b, w, far, diff, wide):
    """out = torch.lerp(a, b, w) (`elements.lerp`); `diff`: float32 scratch."""
    np.subtract(b, a, out=diff)
    _fma(out, b if far else a, w, diff, wide)


def _second_moment(vb, gb, b2, one_minus_b2, t, wide):
    """v = v * b2 + (1 - b2) * g * g, the sum rounded once (torch's addcmul)."""
    np.multiply(vb, b2, out=vb)
    np.multiply(gb, one_minus_b2, out=t)
    _fma(vb, vb, t, gb, wide)


def fused_update(
    w, g, state, ema, kind, lr, ema_rate, bc1, bc2, host, scratch=None
) -> None:
    """Update flat float32 arrays in place; `state` holds the kind's arrays
    (`ops.STATE_ARRAYS`) and `ema` is None without averages; `host` is the
    call's `ops.HostStep.array()`. See tests/kernel_reference.py for the
    same update written plainly."""
    s = scratch or _scratch()
    h = HostStep._make(host.tolist())
    n = w.shape[0]
    if h.l2 != 0:  # g += l2 * w, before the norm
        c_l2 = _f32(h.l2)
        for start in range(0, n, BLOCK):
            stop = min(start + BLOCK, n)
            t = s.a[: stop - start]
            np.multiply(w[start:stop], c_l2, out=t)
            np.add(g[start:stop], t, out=g[start:stop])
    scale = None
    if h.clip > 0:
        norm = _f32(np.sqrt(float(np.dot(g, g))))
        if norm >= h.clip:
            scale = _f32(h.clip) / norm
    kind = UpdateKind(kind)
    update = _thinc if kind <= _MOMENTUM else _OTHERS[kind]
    scalars = _Scalars(kind, lr, bc1, bc2, h)
    c_rate = _f32(ema_rate)
    for start in range(0, n, BLOCK):
        stop = min(start + BLOCK, n)
        k = stop - start
        wb, gb = w[start:stop], g[start:stop]
        if scale is not None:
            np.multiply(gb, scale, out=gb)
        update(wb, gb, [a[start:stop] for a in state], scalars, s, k)
        gb.fill(0)
        if ema is not None:
            eb, u = ema[start:stop], s.b[:k]
            np.subtract(eb, wb, out=u)
            np.multiply(u, c_rate, out=u)
            np.subtract(eb, u, out=eb)


class _Scalars:
    """A call's scalars as float32 (what `elements.step_scalars` makes)."""

    def __init__(self, kind, lr, bc1, bc2, h: HostStep) -> None:
        self.kind = kind
        self.lr, self.bc1, self.bc2 = _f32(lr), _f32(bc1), _f32(bc2)
        self.b1, self.one_minus_b1 = _f32(h.b1), _f32(1.0 - h.b1)
        self.b2, self.one_minus_b2 = _f32(h.b2), _f32(1.0 - h.b2)
        self.eps, self.alpha, self.y_step = _f32(h.eps), _f32(h.alpha), _f32(h.y_step)
        self.decay, self.has_decay = _f32(h.decay), h.decay != 0
        self.keep = _f32(1.0 - h.decay)
        self.to_g1, self.to_g2, self.to_z = map(_weight, (h.to_g1, h.to_g2, h.to_z))


def _thinc(wb, gb, state, c: _Scalars, s: Scratch, k: int) -> None:
    t = s.a[:k]
    if c.kind == _SGD:
        np.multiply(gb, c.lr, out=t)
        np.subtract(wb, t, out=wb)
    else:
        mb, vb = state
        np.multiply(mb, c.b1, out=mb)
        np.multiply(gb, c.one_minus_b1, out=t)
        np.add(mb, t, out=mb)
        np.multiply(vb, c.b2, out=vb)
        np.multiply(gb, gb, out=t)
        np.multiply(t, c.one_minus_b2, out=t)
        np.add(vb, t, out=vb)
        if c.kind == _ADAM:
            np.sqrt(vb, out=t)
            np.add(t, c.eps, out=t)
            np.divide(mb, t, out=t)
            np.multiply(t, c.lr, out=t)
        else:
            np.multiply(mb, c.lr, out=t)
        np.subtract(wb, t, out=wb)
    if c.has_decay:
        np.multiply(wb, c.decay, out=t)
        np.subtract(wb, t, out=wb)


def _lion(wb, gb, state, c: _Scalars, s: Scratch, k: int) -> None:
    (mb,) = state
    t, u, wide = s.a[:k], s.b[:k], tuple(x[:k] for x in s.wide)
    np.multiply(wb, c.keep, out=wb)
    _lerp(t, mb, gb, *c.to_g1, u, wide)
    np.sign(t, out=t)
    np.multiply(t, c.lr, out=t)
    np.subtract(wb, t, out=wb)
    _lerp(mb, mb, gb, *c.to_g2, u, wide)


def _ademamix(wb, gb, state, c: _Scalars, s: Scratch, k: int) -> None:
    mb, vb, slow = state
    t, u, wide = s.a[:k], s.b[:k], tuple(x[:k] for x in s.wide)
    np.multiply(wb, c.keep, out=wb)
    _lerp(mb, mb, gb, *c.to_g1, u, wide)
    _second_moment(vb, gb, c.b2, c.one_minus_b2, t, wide)
    _lerp(slow, slow, gb, *c.to_g2, u, wide)
    np.divide(mb, c.bc1, out=t)
    _fma(t, t, c.alpha, slow, wide)  # m / bc1 + alpha * slow
    np.multiply(t, -c.lr, out=t)
    np.sqrt(vb, out=u)
    np.divide(u, c.bc2, out=u)
    np.add(u, c.eps, out=u)
    np.divide(t, u, out=t)
    np.add(wb, t, out=wb)


def _schedule_free(wb, gb, state, c: _Scalars, s: Scratch, k: int) -> None:
    zb = state[0]
    t, u = s.a[:k], s.b[:k]
    wide = tuple(x[:k] for x in s.wide)
    if c.kind == _SF_ADAMW:
        vb = state[1]
        _second_moment(vb, gb, c.b2, c.one_minus_b2, t, wide)
        np.divide(vb, c.bc2, out=t)
        np.sqrt(t, out=t)
        np.add(t, c.eps, out=t)
        np.divide(gb, t, out=gb)
    if c.has_decay:
        _fma(gb, gb, c.decay, wb, wide)
    _lerp(t, wb, zb, *c.to_z, u, wide)
    _fma(wb, t, c.y_step, gb, wide)
    _fma(zb, zb, -c.lr, gb, wide)


_OTHERS = {
    _LION: _lion,
    _ADEMAMIX: _ademamix,
    UpdateKind.SCHEDULE_FREE_ADAMW: _schedule_free,
    UpdateKind.SCHEDULE_FREE_SGD: _schedule_free,
}
