"""The GPU backend: cupy arrays updated by the numba.cuda kernels.

This is the only module of optsvc that imports cupy; the kernel dispatch is
`cuda_ops.CudaKernelOps`, which knows nothing of cupy.
"""

from __future__ import annotations

import numpy as np

from optsvc.errors import DeviceError

from .cuda_ops import CudaKernelOps

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


class CupyOps(CudaKernelOps):
    """Arrays on one CUDA device (cupy), updated by the numba.cuda kernels on
    cupy's current stream (the dispatch is `CudaKernelOps`')."""

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

    @property
    def device_name(self) -> str:
        return f"gpu:{self.gpu_id}"

    def stream_ptr(self) -> int:
        return cupy.cuda.get_current_stream().ptr

    def __repr__(self) -> str:
        return f"CupyOps(gpu_id={self.gpu_id})"
