"""The optimizer update on a CUDA device (``numba.cuda``): every kernel, and
the update of one tensor.

One call of :func:`fused_update` is at most two launches on the caller's stream,
with no host synchronisation:

1. Only when ``clip > 0``: ``_norm_kernel``. Grid-stride loop; each thread sums
   ``(g + l2 * w) ** 2`` in float64, the block reduces in shared memory and does
   one float64 ``atomicAdd`` into a two-slot scratch buffer cached per
   (device, stream). ``g + l2 * w`` is *recomputed* by the update kernel rather
   than written back to ``g`` (same float32 expression, same result; saves a
   4-byte write per element).
2. ``_update_kernel``: one grid-stride pass. It reads the squared norm from
   device memory, computes the clip scale on the device, then updates each
   element (``elements.update_element``: the L2 term, the clip, the rule of
   ``kind``, a uniform kernel argument, with its weight decay, ``g = 0``, the
   average). It also zeroes the *other* scratch slot, which
   the next clipped call on the same stream accumulates into (stream order
   makes that safe), so no separate zeroing launch is needed per call.

Many tensors in flat buffers go through ``_multi_norm_kernel`` and
``_multi_update_kernel`` (:mod:`.cuda_multi` holds their layouts and
launches them): the same two launches for all tensors, with the same element
update and block reduction, so the numbers are the same tensor by tensor.

Why numba.cuda: one kernel source serves both places it has to run. On a GPU the
kernels are launched directly on cupy arrays (numba reads their
``__cuda_array_interface__``; nothing is copied), and in CI, which has no GPU,
numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) runs the very same kernel
bodies on the CPU with numpy arrays, so the code that is tested is the code that
runs on the device.

Memory traffic per float32 element: update pass 16 B for SGD (read w, g; write
w, g), +8 B for each state array of the kind (32 B for Adam/momentum, 24 for
Lion, 40 for AdEMAMix), +8 B with averages (ema); the norm pass adds 4 B (read
g), 8 B with L2 (read w too). E.g. Adam with clipping and averages: 44
B/element, a single pass plus one read of g.

Arithmetic follows ``tests/kernel_reference.py`` (Thinc 9.1.1's order, and
the PyTorch references' for the other kinds) in float32; host scalars are
computed in float64 and rounded to float32 (``1 - b1`` included), as Thinc
does. On a real GPU, NVVM contracts float32 ``a * b + c`` into FMAs, so
results can differ from the numpy reference by about one float32 ulp (the
float64 sums of ``elements.fma`` are exact products either way); under the
simulator they are bit-identical except for the norm's summation order.

numba is imported lazily (:func:`_load`, once per process, on first use), so
``optsvc`` imports without it; this module never imports cupy.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, NamedTuple

import numpy as np

from . import elements
from .ops import CLIP_FLAG as _CLIP
from .ops import STATE_ARRAYS, HostStep, TensorParams, UpdateKind

__all__ = ["external_stream", "fused_update"]

# The update kinds as plain ints, for the argument checks before a launch.
KIND_VALUES = tuple(int(kind) for kind in UpdateKind)

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

# Set by _load(): the numba.cuda module (kernel bodies look it up as a module
# global, which is also what the simulator swaps out), numba's float64, the
# device functions (`elements`' and `_block_sum`) and the block size the
# shared-memory reduction is compiled for.
cuda: Any = None
_f64: Any = None
_element: Any = None
_grad_sq: Any = None
_clip_scale: Any = None
_tensor: Any = None
_sum: Any = None
_BLOCK = _GPU_THREADS
# The rows of ops.TensorParams, by name.
_LR, _RATE, _KIND, _BC1, _BC2 = (
    TensorParams.ROWS.index(name) for name in ("lr", "ema_rate", "kind", "bc1", "bc2")
)

_lock = threading.Lock()
_loaded: dict[str, Any] = {}  # "sim", "threads", "chunk" and the kernels
_devices: dict[int, _Device] = {}  # device id -> per-device state
_scratch: dict[tuple[int, int], Scratch] = {}  # (device id, stream) -> scratch


# --------------------------------------------------------------------------
# Device code. Plain functions; _load() compiles them with cuda.jit. Only
# float32 values are mixed with float32 (no Python float literals), so
# nothing is silently promoted to float64.


def _block_sum(acc):  # pragma: no cover - a device function
    """The sum of every thread's `acc` over the block (a tree in shared
    memory), returned to every thread."""
    buf = cuda.shared.array(_BLOCK, _f64)
    tid = cuda.threadIdx.x
    buf[tid] = acc
    cuda.syncthreads()
    s = _BLOCK // 2
    while s > 0:
        if tid < s:
            buf[tid] += buf[tid + s]
        cuda.syncthreads()
        s //= 2
    total = buf[0]
    cuda.syncthreads()  # read by all before the next call writes buf
    return total


def _norm_kernel(g, w, step, sumsq, slot):  # pragma: no cover - a kernel
    acc = _f64(0.0)
    for i in range(cuda.grid(1), g.shape[0], cuda.gridsize(1)):
        acc += _grad_sq(i, g, w, step.l2, step.flags)
    total = _sum(acc)
    if cuda.threadIdx.x == 0:
        cuda.atomic.add(sumsq, slot, total)


def _update_kernel(  # pragma: no cover - a kernel
    w, g, a, b, c, ema, kind, t, step, sumsq, slot
):
    scale = np.float32(1.0)
    start = cuda.grid(1)
    if step.flags & _CLIP:
        scale = _clip_scale(sumsq[slot], step.clip)
        if start == 0:
            sumsq[1 - slot] = 0.0  # ready for the next clipped call on this stream
    for i in range(start, w.shape[0], cuda.gridsize(1)):
        _element(i, w, g, a, b, c, ema, kind, t, scale, step)


# The multi-tensor kernels walk a chunk table: chunk c covers elements
# [chunk_start[c], chunk_stop[c]) of tensor chunk_tensor[c] in the flat
# buffers, and each block takes whole chunks (grid-stride over chunks), so a
# block knows its tensor's scalars (a column of ops.TensorParams) and clip
# scale without searching. sumsq holds two rows of one float64 per tensor (slot
# 0 / 1, flattened): the norm kernel accumulates into row `slot`, the update
# kernel reads it and zeroes the other row for the next clipped call.


def _multi_norm_kernel(  # pragma: no cover - a kernel
    g, w, step, chunk_tensor, chunk_start, chunk_stop, sumsq, slot
):
    n_tensors = sumsq.shape[0] // 2
    for c in range(cuda.blockIdx.x, chunk_tensor.shape[0], cuda.gridDim.x):
        acc = _f64(0.0)
        for i in range(chunk_start[c] + cuda.threadIdx.x, chunk_stop[c],
                       cuda.blockDim.x):  # fmt: skip
            acc += _grad_sq(i, g, w, step.l2, step.flags)
        total = _sum(acc)
        if cuda.threadIdx.x == 0:
            cuda.atomic.add(sumsq, slot * n_tensors + chunk_tensor[c], total)


def _multi_update_kernel(  # pragma: no cover - a kernel
    w, g, a, b, c, ema, chunk_tensor, chunk_start, chunk_stop, params, step, sumsq,
    slot,
):  # fmt: skip
    n_tensors = params.shape[1]
    if step.flags & _CLIP:
        other = (1 - slot) * n_tensors
        for t in range(cuda.grid(1), n_tensors, cuda.gridsize(1)):
            sumsq[other + t] = 0.0  # ready for the next clipped call
    for k in range(cuda.blockIdx.x, chunk_tensor.shape[0], cuda.gridDim.x):
        t = chunk_tensor[k]
        scale = np.float32(1.0)
        if step.flags & _CLIP:
            scale = _clip_scale(sumsq[slot * n_tensors + t], step.clip)
        kind = np.int32(params[_KIND, t])
        column = _tensor(
            params[_LR, t], params[_RATE, t], params[_BC1, t], params[_BC2, t]
        )
        for i in range(chunk_start[k] + cuda.threadIdx.x, chunk_stop[k],
                       cuda.blockDim.x):  # fmt: skip
            _element(i, w, g, a, b, c, ema, kind, column, scale, step)


def _zero_kernel(buf):  # pragma: no cover - runs as a kernel
    i = cuda.grid(1)
    if i < buf.shape[0]:
        buf[i] = 0.0


def _signatures(nb) -> dict[str, tuple[Any, Any]]:
    """Every kernel and its signature, from numba's types (`nb`): the step's
    scalars typed as `elements.Step` holds them."""
    a32, a64, i32 = nb.float32[::1], nb.float64[::1], nb.int32
    step = nb.typeof(elements.step_scalars(HostStep().array(), False))
    tensor = nb.typeof(elements.tensor_scalars(0.0, 0.0, 0.0, 0.0))
    arrays = (a32,) * 6  # w, g, a, b, c, ema
    tables = (nb.int32[::1], nb.int64[::1], nb.int64[::1])
    return {
        "zero": (_zero_kernel, nb.void(a64)),
        "norm": (_norm_kernel, nb.void(a32, a32, step, a64, i32)),
        "update": (_update_kernel, nb.void(*arrays, i32, tensor, step, a64, i32)),
        "multi_norm": (_multi_norm_kernel, nb.void(a32, a32, step, *tables, a64, i32)),
        "multi_update": (
            _multi_update_kernel,
            nb.void(*arrays, *tables, nb.float32[:, ::1], step, a64, i32),
        ),
    }


# --------------------------------------------------------------------------
# Lazy numba import, per-device state and the two-slot scratch.


class _Device(NamedTuple):
    """Per-device constants: block cap and dummy arrays for absent state."""

    max_blocks: int
    dummy32: Any
    dummy64: Any


class Scratch:
    """Two rows of `n` float64 slots for squared norms (`sumsq`, flattened):
    one (device, stream)'s, n = 1, or one multi-tensor layout's, a slot per
    tensor.

    ``slot`` is the row the next clipped call accumulates into; it is zero on
    the device by the time that call's norm kernel runs (zeroed by the previous
    update kernel, or by ``_zero_kernel`` when new or after a failed launch).
    Hold ``lock`` around launches that use it.
    """

    __slots__ = ("sumsq", "slot", "dirty", "lock")

    def __init__(self, n: int) -> None:
        self.sumsq = cuda.device_array(max(2 * n, 1), dtype=np.float64)
        self.slot = 0
        self.dirty = True  # device_array() is uninitialised memory
        self.lock = threading.Lock()


def _load() -> dict[str, Any]:
    """Import numba.cuda and compile the device code, once per process."""
    if _loaded:
        return _loaded
    with _lock:
        if _loaded:
            return _loaded
        global cuda, _f64, _element, _grad_sq, _clip_scale, _tensor, _sum, _BLOCK
        try:
            import numba
            from numba import cuda as numba_cuda
        except ImportError as exc:  # pragma: no cover - depends on environment
            raise ImportError(
                "optsvc's CUDA kernels need numba; install optsvc[cuda12] or "
                "optsvc[cuda13]"
            ) from exc
        sim = bool(numba.config.ENABLE_CUDASIM)
        cuda, _f64 = numba_cuda, numba.float64
        _BLOCK = _SIM_THREADS if sim else _GPU_THREADS
        device = numba_cuda.jit(device=True)
        # Under the simulator the element functions run as they are: they use
        # no `cuda`, which is all its device-function wrapper swaps, per call.
        el = elements if sim else elements.compiled(device)
        _element, _grad_sq, _clip_scale = el.update_element, el.grad_sq, el.clip_scale
        _tensor = el.tensor_scalars
        _sum = device(_block_sum)
        # Explicit signatures: compiled here, once, and launches skip numba's
        # per-call argument typing (arguments are checked before each launch).
        kernels = {
            name: numba_cuda.jit(sig)(fn)
            for name, (fn, sig) in _signatures(numba).items()
        }
        chunk = _SIM_CHUNK if sim else _GPU_CHUNK
        # one step: other threads see all keys or none
        _loaded.update(sim=sim, threads=_BLOCK, chunk=chunk, **kernels)
    return _loaded


def _device(k: dict[str, Any]) -> tuple[int, _Device]:
    """The current device's id and state."""
    dev_id = 0 if k["sim"] else cuda.get_current_device().id
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
    return dev_id, state


def _scratch_for(k: dict[str, Any], dev_id: int, stream: Any) -> Scratch:
    # The simulator runs everything synchronously: one scratch buffer suffices.
    key = (dev_id, 0 if k["sim"] or not stream else int(stream))
    sc = _scratch.get(key)
    if sc is None:
        with _lock:
            sc = _scratch.get(key)
            if sc is None:
                sc = _scratch[key] = Scratch(1)
    return sc


def launch(k, dev, sc, config, update, update_args, norm, norm_args) -> None:
    """An update's launches on `config` (grid, block, stream): `update`
    alone when `sc` is None (no clipping), else `norm`, then `update`, on the
    two rows of `sc` (the caller holds its lock). Both kernels take the
    squared norms and the row after their own arguments."""
    if sc is None:
        update[config](*update_args, dev.dummy64, np.int32(0))
        return
    try:
        if sc.dirty:
            size, threads = sc.sumsq.shape[0], k["threads"]
            k["zero"][(size + threads - 1) // threads, threads, config[2]](sc.sumsq)
            sc.slot, sc.dirty = 0, False
        slot = np.int32(sc.slot)
        norm[config](*norm_args, sc.sumsq, slot)
        update[config](*update_args, sc.sumsq, slot)
    except BaseException:
        sc.dirty = True  # a launch failed: re-zero both rows next time
        raise
    sc.slot = 1 - sc.slot


# --------------------------------------------------------------------------
# Argument checks and device views.


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


def checked_arrays(w: Any, g: Any, state: Any, ema: Any, n_state: int) -> int:
    """The size of an update's arrays, each checked (ValueError, TypeError):
    w and g, the first `n_state` arrays of `state` (what the update's kinds
    keep, `ops.STATE_ARRAYS`), ema when given."""
    n = _checked_size(w, "w", None)
    _checked_size(g, "g", n)
    if len(state) < n_state or any(s is None for s in state[:n_state]):
        raise ValueError(f"the update keeps {n_state} state arrays, got {len(state)}")
    for i, s in enumerate(state[:n_state]):
        _checked_size(s, f"state[{i}]", n)
    if ema is not None:
        _checked_size(ema, "ema", n)
    return n


def on_device(k: dict[str, Any], dev: _Device, *arrays: Any) -> list[Any]:
    """Device views of `arrays` (the dummy for None), made without a
    host-side stream sync.

    Passing a cupy array straight to a kernel makes numba synchronise the
    stream named in its ``__cuda_array_interface__`` (a host sync per array per
    launch). We launch on the caller's stream, so ordering is already right and
    the view is made with ``sync=False``.
    """
    views = []
    for x in arrays:
        if x is None:
            x = dev.dummy32
        elif not (k["sim"] or getattr(x, "__cuda_memory__", False)):
            if not hasattr(x, "__cuda_array_interface__"):
                raise TypeError(f"expected a device array, got {type(x).__name__}")
            x = cuda.as_cuda_array(x, sync=False)
        views.append(x)
    return views


def external_stream(ptr: int) -> Any:
    """Wrap a stream created elsewhere (e.g. cupy's current stream pointer)."""
    k = _load()
    if k["sim"]:
        return cuda.stream()  # the simulator is synchronous; any stream will do
    return cuda.external_stream(ptr)


# --------------------------------------------------------------------------
# Public API


def kernel_state(state: Any, n_state: int) -> tuple:
    """The three state arguments of a kernel: the first `n_state` arrays of
    `state`, None (the dummy) for the rest."""
    return (*state[:n_state], *(None,) * (3 - n_state))


def fused_update(
    w: Any,
    g: Any,
    state: Any,
    ema: Any,
    *,
    kind: int,
    lr: float,
    ema_rate: float,
    bc1: float = 0.0,
    bc2: float = 0.0,
    host: np.ndarray,
    stream: Any = 0,
) -> None:
    """One optimizer step in place, with the semantics of ``reference_update``.

    w, g, the arrays of `state` (the kind's, `ops.STATE_ARRAYS`) and ema: 1-D
    contiguous float32 device arrays of one size (cupy or numba arrays on a
    GPU, numpy arrays under the simulator); ema is None without averages.
    `host`: the call's `ops.HostStep.array()`. ``stream`` is a numba stream
    (see :func:`external_stream`) or 0 for the default stream; both launches
    go to it and the call does not synchronise.
    """
    if kind not in KIND_VALUES:
        raise ValueError(f"unknown update kind {kind!r}")
    n_state = STATE_ARRAYS[kind]
    n = checked_arrays(w, g, state, ema, n_state)
    if n == 0:
        return

    k = _load()
    dev_id, dev = _device(k)
    threads = k["threads"]
    config = (min((n + threads - 1) // threads, dev.max_blocks), threads, stream)
    arrays = on_device(k, dev, w, g, *kernel_state(state, n_state), ema)
    step = elements.step_scalars(host, ema is not None)
    tensor = elements.tensor_scalars(lr, ema_rate, bc1, bc2)
    kernel_args = (np.int32(kind), tensor, step)
    clipped = step.flags & _CLIP
    sc = _scratch_for(k, dev_id, stream) if clipped else None
    with sc.lock if clipped else contextlib.nullcontext():
        launch(
            k, dev, sc, config, k["update"], (*arrays, *kernel_args), k["norm"],
            (arrays[1], arrays[0], step),
        )  # fmt: skip
