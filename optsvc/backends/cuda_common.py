"""What the numba.cuda kernels share: the lazy numba import, the element update.

The per-tensor kernels (:mod:`.cuda_kernels`, ``fused_update``) and the
multi-tensor kernels (:mod:`.cuda_multi`, ``multi_update``) update each element
with the same device function, :func:`_update_element`, so the numbers of the
two paths are the same. This module holds that function and everything else
both need: the ``flags`` bits, the valid update kinds, the launch configuration, the
import of numba (:func:`_load`, once per process, on first use), the
per-device constants, the scratch-zeroing kernel and the argument checks.

Why numba.cuda: one kernel source serves both places it has to run. On a GPU the
kernels are launched directly on cupy arrays (numba reads their
``__cuda_array_interface__``; nothing is copied), and in CI, which has no GPU,
numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) runs the very same kernel
bodies on the CPU with numpy arrays, so the code that is tested is the code that
runs on the device.

Memory traffic per float32 element: update pass 16 B for SGD (read w, g; write
w, g), 32 B for Adam/momentum (+ read/write m, v), +8 B with averages (ema);
the norm pass adds 4 B (read g), 8 B with L2 (read w too). E.g. Adam with
clipping and averages: 44 B/element, a single pass plus one read of g.

Arithmetic follows ``tests/kernel_reference.py`` (Thinc 9.1.1's order) in
float32; host scalars are computed in float64 and rounded to float32 (``1 - b1``
included), as Thinc does. On a real GPU, NVVM contracts ``a * b + c`` into FMAs,
so results can differ from the numpy reference by about one float32 ulp; under
the simulator they are bit-identical except for the norm's summation order.

numba is imported lazily (first call), so ``optsvc`` imports without it; none
of the CUDA kernel modules imports cupy.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np

from .ops import CLIP_FLAG as _CLIP
from .ops import DECAY_FLAG as _DECAY
from .ops import EMA_FLAG as _EMA
from .ops import L2_FLAG as _L2
from .ops import UpdateKind

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

# Set by _load(): the numba.cuda module (kernel bodies look it up as a module
# global, which is also what the simulator swaps out), numba's number types,
# the element-update device function and the block size the shared-memory
# reductions are compiled for. The kernel modules copy these into their own
# globals when they compile their kernels (see their _load()).
cuda: Any = None
_f32: Any = None
_f64: Any = None
_i32: Any = None
_element: Any = None
_BLOCK = _GPU_THREADS

_lock = threading.Lock()
_loaded: dict[str, Any] = {}  # "sim", "threads", "zero"
_devices: dict[int, _Device] = {}  # device id -> per-device state


# --------------------------------------------------------------------------
# Device code shared by both kernel modules. Plain functions; _load() compiles
# them with cuda.jit. Only float32 values are mixed with float32 (no Python
# float literals), so nothing is silently promoted to float64.


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
    if kind == 0:  # UpdateKind.SGD
        wi = wi - lr * gi
    else:
        mi = m[i] * b1 + one_minus_b1 * gi
        vi = v[i] * b2 + one_minus_b2 * (gi * gi)
        m[i] = mi
        v[i] = vi
        if kind == 1:  # UpdateKind.ADAM
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


def _zero_kernel(buf):  # pragma: no cover - runs as a kernel
    i = cuda.grid(1)
    if i < buf.shape[0]:
        buf[i] = 0.0


_ZERO_SIG = "void(float64[::1])"


# --------------------------------------------------------------------------
# Lazy numba import and per-device caches.


class _Device:
    """Per-device constants: block cap and dummy arrays for absent m/v/ema."""

    __slots__ = ("max_blocks", "dummy32", "dummy64")

    def __init__(self, max_blocks: int, dummy32: Any, dummy64: Any) -> None:
        self.max_blocks = max_blocks
        self.dummy32 = dummy32
        self.dummy64 = dummy64


def _load() -> dict[str, Any]:
    """Import numba.cuda and compile the shared device code, once per process."""
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
        # per-call argument typing (arguments are checked before each launch).
        loaded = {
            "sim": sim,
            "threads": _BLOCK,
            "zero": numba_cuda.jit(_ZERO_SIG)(_zero_kernel),
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


def _checked_state(m: Any, v: Any, ema: Any, n: int, *, moments: bool) -> None:
    """The optimizer-state arrays of an update of `n` elements: m and v when
    the update keeps moments (Adam, momentum), ema when given."""
    if moments:
        if m is None or v is None:
            raise ValueError("m and v are required for Adam and momentum updates")
        _checked_size(m, "m", n)
        _checked_size(v, "v", n)
    if ema is not None:
        _checked_size(ema, "ema", n)


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


def update_flags(l2: float, clip: float, decay: float, has_ema: bool) -> np.int32:
    """Which optional parts of the update run, decided from the float64 host
    values (as the reference decides them), not from their float32 roundings."""
    return np.int32(
        (_L2 if l2 != 0 else 0)
        | (_CLIP if clip > 0 else 0)
        | (_DECAY if decay != 0 else 0)
        | (_EMA if has_ema else 0)
    )


def shared_scalars(b1, b2, eps, l2, clip, decay) -> tuple:
    """The float32 scalars every tensor of a step shares, `1 - beta` formed in
    float64 and rounded once, as the CPU kernels do."""
    f32 = np.float32
    return (f32(b1), f32(1.0 - b1), f32(b2), f32(1.0 - b2), f32(eps), f32(l2),
            f32(clip), f32(decay))  # fmt: skip


def external_stream(ptr: int) -> Any:
    """Wrap a stream created elsewhere (e.g. cupy's current stream pointer)."""
    k = _load()
    if k["sim"]:
        return cuda.stream()  # the simulator is synchronous; any stream will do
    return cuda.external_stream(ptr)
