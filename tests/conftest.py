import os
import sys
import threading
import traceback


# --- numba CUDA simulator switch -------------------------------------------
# The numba.cuda kernels (optsvc/backends/cuda_*.py) are tested on the CPU
# under numba's CUDA simulator unless a real GPU is usable (checked via cupy).
# numba reads NUMBA_ENABLE_CUDASIM once, when it is first imported, so this must
# run before anything imports numba; setdefault keeps an explicit user choice.
def _gpu_usable() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


if not _gpu_usable():
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
# ----------------------------------------------------------------------------

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from optsvc.backends import CudaKernelOps, get_ops  # noqa: E402


class SimulatedGpuOps(CudaKernelOps):
    """The shipped GPU backend's kernel dispatch (`CudaKernelOps`, which
    `CupyOps` only gives cupy arrays, a device and a stream) on numpy arrays:
    under numba's CUDA simulator, the GPU code path of the Optimizer, run in
    CI without a GPU."""

    name = "cuda-sim"


def _lock_simulated_shared_arrays() -> None:
    """numba's CUDA simulator hands each thread of a block the block's shared
    array from a dict filled on first use, without a lock: two threads that
    ask at once can each get a fresh, uninitialised array, and the block's
    reduction then sums garbage (a rare, order-dependent failure of a
    clipped update). The same lookup, under a lock."""
    try:
        from numba.core import types
        from numba.cuda.simulator.kernelapi import FakeCUDAShared
        from numba.np import numpy_support
    except ImportError:  # numba absent, or laid out differently: leave it
        return
    unlocked = FakeCUDAShared.array
    lock = threading.Lock()

    def array(self, shape, dtype):
        if shape == 0 or not hasattr(self, "_allocations"):
            return unlocked(self, shape, dtype)
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        # keyed by the calling line, as the simulator keys it
        caller = traceback.extract_stack(sys._getframe(1), limit=1)[0][0:2]
        with lock:
            found = self._allocations.get(caller)
            if found is None:
                found = self._allocations[caller] = np.empty(shape, dtype)
        return found

    FakeCUDAShared.array = array


@pytest.fixture(autouse=True, scope="session")
def _fast_simulator():
    """The CUDA simulator runs each thread as a Python thread and polls them at
    every syncthreads(); with the default 5 ms GIL switch interval its norm
    kernels crawl. A short interval halves the simulated tests' runtime."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        yield
        return
    _lock_simulated_shared_arrays()
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    yield
    sys.setswitchinterval(old)


def _backends():
    params = [pytest.param("numpy", id="numpy")]
    try:
        import numba  # noqa: F401

        has_numba = True
    except ImportError:
        has_numba = False
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        params.append(
            pytest.param(
                "cuda-sim",
                id="cuda-sim",
                marks=pytest.mark.skipif(
                    not has_numba, reason="numba is not installed"
                ),
            )
        )
    if _gpu_usable():
        params.append(pytest.param("cupy", id="cupy"))
    return params


@pytest.fixture(params=_backends())
def ops(request):
    """Each backend the optimizer can run on here: numpy always; the CUDA
    kernels in simulation without a GPU; cupy on a real GPU."""
    if request.param == "numpy":
        return get_ops("numpy")
    if request.param == "cuda-sim":
        return SimulatedGpuOps()
    return get_ops("cupy", gpu_id=0)


def to_host(array):
    return array.get() if hasattr(array, "get") else np.asarray(array)
