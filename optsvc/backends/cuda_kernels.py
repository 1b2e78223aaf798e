"""The fused optimizer update of one tensor on a CUDA device (``numba.cuda``).

One call of :func:`fused_update` is at most two launches on the caller's stream,
with no host synchronisation:

1. Only when ``clip > 0``: ``_norm_kernel``. Grid-stride loop; each thread sums
   ``(g + l2 * w) ** 2`` in float64, the block reduces in shared memory and does
   one float64 ``atomicAdd`` into a two-slot scratch buffer cached per
   (device, stream). ``g + l2 * w`` is *recomputed* by the update kernel rather
   than written back to ``g`` (same float32 expression, same result; saves a
   4-byte write per element).
2. ``_update_kernel``: one grid-stride pass. It reads the squared norm from
   device memory, computes the clip scale on the device, then per element adds
   the L2 term, clips, applies the SGD / Adam / momentum rule (``kind`` is a
   uniform kernel argument), writes ``g = 0``, applies weight decay and updates
   the average. It also zeroes the *other* scratch slot, which the next clipped
   call on the same stream accumulates into (stream order makes that safe), so
   no separate zeroing launch is needed per call.

Many tensors in flat buffers are updated by :mod:`.cuda_multi` instead, with
the same element update; what both share (the element update, the lazy numba
import, why numba.cuda, memory traffic, arithmetic) is in :mod:`.cuda_common`.
numba is imported on the first call, so ``optsvc`` imports without it; this
module never imports cupy.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np

from . import cuda_common
from .cuda_common import (
    _CLIP,
    _GPU_THREADS,
    _L2,
    KIND_VALUES,
    _checked_size,
    _checked_state,
    _device_id,
    _device_state,
    _on_device,
    external_stream,
    shared_scalars,
    update_flags,
)
from .ops import UpdateKind

__all__ = ["external_stream", "fused_update"]

# Set by _load() from cuda_common: the kernel bodies below read them as this
# module's globals (numba compiles them in; the simulator swaps ``cuda``).
cuda: Any = None
_f32: Any = None
_f64: Any = None
_element: Any = None
_BLOCK = _GPU_THREADS

_lock = threading.Lock()
_loaded: dict[str, Any] = {}  # cuda_common's, plus "norm", "update"
_scratch: dict[tuple[int, int], _Scratch] = {}  # (device id, stream) -> scratch


# --------------------------------------------------------------------------
# Kernel bodies. Plain functions; _load() compiles them with cuda.jit.
# Only float32 values are mixed with float32 (no Python float literals), so
# nothing is silently promoted to float64.


def _norm_kernel(g, w, l2, flags, out, slot):  # pragma: no cover - a kernel
    buf = cuda.shared.array(_BLOCK, _f64)
    tid = cuda.threadIdx.x
    acc = _f64(0.0)
    for i in range(cuda.grid(1), g.shape[0], cuda.gridsize(1)):
        gi = g[i]
        if flags & _L2:
            gi = gi + l2 * w[i]
        acc += _f64(gi) * _f64(gi)
    buf[tid] = acc
    cuda.syncthreads()
    s = _BLOCK // 2
    while s > 0:
        if tid < s:
            buf[tid] += buf[tid + s]
        cuda.syncthreads()
        s //= 2
    if tid == 0:
        cuda.atomic.add(out, slot, buf[0])


def _update_kernel(  # pragma: no cover - runs as a kernel
    w,
    g,
    m,
    v,
    ema,
    kind,
    lr,
    b1,
    one_minus_b1,
    b2,
    one_minus_b2,
    eps,
    l2,
    clip,
    decay,
    ema_rate,
    flags,
    sumsq,
    slot,
):
    scale = _f32(1.0)  # x * 1 is exact, so "no clipping" needs no branch below
    start = cuda.grid(1)
    if flags & _CLIP:
        norm = _f32(math.sqrt(sumsq[slot]))
        if norm >= clip:
            scale = clip / norm
        if start == 0:
            sumsq[1 - slot] = 0.0  # ready for the next clipped call on this stream
    for i in range(start, w.shape[0], cuda.gridsize(1)):
        _element(
            i, w, g, m, v, ema, kind, lr, b1, one_minus_b1, b2, one_minus_b2,
            eps, l2, scale, decay, ema_rate, flags,
        )  # fmt: skip


_NORM_SIG = "void(float32[::1], float32[::1], float32, int32, float64[::1], int32)"
_UPDATE_SIG = (
    "void(float32[::1], float32[::1], float32[::1], float32[::1], float32[::1],"
    " int32, float32, float32, float32, float32, float32, float32, float32,"
    " float32, float32, float32, int32, float64[::1], int32)"
)


# --------------------------------------------------------------------------
# Compiled kernels and per-stream scratch.


class _Scratch:
    """Two float64 slots for the squared norm of one (device, stream).

    ``slot`` is the slot the next clipped call accumulates into; it is zero on
    the device by the time that call's norm kernel runs (zeroed by the previous
    update kernel, or by ``_zero_kernel`` when new or after a failed launch).
    """

    __slots__ = ("buf", "slot", "dirty", "lock")

    def __init__(self, buf: Any) -> None:
        self.buf = buf
        self.slot = 0
        self.dirty = True  # device_array() is uninitialised memory
        self.lock = threading.Lock()


def _load() -> dict[str, Any]:
    """Import numba.cuda (:func:`cuda_common._load`) and compile this module's
    kernels, once per process."""
    if _loaded:
        return _loaded
    shared = cuda_common._load()
    with _lock:
        if _loaded:
            return _loaded
        global cuda, _f32, _f64, _element, _BLOCK
        cuda, _f32, _f64 = cuda_common.cuda, cuda_common._f32, cuda_common._f64
        _element, _BLOCK = cuda_common._element, cuda_common._BLOCK
        # Explicit signatures: compiled here, once, and launches skip numba's
        # per-call argument typing (arguments are checked in fused_update).
        loaded = {
            **shared,
            "norm": cuda.jit(_NORM_SIG)(_norm_kernel),
            "update": cuda.jit(_UPDATE_SIG)(_update_kernel),
        }
        _loaded.update(loaded)  # one step: other threads see all keys or none
    return _loaded


def _scratch_for(dev_id: int, stream_key: int) -> _Scratch:
    key = (dev_id, stream_key)
    sc = _scratch.get(key)
    if sc is None:
        with _lock:
            sc = _scratch.get(key)
            if sc is None:
                sc = _Scratch(cuda.device_array(2, dtype=np.float64))
                _scratch[key] = sc
    return sc


def _stream_key(k: dict[str, Any], stream: Any) -> int:
    # The simulator runs everything synchronously: one scratch buffer suffices.
    if k["sim"] or not stream:
        return 0
    return int(stream)


def _checked_arrays(w: Any, g: Any, m: Any, v: Any, ema: Any, sgd: bool) -> int:
    """The size of a fused update's arrays, checked (ValueError, TypeError)."""
    n = _checked_size(w, "w", None)
    _checked_size(g, "g", n)
    _checked_state(m, v, ema, n, moments=not sgd)
    return n


# --------------------------------------------------------------------------
# Public API


def fused_update(
    w: Any,
    g: Any,
    m: Any,
    v: Any,
    ema: Any,
    *,
    kind: int,
    lr: float,
    b1: float,
    b2: float,
    eps: float,
    l2: float,
    clip: float,
    decay: float,
    ema_rate: float,
    stream: Any = 0,
) -> None:
    """One optimizer step in place, with the semantics of ``reference_update``.

    w, g, m, v, ema: 1-D contiguous float32 device arrays of one size (cupy or
    numba arrays on a GPU, numpy arrays under the simulator). m and v may be
    None for SGD (and are ignored for it), ema is None without averages.
    ``stream`` is a numba stream (see :func:`external_stream`) or 0 for the
    default stream; both launches go to it and the call does not synchronise.
    """
    if kind not in KIND_VALUES:
        raise ValueError(f"unknown update kind {kind!r}")
    sgd = kind == UpdateKind.SGD
    n = _checked_arrays(w, g, m, v, ema, sgd)
    if n == 0:
        return

    k = _load()
    dev_id = _device_id(k)
    dev = _device_state(k, dev_id)
    threads = k["threads"]
    blocks = min((n + threads - 1) // threads, dev.max_blocks)

    w = _on_device(k, w)
    g = _on_device(k, g)
    if sgd:
        m = v = dev.dummy32
    else:
        m = _on_device(k, m)
        v = _on_device(k, v)
    ema = dev.dummy32 if ema is None else _on_device(k, ema)
    kind = np.int32(kind)
    flags = update_flags(l2, clip, decay, ema is not dev.dummy32)
    shared = shared_scalars(b1, b2, eps, l2, clip, decay)
    l2_32 = shared[5]
    scalars = (np.float32(lr), *shared, np.float32(ema_rate))
    update = k["update"]
    if not flags & _CLIP:
        update[blocks, threads, stream](
            w, g, m, v, ema, kind, *scalars, flags, dev.dummy64, 0
        )
        return

    sc = _scratch_for(dev_id, _stream_key(k, stream))
    with sc.lock:
        try:
            if sc.dirty:
                k["zero"][1, 2, stream](sc.buf)
                sc.slot, sc.dirty = 0, False
            slot = np.int32(sc.slot)
            k["norm"][blocks, threads, stream](g, w, l2_32, flags, sc.buf, slot)
            update[blocks, threads, stream](
                w, g, m, v, ema, kind, *scalars, flags, sc.buf, slot
            )
        except BaseException:
            sc.dirty = True  # a launch failed: re-zero both slots next time
            raise
        sc.slot = 1 - sc.slot
