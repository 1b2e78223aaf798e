"""The CPU backend: numpy arrays, updated by the numba-compiled one-pass kernel
(`numba_kernels`, the `fast` extra) or, without numba, by the blocked in-place
numpy kernel (`numpy_kernels`)."""

from __future__ import annotations

import os

import numpy as np

from . import numpy_kernels
from .ops import FlatLayout, Ops, TensorParams

# Set OPTSVC_NO_NUMBA=1 to use the numpy kernel even where numba imports.
_NO_NUMBA_ENV = "OPTSVC_NO_NUMBA"


def _load_numba_kernels():
    """The compiled kernels module, or None where numba is not usable."""
    if os.environ.get(_NO_NUMBA_ENV, "") not in ("", "0"):
        return None
    try:
        from . import numba_kernels
    except ImportError:  # numba absent, or too old / new for this numpy
        return None
    return numba_kernels


class NumpyOps(Ops):
    """Arrays on the CPU, updated in place by one fused kernel per tensor.

    `compiled`: use the numba kernel (True: required, False: never, None:
    when numba imports). The choice is made on the first update, so creating
    the backend, and importing optsvc, never imports numba.

    `threads`: how many threads an update of at least
    `numba_kernels.PARALLEL_MIN` elements (one tensor, or a whole parameter
    store) runs on; None follows NUMBA_NUM_THREADS, else OMP_NUM_THREADS,
    else uses every CPU (never more than numba's pool). Smaller updates, and
    every update without numba, run on one thread. The results are the same
    bit for bit whatever the thread count.

    >>> NumpyOps(compiled=False).compiled
    False
    >>> NumpyOps(compiled=False, threads=4).threads
    1
    """

    name = "numpy"
    xp = np

    def __init__(self, compiled: bool | None = None, threads: int | None = None):
        if threads is not None and (
            isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
        ):
            raise ValueError(
                f"NumpyOps(threads={threads!r}): give a positive int, or None to "
                "follow NUMBA_NUM_THREADS / OMP_NUM_THREADS"
            )
        self._scratch = numpy_kernels.Scratch()
        self._want = compiled
        self._want_threads = threads
        self._kernels = None  # numba_kernels module, False (numpy), None (unknown)
        self._threads = 1
        self._parallel_min = 0
        #: Threads the last update ran on (0 before the first update).
        self.threads_used = 0

    @property
    def compiled(self) -> bool:
        """Whether updates run the numba kernel (resolves the choice now)."""
        return bool(self._resolve())

    def _resolve(self):
        if self._kernels is None:
            kernels = None if self._want is False else _load_numba_kernels()
            if kernels is None and self._want:
                raise ImportError(
                    "NumpyOps(compiled=True) needs numba: pip install 'optsvc[fast]'"
                )
            if kernels:
                wanted = self._want_threads or kernels.default_threads()
                self._threads = min(wanted, kernels.max_threads())
                self._parallel_min = kernels.PARALLEL_MIN
            self._kernels = kernels or False
        return self._kernels

    @property
    def threads(self) -> int:
        """The threads a large update runs on (resolves the kernel choice now)."""
        self._resolve()
        return self._threads

    def fused_update(
        self, w, g, state, ema, *, kind, lr, ema_rate, bc1, bc2, host
    ) -> None:
        kernels = self._kernels
        if kernels is None:
            kernels = self._resolve()
        if not kernels:
            self.threads_used = 1
            numpy_kernels.fused_update(
                w, g, state, ema, kind, lr, ema_rate, bc1, bc2, host, self._scratch
            )
            return
        # positional, `EMPTY` for absent arrays, the kind a plain int: what
        # the compiled kernels take without numba's slow dispatch
        args = (w, g, *kernels.state_arrays(state, ema), int(kind), lr, ema_rate,
                bc1, bc2, host, ema is not None)  # fmt: skip
        if self._threads > 1 and w.shape[0] >= self._parallel_min:
            kernels.fused_parallel(*args, self._threads)
            self.threads_used = self._threads
        else:
            self.threads_used = 1
            kernels.fused_positional(*args)

    def multi_update(
        self, w, g, state, ema, *, layout: FlatLayout, params: TensorParams, host
    ) -> None:
        kernels = self._kernels
        if kernels is None:
            kernels = self._resolve()
        if not kernels:  # numpy: one blocked kernel call per tensor
            self.threads_used = 1
            super().multi_update(
                w, g, state, ema, layout=layout, params=params, host=host
            )
            return
        threads = self._threads if w.shape[0] >= self._parallel_min else 1
        if threads > 1 and layout.device is None:  # the work items, cut once
            layout.device = kernels.chunk_items(layout.offsets, layout.sizes)
        kernels.multi_update(
            w, g, state, ema, layout.offsets, layout.sizes, params.packed,
            host=host, threads=threads, work=layout.device,
        )  # fmt: skip
        self.threads_used = threads

    def __repr__(self) -> str:
        args = [] if self._want is None else [repr(self._want)]
        if self._want_threads is not None:
            args.append(f"threads={self._want_threads}")
        return f"NumpyOps({', '.join(args)})"
