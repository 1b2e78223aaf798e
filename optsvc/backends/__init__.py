"""Array backends: numpy on the CPU, cupy on a CUDA GPU.

An `Ops` object holds arrays on one device and runs the optimizer's fused
update there, one tensor at a time (`fused_update`) or many tensors laid out
in flat buffers (`make_layout`, `multi_update`, with per-tensor
`TensorParams`); `UpdateKind` names the update rules the kernels implement,
`STATE_ARRAYS` how many state arrays each keeps, and `HostStep` the scalars
every tensor of a call shares.

The current backend is a context-local setting, as in Thinc:
`get_current_ops()`, `use_ops("cupy")`, `require_gpu()`, `prefer_gpu()`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator

from .cuda_ops import CudaKernelOps
from .cupy_ops import (
    CupyOps,
    DeviceError,
    check_gpu,
    gpu_count,
    has_cupy,
    is_cupy_array,
)
from .numpy_ops import NumpyOps
from .ops import STATE_ARRAYS, FlatLayout, HostStep, Ops, TensorParams, UpdateKind

_current_ops: contextvars.ContextVar[Ops | None] = contextvars.ContextVar(
    "optsvc_current_ops", default=None
)
# One backend object per device, made on first use (a CupyOps that fails, for
# want of cupy or of that GPU, is not kept).
_default_numpy_ops = functools.cache(NumpyOps)
_cupy_ops = functools.cache(CupyOps)


def get_ops(name: str, **kwargs) -> Ops:
    """The backend called `name` ("numpy" or "cupy"); `gpu_id` for cupy."""
    if name == "numpy":
        return _default_numpy_ops()
    if name == "cupy":
        return _cupy_ops(int(kwargs.get("gpu_id", 0)))
    raise ValueError(f"Unknown backend {name!r}; expected 'numpy' or 'cupy'")


def get_current_ops() -> Ops:
    """The backend in use (numpy unless `use_ops` or `require_gpu` said else)."""
    return _current_ops.get() or _default_numpy_ops()


def set_current_ops(ops: Ops) -> None:
    """Make `ops` the current backend."""
    _current_ops.set(ops)


@contextlib.contextmanager
def use_ops(name: str | Ops, **kwargs) -> Iterator[Ops]:
    """Use a backend within a `with` block.

    >>> with use_ops("numpy") as ops:
    ...     ops.name
    'numpy'
    """
    ops = name if isinstance(name, Ops) else get_ops(name, **kwargs)
    token = _current_ops.set(ops)
    try:
        yield ops
    finally:
        _current_ops.reset(token)


def get_array_ops(array) -> Ops:
    """The backend that owns `array`."""
    if is_cupy_array(array):
        return get_ops("cupy", gpu_id=array.device.id)
    return _default_numpy_ops()


def ops_for_device(gpu_id: int) -> Ops:
    """numpy for a negative `gpu_id` (the CPU), else cupy on that GPU;
    DeviceError, with the fix, when that GPU cannot be used."""
    if gpu_id < 0:
        return _default_numpy_ops()
    return get_ops("cupy", gpu_id=gpu_id)


def require_gpu(gpu_id: int = 0) -> Ops:
    """Switch to the GPU, or raise DeviceError saying why it can't be used."""
    ops = get_ops("cupy", gpu_id=gpu_id)
    set_current_ops(ops)
    return ops


def prefer_gpu(gpu_id: int = 0) -> bool:
    """Switch to the GPU if one can be used; return whether it was."""
    try:
        check_gpu(gpu_id)
    except DeviceError:
        return False
    require_gpu(gpu_id)
    return True


__all__ = [
    "Ops",
    "NumpyOps",
    "CupyOps",
    "CudaKernelOps",
    "UpdateKind",
    "STATE_ARRAYS",
    "HostStep",
    "FlatLayout",
    "TensorParams",
    "get_ops",
    "get_current_ops",
    "set_current_ops",
    "use_ops",
    "get_array_ops",
    "ops_for_device",
    "DeviceError",
    "check_gpu",
    "has_cupy",
    "gpu_count",
    "require_gpu",
    "prefer_gpu",
]
