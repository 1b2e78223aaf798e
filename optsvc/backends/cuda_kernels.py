"""Fused optimizer update for CUDA devices, written with ``numba.cuda``.

Why numba.cuda: one kernel source serves both places it has to run. On a GPU the
kernels are launched directly on cupy arrays (numba reads their
``__cuda_array_interface__``; nothing is copied), and in CI, which has no GPU,
numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) runs the very same kernel
bodies on the CPU with numpy arrays, so the code that is tested is the code that
runs on the device.

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

:func:`multi_update` updates many tensors that live in flat buffers (a
``ParamStore``) with the same two launches for all of them, whatever their
number: ``_multi_norm_kernel`` sums each tensor's squared norm into its own
float64 slot, and ``_multi_update_kernel`` applies each tensor's own clip
scale, learning rate (bias correction folded in), averaging rate and kind.
Both walk a chunk table built once per layout (:class:`MultiLayout`), so
per-tensor launches (tens of microseconds each from Python) are gone; the
per-tensor scalars are computed on the host, as Thinc does, and reach the
device in one small copy per step. Both kernels use the element update of the
single-tensor kernel (``_update_element``), so the numbers are the same.

Memory traffic per float32 element: update pass 16 B for SGD (read w, g; write
w, g), 32 B for Adam/momentum (+ read/write m, v), +8 B with averages (ema);
the norm pass adds 4 B (read g), 8 B with L2 (read w too). E.g. Adam with
clipping and averages: 44 B/element, a single pass plus one read of g.

Arithmetic follows ``tests/kernel_reference.py`` (Thinc 9.1.1's order) in
float32; host scalars are computed in float64 and rounded to float32 (``1 - b1``
included), as Thinc does. On a real GPU, NVVM contracts ``a * b + c`` into FMAs,
so results can differ from the numpy reference by about one float32 ulp; under
the simulator they are bit-identical except for the norm's summation order.

numba is imported lazily (first call), so ``optsvc`` imports without it; this
module never imports cupy.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np

__all__ = [
    "ADAM",
    "MOMENTUM",
    "SGD",
    "MultiLayout",
    "external_stream",
    "fused_update",
    "make_layout",
    "multi_update",
]

SGD, ADAM, MOMENTUM = 0, 1, 2

# Bits of the kernels' ``flags`` argument. They mirror the reference's Python
# tests (``l2 != 0``, ``clip > 0``, ...) on the float64 host values, so a value
# that rounds to 0 in float32 still takes the same branch as the reference.
_L2, _CLIP, _DECAY, _EMA = 1, 2, 4, 8

# Launch configuration. On a GPU: 256 threads per block and at most
# _BLOCKS_PER_SM * SMs blocks (8 x 256 = 2048 threads, a full SM on sm_80/sm_90),
# i.e. one resident wave that grid-strides over the tensor. Under the simulator
# every CUDA thread is a Python thread, so blocks are small and few (still more
# than one block, so the atomics and the grid-stride loop are exercised).
_GPU_THREADS = 256
_BLOCKS_PER_SM = 8
_SIM_THREADS = 16
_SIM_MAX_BLOCKS = 2

# Elements per chunk of the multi-tensor kernels: one block's share of work
# at a time (32 elements per thread at 256 threads). Small tensors are one
# chunk each; under the simulator chunks are tiny so tests cross them.
_GPU_CHUNK = 8192
_SIM_CHUNK = 64

# Set by _load(): the numba.cuda module (the kernels below look it up as a
# module global, which is also what the simulator swaps out), numba's number
# types, the element-update device function and the block size the
# shared-memory reduction is compiled for.
cuda: Any = None
_f32: Any = None
_f64: Any = None
_i32: Any = None
_element: Any = None
_BLOCK = _GPU_THREADS

_lock = threading.Lock()
_loaded: dict[str, Any] = {}  # "sim", "threads", "norm", "update", "zero"
_devices: dict[int, _Device] = {}  # device id -> per-device state
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


def _update_element(  # pragma: no cover - a device function
    i, w, g, m, v, ema, kind, lr, b1, one_minus_b1, b2, one_minus_b2, eps, l2,
    scale, decay, ema_rate, flags,
):  # fmt: skip
    """Element i's update: the same code in the per-tensor and multi-tensor
    kernels (and the same order as the reference)."""
    wi = w[i]
    gi = g[i]
    if flags & _L2:
        gi = gi + l2 * wi
    gi = gi * scale
    if kind == 0:  # SGD
        wi = wi - lr * gi
    else:
        mi = m[i] * b1 + one_minus_b1 * gi
        vi = v[i] * b2 + one_minus_b2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        if kind == 1:  # Adam
            wi = wi - lr * (mi / (_f32(math.sqrt(vi)) + eps))
        else:  # momentum only (RAdam, un-rectified)
            wi = wi - lr * mi
    g[i] = _f32(0.0)
    if flags & _DECAY:
        wi = wi - decay * wi
    w[i] = wi
    if flags & _EMA:
        e = ema[i]
        ema[i] = e - ema_rate * (e - wi)


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


# The multi-tensor kernels walk a chunk table: chunk c covers elements
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


def _zero_kernel(buf):  # pragma: no cover - runs as a kernel
    i = cuda.grid(1)
    if i < buf.shape[0]:
        buf[i] = 0.0


_NORM_SIG = "void(float32[::1], float32[::1], float32, int32, float64[::1], int32)"
_UPDATE_SIG = (
    "void(float32[::1], float32[::1], float32[::1], float32[::1], float32[::1],"
    " int32, float32, float32, float32, float32, float32, float32, float32,"
    " float32, float32, float32, int32, float64[::1], int32)"
)
_ZERO_SIG = "void(float64[::1])"
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


# --------------------------------------------------------------------------
# Lazy numba import, compiled-kernel and per-device / per-stream caches.


class _Device:
    """Per-device constants: block cap and dummy arrays for absent m/v/ema."""

    __slots__ = ("max_blocks", "dummy32", "dummy64")

    def __init__(self, max_blocks: int, dummy32: Any, dummy64: Any) -> None:
        self.max_blocks = max_blocks
        self.dummy32 = dummy32
        self.dummy64 = dummy64


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
    """Import numba.cuda and compile the kernels, once per process."""
    if _loaded:
        return _loaded
    with _lock:
        if _loaded:
            return _loaded
        global cuda, _f32, _f64, _i32, _element, _BLOCK
        try:
            import numba
            from numba import cuda as numba_cuda
        except ImportError as exc:  # pragma: no cover - depends on environment
            raise ImportError(
                "optsvc's CUDA kernels need numba; install optsvc[cuda12] or "
                "optsvc[cuda13]"
            ) from exc
        sim = bool(numba.config.ENABLE_CUDASIM)
        cuda, _f32, _f64, _i32 = numba_cuda, numba.float32, numba.float64, numba.int32
        _BLOCK = _SIM_THREADS if sim else _GPU_THREADS
        _element = numba_cuda.jit(device=True)(_update_element)
        # Explicit signatures: compiled here, once, and launches skip numba's
        # per-call argument typing (arguments are checked in fused_update).
        loaded = {
            "sim": sim,
            "threads": _BLOCK,
            "chunk": _SIM_CHUNK if sim else _GPU_CHUNK,
            "norm": numba_cuda.jit(_NORM_SIG)(_norm_kernel),
            "update": numba_cuda.jit(_UPDATE_SIG)(_update_kernel),
            "zero": numba_cuda.jit(_ZERO_SIG)(_zero_kernel),
            "multi_norm": numba_cuda.jit(_MULTI_NORM_SIG)(_multi_norm_kernel),
            "multi_update": numba_cuda.jit(_MULTI_UPDATE_SIG)(_multi_update_kernel),
        }
        _loaded.update(loaded)  # one step: other threads see all keys or none
    return _loaded


def _device_id(k: dict[str, Any]) -> int:
    return 0 if k["sim"] else cuda.get_current_device().id


def _device_state(k: dict[str, Any], dev_id: int) -> _Device:
    state = _devices.get(dev_id)
    if state is None:
        with _lock:
            state = _devices.get(dev_id)
            if state is None:
                if k["sim"]:
                    max_blocks = _SIM_MAX_BLOCKS
                else:
                    sms = cuda.get_current_device().MULTIPROCESSOR_COUNT
                    max_blocks = sms * _BLOCKS_PER_SM
                state = _Device(
                    max_blocks,
                    cuda.device_array(1, dtype=np.float32),
                    cuda.device_array(2, dtype=np.float64),
                )
                _devices[dev_id] = state
    return state


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


def _checked_size(x: Any, name: str, n: int | None) -> int:
    if x.dtype != np.float32:
        raise TypeError(f"{name} must be float32, got {x.dtype}")
    shape = x.shape
    if len(shape) != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(shape)}")
    if shape[0] > 1 and x.strides[0] != 4:
        raise ValueError(f"{name} must be contiguous")
    if n is not None and shape[0] != n:
        raise ValueError(f"{name} has size {shape[0]}, expected {n}")
    return shape[0]


def _on_device(k: dict[str, Any], x: Any) -> Any:
    """Hand numba a device view of x without a host-side stream sync.

    Passing a cupy array straight to a kernel makes numba synchronise the
    stream named in its ``__cuda_array_interface__`` (a host sync per array per
    launch). We launch on the caller's stream, so ordering is already right and
    the view is made with ``sync=False``.
    """
    if k["sim"] or getattr(x, "__cuda_memory__", False):
        return x
    if not hasattr(x, "__cuda_array_interface__"):
        raise TypeError(f"expected a device array, got {type(x).__name__}")
    return cuda.as_cuda_array(x, sync=False)


# --------------------------------------------------------------------------
# Public API


def external_stream(ptr: int) -> Any:
    """Wrap a stream created elsewhere (e.g. cupy's current stream pointer)."""
    k = _load()
    if k["sim"]:
        return cuda.stream()  # the simulator is synchronous; any stream will do
    return cuda.external_stream(ptr)


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
    if kind not in (SGD, ADAM, MOMENTUM):
        raise ValueError(f"unknown update kind {kind!r}")
    n = _checked_size(w, "w", None)
    _checked_size(g, "g", n)
    if kind != SGD:
        if m is None or v is None:
            raise ValueError("m and v are required for Adam and momentum updates")
        _checked_size(m, "m", n)
        _checked_size(v, "v", n)
    if ema is not None:
        _checked_size(ema, "ema", n)
    if n == 0:
        return

    k = _load()
    dev_id = _device_id(k)
    dev = _device_state(k, dev_id)
    threads = k["threads"]
    blocks = min((n + threads - 1) // threads, dev.max_blocks)

    w = _on_device(k, w)
    g = _on_device(k, g)
    if kind == SGD:
        m = v = dev.dummy32
    else:
        m = _on_device(k, m)
        v = _on_device(k, v)
    ema = dev.dummy32 if ema is None else _on_device(k, ema)
    kind = np.int32(kind)
    flags = np.int32(
        (_L2 if l2 != 0 else 0)
        | (_CLIP if clip > 0 else 0)
        | (_DECAY if decay != 0 else 0)
        | (_EMA if ema is not dev.dummy32 else 0)
    )

    f32 = np.float32
    l2_32 = f32(l2)
    scalars = (
        f32(lr),
        f32(b1),
        f32(1.0 - b1),
        f32(b2),
        f32(1.0 - b2),
        f32(eps),
        l2_32,
        f32(clip),
        f32(decay),
        f32(ema_rate),
    )
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


# --------------------------------------------------------------------------
# Many tensors at once


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
    rows lr, ema_rate and kind (0, 1, 2) of each tensor, copied to the device
    in one transfer on `stream`.
    """
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
    if not np.isin(kinds, (SGD, ADAM, MOMENTUM)).all():
        raise ValueError(f"unknown update kind in {np.unique(kinds).tolist()}")
    if (kinds != SGD).any():
        if m is None or v is None:
            raise ValueError("m and v are required for Adam and momentum updates")
        _checked_size(m, "m", n)
        _checked_size(v, "v", n)
    if ema is not None:
        _checked_size(ema, "ema", n)
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
    flags = np.int32(
        (_L2 if l2 != 0 else 0)
        | (_CLIP if clip > 0 else 0)
        | (_DECAY if decay != 0 else 0)
        | (_EMA if ema is not dev.dummy32 else 0)
    )
    f32 = np.float32
    l2_32 = f32(l2)
    scalars = (
        f32(b1),
        f32(1.0 - b1),
        f32(b2),
        f32(1.0 - b2),
        f32(eps),
        l2_32,
        f32(clip),
        f32(decay),
    )
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
