"""The numba.cuda kernels behind the `Ops` interface, for any array module.

`CudaKernelOps` is all of the GPU backend but the arrays: it launches the
per-tensor kernel (`cuda_kernels.fused_update`) and the multi-tensor kernels
(`cuda_multi.multi_update`, on the device tables of `make_layout`) inside the
backend's device scope, on the stream the backend names. `CupyOps`
(`cupy_ops`, the only module that imports cupy) sets cupy as the array module,
the device and cupy's current stream. On numpy, under numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``), this class as it is runs the same dispatch and
the same kernels on the CPU, which is how the tests exercise the GPU backend
without a GPU.
"""

from __future__ import annotations

import contextlib
from typing import Any

from . import cuda_kernels, cuda_multi
from .ops import FlatLayout, Ops, TensorParams


class CudaKernelOps(Ops):
    """Arrays updated by the numba.cuda kernels: one fused kernel per tensor,
    or two launches for all tensors of a parameter store.

    Subclasses name the array module (`xp`, numpy unless set), the device
    scope entered around every launch (`device`, a reusable context manager)
    and the stream the kernels are launched on (`stream_ptr`).
    """

    name = "cuda"
    device: Any = contextlib.nullcontext()

    def stream_ptr(self) -> int:
        """The CUDA stream the kernels are launched on (0: the default one)."""
        return 0

    def fused_update(self, w, g, state, ema, **scalars) -> None:
        with self.device:
            stream = cuda_kernels.external_stream(self.stream_ptr())
            cuda_kernels.fused_update(w, g, state, ema, stream=stream, **scalars)

    def make_layout(self, offsets, sizes) -> FlatLayout:
        with self.device:
            device = cuda_multi.make_layout(offsets, sizes)
        return FlatLayout(offsets, sizes, device)

    def multi_update(
        self, w, g, state, ema, *, layout: FlatLayout, params: TensorParams, host
    ) -> None:
        with self.device:
            stream = cuda_kernels.external_stream(self.stream_ptr())
            cuda_multi.multi_update(
                w,
                g,
                state,
                ema,
                layout=layout.device,
                params=params.packed,
                host=host,
                stream=stream,
            )
