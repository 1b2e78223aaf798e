"""The optimizer update on the CPU, compiled with numba: one pass per element.

`fused_update` has the semantics of the numpy kernel (and of
``tests/kernel_reference.py``) but reads and writes each element once: 32 B
per float32 parameter for Adam, 40 with averages, 16 / 24 for SGD, plus one
more read of the gradient (and of the weights with L2 in the gradient) for
the clipping norm. `multi_update` runs the same per-tensor code over many
tensors laid out in flat buffers, driven by per-tensor tables (offset, size,
learning rate, averaging rate, kind), in one call.

Numerics. Every operation rounds to float32 in the reference's order:
``fastmath`` stays off, so LLVM neither reassociates nor contracts ``a * b + c``
into FMAs, and the results equal the reference bit for bit whenever the
clipping norm is not involved. ``error_model="numpy"`` gives IEEE division (no
zero-division check), which is what lets LLVM vectorise the loops. The squared
norm is summed in float64, as the reference does, but in a fixed order of
`LANES` interleaved partial sums (vectorisable without reassociation); it
differs from numpy's ``dot`` only in the last bits of a float64, so the
float32 norm almost always agrees exactly. The per-key and the multi-tensor
entry points share that code, so they agree with each other bit for bit.

This module imports numba at import time; `optsvc.backends.numpy_ops` imports
it lazily, on the first update, and falls back to the numpy kernel without
numba. Functions are compiled on first call and cached on disk (``cache=True``).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from .ops import CLIP_FLAG as _CLIP
from .ops import DECAY_FLAG as _DECAY
from .ops import EMA_FLAG as _EMA
from .ops import L2_FLAG as _L2
from .ops import UpdateKind

# The kinds as plain ints: numba compiles them in as constants (an IntEnum
# member as an argument would cost a slow dispatch on every call).
_SGD, _ADAM = int(UpdateKind.SGD), int(UpdateKind.ADAM)

# Interleaved float64 partial sums of the clipping norm: element i of a tensor
# goes to lane i % LANES. Fixed, so every entry point sums in the same order.
LANES = 64


_jit = numba.njit(cache=True, fastmath=False, nogil=True, error_model="numpy")

# Stand-in for absent moments / averages (numba needs an array of the type).
EMPTY = np.zeros(0, dtype=np.float32)

_f32 = np.float32


@_jit
def _flags(l2, clip, decay, has_ema):  # pragma: no cover - compiled
    # The reference's Python tests, on the float64 host values: a value that
    # rounds to 0 in float32 still takes the reference's branch.
    flags = 0
    if l2 != 0.0:
        flags |= _L2
    if clip > 0.0:
        flags |= _CLIP
    if decay != 0.0:
        flags |= _DECAY
    if has_ema:
        flags |= _EMA
    return flags


@_jit
def _sumsq(g, w, l2, flags):  # pragma: no cover - compiled
    """Sum of (g + l2 * w)**2 in float64, lane by lane (element i to lane
    i % LANES, then the lanes in order)."""
    acc = np.zeros(LANES, np.float64)
    n = g.shape[0]
    full = (n // LANES) * LANES
    if flags & _L2:
        for base in range(0, full, LANES):
            for j in range(LANES):
                x = np.float64(g[base + j] + l2 * w[base + j])
                acc[j] += x * x
        for j in range(n - full):
            x = np.float64(g[full + j] + l2 * w[full + j])
            acc[j] += x * x
    else:
        for base in range(0, full, LANES):
            for j in range(LANES):
                x = np.float64(g[base + j])
                acc[j] += x * x
        for j in range(n - full):
            x = np.float64(g[full + j])
            acc[j] += x * x
    total = 0.0
    for j in range(LANES):
        total += acc[j]
    return total


@_jit
def _update(  # pragma: no cover - compiled
    w, g, m, v, ema, kind, lr, b1, omb1, b2, omb2, eps, l2, clip, decay, rate, flags
):
    """One tensor's update (whole arrays; all scalars float32): the clipping
    norm if asked, then one pass over the elements."""
    scale = np.float32(1.0)  # x * 1 is exact: "no clipping" needs no branch
    if flags & _CLIP:
        norm = np.float32(math.sqrt(_sumsq(g, w, l2, flags)))
        if norm >= clip:
            scale = clip / norm
    for i in range(w.shape[0]):
        wi = w[i]
        gi = g[i]
        if flags & _L2:
            gi = gi + l2 * wi
        gi = gi * scale
        if kind == _SGD:
            wi = wi - lr * gi
        else:
            mi = m[i] * b1 + omb1 * gi
            vi = v[i] * b2 + omb2 * (gi * gi)
            m[i] = mi
            v[i] = vi
            if kind == _ADAM:
                wi = wi - lr * (mi / (np.sqrt(vi) + eps))
            else:  # momentum only (RAdam before rectification)
                wi = wi - lr * mi
        g[i] = np.float32(0.0)
        if flags & _DECAY:
            wi = wi - decay * wi
        w[i] = wi
        if flags & _EMA:
            e = ema[i]
            ema[i] = e - rate * (e - wi)


@_jit
def fused_positional(  # pragma: no cover - compiled
    w, g, m, v, ema, kind, lr, b1, b2, eps, l2, clip, decay, ema_rate, has_ema
):
    """`fused_update` as the compiled function itself, for callers that count
    microseconds: positional arguments, `EMPTY` for absent arrays, `kind` a
    plain int (an IntEnum member costs numba a slow dispatch)."""
    f32 = np.float32
    _update(
        w, g, m, v, ema, kind, f32(lr), f32(b1), f32(1.0 - b1), f32(b2),
        f32(1.0 - b2), f32(eps), f32(l2), f32(clip), f32(decay), f32(ema_rate),
        _flags(l2, clip, decay, has_ema),
    )  # fmt: skip


@_jit
def _multi(  # pragma: no cover - compiled
    w, g, m, v, ema, offsets, sizes, lrs, rates, kinds, b1, b2, eps, l2, clip,
    decay, has_ema,
):  # fmt: skip
    f32 = np.float32
    flags = _flags(l2, clip, decay, has_ema)
    b1_32, omb1, b2_32, omb2 = f32(b1), f32(1.0 - b1), f32(b2), f32(1.0 - b2)
    eps_32, l2_32, clip_32, decay_32 = f32(eps), f32(l2), f32(clip), f32(decay)
    for t in range(offsets.shape[0]):
        a = offsets[t]
        b = a + sizes[t]
        # Slices, not index ranges: LLVM vectorises the loop over a view (as
        # in fused_positional), and both entry points run the very same code.
        _update(
            w[a:b], g[a:b], m[a:b], v[a:b], ema[a:b], np.int64(kinds[t]), lrs[t],
            b1_32, omb1, b2_32, omb2, eps_32, l2_32, clip_32, decay_32, rates[t],
            flags,
        )  # fmt: skip


def fused_update(
    w, g, m, v, ema, *, kind, lr, b1, b2, eps, l2, clip, decay, ema_rate
) -> None:
    """One tensor's update in place (flat float32 arrays); `m`, `v` are None
    for SGD and `ema` is None without averages. Same arguments and results as
    `numpy_kernels.fused_update`."""
    fused_positional(
        w,
        g,
        EMPTY if m is None else m,
        EMPTY if v is None else v,
        EMPTY if ema is None else ema,
        int(kind),
        lr,
        b1,
        b2,
        eps,
        l2,
        clip,
        decay,
        ema_rate,
        ema is not None,
    )


def multi_update(
    w, g, m, v, ema, offsets, sizes, lrs, rates, kinds, *, b1, b2, eps, l2, clip, decay
) -> None:
    """Many tensors' updates in one call. w, g, m, v, ema are flat buffers;
    tensor t occupies ``[offsets[t], offsets[t] + sizes[t])`` (int64 tables)
    and is updated with ``lrs[t]``, ``rates[t]`` and ``kinds[t]`` (float32
    tables; kinds hold `UpdateKind` values), exactly as `fused_update` would
    update it alone."""
    _multi(
        w,
        g,
        EMPTY if m is None else m,
        EMPTY if v is None else v,
        EMPTY if ema is None else ema,
        offsets,
        sizes,
        lrs,
        rates,
        kinds,
        b1,
        b2,
        eps,
        l2,
        clip,
        decay,
        ema is not None,
    )


__all__ = ["EMPTY", "LANES", "fused_positional", "fused_update", "multi_update"]
