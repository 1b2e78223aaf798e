"""The GPU backend: cupy arrays updated by the numba.cuda kernels.

This is the only module of optsvc that imports cupy.
"""

from __future__ import annotations

import numpy as np

from optsvc.errors import OptsvcError

from .ops import Layout, Ops, TensorParams

try:  # cupy is the optional extra optsvc[cuda12] / optsvc[cuda13]
    import cupy
except ImportError:  # pragma: no cover - depends on the machine
    cupy = None

INSTALL_HINT = "pip install 'optsvc[cuda13]' (or 'optsvc[cuda12]' for CUDA 12)"


def has_cupy() -> bool:
    """Whether cupy imports on this machine."""
    return cupy is not None


def gpu_count() -> int:
    """The number of CUDA devices cupy sees (0 without cupy or a driver)."""
    if cupy is None:
        return 0
    try:
        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # no driver, no device
        return 0


class DeviceError(OptsvcError, RuntimeError):
    """The GPU asked for cannot be used (no cupy, or no such device)."""


def check_gpu(gpu_id: int) -> None:
    """Raise DeviceError, with the fix, unless cupy can use GPU `gpu_id`.

    The one place that decides whether a GPU can be used and says why not.
    """
    if cupy is None:
        raise DeviceError(
            f"GPU {gpu_id} needs cupy, which is not installed: {INSTALL_HINT}"
        )
    count = gpu_count()
    if gpu_id < 0 or gpu_id >= count:
        raise DeviceError(
            f"GPU {gpu_id} is not there (cupy sees {count} CUDA device(s)); "
            "use GPU id -1 for the CPU"
        )


def is_cupy_array(array) -> bool:
    return cupy is not None and isinstance(array, cupy.ndarray)


class CupyOps(Ops):
    """Arrays on one CUDA device, updated by the numba.cuda kernels: one fused
    kernel per tensor, or two launches for all tensors of a parameter store."""

    name = "cupy"

    def __init__(self, gpu_id: int = 0) -> None:
        check_gpu(gpu_id)
        self.xp = cupy
        self.gpu_id = gpu_id
        self.device = cupy.cuda.Device(gpu_id)

    def alloc(self, shape, dtype="float32"):
        with self.device:
            return cupy.zeros(shape, dtype=dtype)

    def asarray(self, data, dtype=None):
        with self.device:
            return cupy.asarray(data, dtype=dtype)

    def to_numpy(self, array) -> np.ndarray:
        if is_cupy_array(array):
            return cupy.asnumpy(array)
        return np.asarray(array)

    def owns(self, array) -> bool:
        return is_cupy_array(array) and array.device.id == self.gpu_id

    def device_of(self, array) -> str:
        if is_cupy_array(array):
            return f"gpu:{array.device.id}"
        return "cpu"

    def fused_update(self, w, g, m, v, ema, **hyper) -> None:
        from . import cuda_kernels

        with self.device:
            stream = cuda_kernels.external_stream(cupy.cuda.get_current_stream().ptr)
            cuda_kernels.fused_update(w, g, m, v, ema, stream=stream, **hyper)

    def make_layout(self, offsets, sizes) -> Layout:
        from . import cuda_multi

        with self.device:
            device = cuda_multi.make_layout(offsets, sizes)
        return Layout(offsets, sizes, device)

    def multi_update(
        self, w, g, m, v, ema, *, layout: Layout, params: TensorParams, **hyper
    ) -> None:
        from . import cuda_common, cuda_multi

        with self.device:
            stream = cuda_common.external_stream(cupy.cuda.get_current_stream().ptr)
            cuda_multi.multi_update(
                w,
                g,
                m,
                v,
                ema,
                layout=layout.device,
                params=params.packed,
                stream=stream,
                **hyper,
            )

    def __repr__(self) -> str:
        return f"CupyOps(gpu_id={self.gpu_id})"
