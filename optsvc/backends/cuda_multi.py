"""The optimizer update of many tensors at once on a CUDA device (``numba.cuda``).

:func:`multi_update` updates many tensors that live in flat buffers (a
``ParamStore``) with the same two launches for all of them, whatever their
number: ``_multi_norm_kernel`` sums each tensor's squared norm into its own
float64 slot, and ``_multi_update_kernel`` applies each tensor's own clip
scale, learning rate (bias correction folded in), averaging rate and kind.
Both walk a chunk table built once per layout (:class:`MultiLayout`), so
per-tensor launches (tens of microseconds each from Python) are gone; the
per-tensor scalars are computed on the host, as Thinc does, and reach the
device in one small copy per step. Both kernels use the element update of the
single-tensor kernel (``cuda_common._update_element``), so the numbers are the
same as :func:`.cuda_kernels.fused_update`'s, tensor by tensor.

numba is imported on the first call (see :mod:`.cuda_common`), so ``optsvc``
imports without it; this module never imports cupy.
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
    shared_scalars,
    update_flags,
)
from .ops import UpdateKind

__all__ = ["MultiLayout", "make_layout", "multi_update"]

# Elements per chunk of the multi-tensor kernels: one block's share of work
# at a time (32 elements per thread at 256 threads). Small tensors are one
# chunk each; under the simulator chunks are tiny so tests cross them.
_GPU_CHUNK = 8192
_SIM_CHUNK = 64

# Set by _load() from cuda_common: the kernel bodies below read them as this
# module's globals (numba compiles them in; the simulator swaps ``cuda``).
cuda: Any = None
_f32: Any = None
_f64: Any = None
_i32: Any = None
_element: Any = None
_BLOCK = _GPU_THREADS

_lock = threading.Lock()
_loaded: dict[str, Any] = {}  # cuda_common's, plus "chunk", "multi_norm", ...


# --------------------------------------------------------------------------
# Kernel bodies. Plain functions; _load() compiles them with cuda.jit.
# Only float32 values are mixed with float32 (no Python float literals), so
# nothing is silently promoted to float64.


# The kernels walk a chunk table: chunk c covers elements
# [chunk_start[c], chunk_stop[c]) of tensor chunk_tensor[c] in the flat
# buffers, and each block takes whole chunks (grid-stride over chunks), so a
# block knows its tensor's learning rate, averaging rate, kind and clip scale
# without searching. sumsq holds two rows of one float64 per tensor (slot
# 0 / 1, flattened): the norm kernel accumulates into row `slot`, the update
# kernel reads it and zeroes the other row for the next clipped call.


def _multi_norm_kernel(  # pragma: no cover - a kernel
    g, w, l2, flags, chunk_tensor, chunk_start, chunk_stop, sumsq, slot
):
    buf = cuda.shared.array(_BLOCK, _f64)
    tid = cuda.threadIdx.x
    n_tensors = sumsq.shape[0] // 2
    for c in range(cuda.blockIdx.x, chunk_tensor.shape[0], cuda.gridDim.x):
        acc = _f64(0.0)
        for i in range(chunk_start[c] + tid, chunk_stop[c], cuda.blockDim.x):
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
            cuda.atomic.add(sumsq, slot * n_tensors + chunk_tensor[c], buf[0])
        cuda.syncthreads()  # buf[0] is read before the next chunk overwrites buf


def _multi_update_kernel(  # pragma: no cover - a kernel
    w, g, m, v, ema, chunk_tensor, chunk_start, chunk_stop, params, b1,
    one_minus_b1, b2, one_minus_b2, eps, l2, clip, decay, flags, sumsq, slot,
):  # fmt: skip
    n_tensors = params.shape[1]
    if flags & _CLIP:
        other = (1 - slot) * n_tensors
        for t in range(cuda.grid(1), n_tensors, cuda.gridsize(1)):
            sumsq[other + t] = 0.0  # ready for the next clipped call
    for c in range(cuda.blockIdx.x, chunk_tensor.shape[0], cuda.gridDim.x):
        t = chunk_tensor[c]
        scale = _f32(1.0)
        if flags & _CLIP:
            norm = _f32(math.sqrt(sumsq[slot * n_tensors + t]))
            if norm >= clip:
                scale = clip / norm
        lr = params[0, t]
        ema_rate = params[1, t]
        kind = _i32(params[2, t])
        for i in range(chunk_start[c] + cuda.threadIdx.x, chunk_stop[c],
                       cuda.blockDim.x):  # fmt: skip
            _element(
                i, w, g, m, v, ema, kind, lr, b1, one_minus_b1, b2,
                one_minus_b2, eps, l2, scale, decay, ema_rate, flags,
            )  # fmt: skip


_MULTI_NORM_SIG = (
    "void(float32[::1], float32[::1], float32, int32, int32[::1], int64[::1],"
    " int64[::1], float64[::1], int32)"
)
_MULTI_UPDATE_SIG = (
    "void(float32[::1], float32[::1], float32[::1], float32[::1], float32[::1],"
    " int32[::1], int64[::1], int64[::1], float32[:, ::1], float32, float32,"
    " float32, float32, float32, float32, float32, float32, int32, float64[::1],"
    " int32)"
)


def _load() -> dict[str, Any]:
    """Import numba.cuda (:func:`cuda_common._load`) and compile this module's
    kernels, once per process."""
    if _loaded:
        return _loaded
    shared = cuda_common._load()
    with _lock:
        if _loaded:
            return _loaded
        global cuda, _f32, _f64, _i32, _element, _BLOCK
        cuda, _f32, _f64 = cuda_common.cuda, cuda_common._f32, cuda_common._f64
        _i32, _element = cuda_common._i32, cuda_common._element
        _BLOCK = cuda_common._BLOCK
        # Explicit signatures: compiled here, once, and launches skip numba's
        # per-call argument typing (arguments are checked in multi_update).
        loaded = {
            **shared,
            "chunk": _SIM_CHUNK if shared["sim"] else _GPU_CHUNK,
            "multi_norm": cuda.jit(_MULTI_NORM_SIG)(_multi_norm_kernel),
            "multi_update": cuda.jit(_MULTI_UPDATE_SIG)(_multi_update_kernel),
        }
        _loaded.update(loaded)  # one step: other threads see all keys or none
    return _loaded


# --------------------------------------------------------------------------
# Public API


class MultiLayout:
    """Device tables of a multi-tensor step, built once per parameter layout:
    the chunk table, the per-tensor scalars (copied in each step) and the
    two-row squared-norm scratch (see the comment above the kernels)."""

    __slots__ = (
        "n_tensors",
        "total",
        "chunk_tensor",
        "chunk_start",
        "chunk_stop",
        "params",
        "sumsq",
        "slot",
        "dirty",
        "lock",
    )

    def __init__(self, offsets, sizes, chunk: int) -> None:
        offsets = np.asarray(offsets, dtype=np.int64)
        sizes = np.asarray(sizes, dtype=np.int64)
        if (sizes <= 0).any():
            raise ValueError("multi-tensor layouts hold non-empty tensors only")
        per_tensor = (sizes + chunk - 1) // chunk
        tensor = np.repeat(np.arange(len(sizes), dtype=np.int32), per_tensor)
        first = np.cumsum(per_tensor) - per_tensor  # first chunk of each tensor
        within = np.arange(len(tensor), dtype=np.int64) - first[tensor]
        start = offsets[tensor] + within * chunk
        stop = np.minimum(start + chunk, (offsets + sizes)[tensor])
        self.n_tensors = len(sizes)
        self.total = int((offsets + sizes).max(initial=0))
        self.chunk_tensor = cuda.to_device(tensor)
        self.chunk_start = cuda.to_device(start)
        self.chunk_stop = cuda.to_device(stop)
        self.params = cuda.to_device(np.zeros((3, len(sizes)), dtype=np.float32))
        self.sumsq = cuda.device_array(max(2 * len(sizes), 1), dtype=np.float64)
        self.slot = 0
        self.dirty = True  # device_array() is uninitialised memory
        self.lock = threading.Lock()


def make_layout(offsets, sizes) -> MultiLayout:
    """The device tables for non-empty tensors at `offsets` with `sizes` in
    flat buffers, on the current device (host arrays under the simulator)."""
    k = _load()
    return MultiLayout(offsets, sizes, k["chunk"])


def _checked_args(
    w: Any, g: Any, m: Any, v: Any, ema: Any, layout: MultiLayout, params: Any
) -> np.ndarray:
    """`params` as a contiguous float32 array, every argument of a
    multi-tensor update checked (ValueError, TypeError)."""
    n = _checked_size(w, "w", None)
    _checked_size(g, "g", n)
    if n < layout.total:
        raise ValueError(f"w has size {n}; the layout needs {layout.total}")
    params = np.ascontiguousarray(params, dtype=np.float32)
    if params.shape != (3, layout.n_tensors):
        raise ValueError(
            f"params must have shape (3, {layout.n_tensors}), got {params.shape}"
        )
    kinds = params[2]
    if not np.isin(kinds, KIND_VALUES).all():
        raise ValueError(f"unknown update kind in {np.unique(kinds).tolist()}")
    _checked_state(m, v, ema, n, moments=bool((kinds != UpdateKind.SGD).any()))
    return params


def multi_update(
    w: Any,
    g: Any,
    m: Any,
    v: Any,
    ema: Any,
    *,
    layout: MultiLayout,
    params: np.ndarray,
    b1: float,
    b2: float,
    eps: float,
    l2: float,
    clip: float,
    decay: float,
    stream: Any = 0,
) -> None:
    """Every tensor of `layout` updated in place, each with the semantics of
    ``reference_update`` (its own clipping norm), in two launches at most:
    the norms of all tensors (only when ``clip > 0``), then the update.

    w, g, m, v, ema: the flat buffers (m, v None when every kind is SGD, ema
    None without averages). `params`: a float32 host array of shape (3, n),
    rows lr, ema_rate and kind (an `UpdateKind` value) of each tensor, copied
    to the device in one transfer on `stream`.
    """
    params = _checked_args(w, g, m, v, ema, layout, params)
    if layout.n_tensors == 0:
        return

    k = _load()
    dev_id = _device_id(k)
    dev = _device_state(k, dev_id)
    threads = k["threads"]
    blocks = min(len(layout.chunk_tensor), dev.max_blocks)

    w = _on_device(k, w)
    g = _on_device(k, g)
    m = dev.dummy32 if m is None else _on_device(k, m)
    v = dev.dummy32 if v is None else _on_device(k, v)
    ema = dev.dummy32 if ema is None else _on_device(k, ema)
    flags = update_flags(l2, clip, decay, ema is not dev.dummy32)
    scalars = shared_scalars(b1, b2, eps, l2, clip, decay)
    l2_32 = scalars[5]
    tables = (layout.chunk_tensor, layout.chunk_start, layout.chunk_stop)
    update = k["multi_update"]
    with layout.lock:
        layout.params.copy_to_device(params, stream=stream)
        if not flags & _CLIP:
            update[blocks, threads, stream](
                w, g, m, v, ema, *tables, layout.params, *scalars, flags,
                layout.sumsq, 0,
            )  # fmt: skip
            return
        try:
            if layout.dirty:
                size = layout.sumsq.shape[0]
                k["zero"][(size + threads - 1) // threads, threads, stream](
                    layout.sumsq
                )
                layout.slot, layout.dirty = 0, False
            slot = np.int32(layout.slot)
            k["multi_norm"][blocks, threads, stream](
                g, w, l2_32, flags, *tables, layout.sumsq, slot
            )
            update[blocks, threads, stream](
                w, g, m, v, ema, *tables, layout.params, *scalars, flags,
                layout.sumsq, slot,
            )  # fmt: skip
        except BaseException:
            layout.dirty = True  # a launch failed: re-zero both rows next time
            raise
        layout.slot = 1 - layout.slot
