"""The optimizer update of many tensors at once on a CUDA device (``numba.cuda``).

:func:`multi_update` updates many tensors that live in flat buffers (a
``ParamStore``) with the same two launches for all of them, whatever their
number: ``_multi_norm_kernel`` sums each tensor's squared norm into its own
float64 slot, and ``_multi_update_kernel`` applies each tensor's own clip
scale and scalars (a column of ``ops.TensorParams``: learning rate with the
bias correction folded in, averaging rate, kind, bias corrections).
Both walk a chunk table built once per layout (:class:`MultiLayout`), so
per-tensor launches (tens of microseconds each from Python) are gone; the
per-tensor scalars are computed on the host, as Thinc does, and reach the
device in one small copy per step. The kernels, the element update they share
with :func:`.cuda_kernels.fused_update` (so the numbers are the same, tensor
by tensor), the lazy numba import and the checks live in :mod:`.cuda_kernels`;
this module holds the layouts and the launches.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import cuda_kernels as ck
from . import elements
from .ops import CLIP_FLAG as _CLIP
from .ops import STATE_ARRAYS, TensorParams

__all__ = ["MultiLayout", "make_layout", "multi_update"]


class MultiLayout:
    """Device tables of a multi-tensor step, built once per parameter layout:
    the chunk table, the per-tensor scalars (copied in each step) and the
    two-row squared-norm scratch (see the comment above the kernels in
    :mod:`.cuda_kernels`)."""

    __slots__ = (
        "n_tensors",
        "total",
        "chunk_tensor",
        "chunk_start",
        "chunk_stop",
        "params",
        "scratch",
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
        self.chunk_tensor = ck.cuda.to_device(tensor)
        self.chunk_start = ck.cuda.to_device(start)
        self.chunk_stop = ck.cuda.to_device(stop)
        rows = (len(TensorParams.ROWS), len(sizes))
        self.params = ck.cuda.to_device(np.zeros(rows, dtype=np.float32))
        self.scratch = ck.Scratch(len(sizes))


def make_layout(offsets, sizes) -> MultiLayout:
    """The device tables for non-empty tensors at `offsets` with `sizes` in
    flat buffers, on the current device (host arrays under the simulator)."""
    k = ck._load()
    return MultiLayout(offsets, sizes, k["chunk"])


def _checked_args(
    w: Any, g: Any, state: Any, ema: Any, layout: MultiLayout, params: Any
) -> tuple[np.ndarray, int]:
    """`params` as a contiguous float32 array and the number of state
    arrays the update keeps, every argument of a multi-tensor update
    checked (ValueError, TypeError)."""
    params = np.ascontiguousarray(params, dtype=np.float32)
    shape = (len(TensorParams.ROWS), layout.n_tensors)
    if params.shape != shape:
        raise ValueError(f"params must have shape {shape}, got {params.shape}")
    kinds = params[TensorParams.ROWS.index("kind")]
    if not np.isin(kinds, ck.KIND_VALUES).all():
        raise ValueError(f"unknown update kind in {np.unique(kinds).tolist()}")
    n_state = max((STATE_ARRAYS[int(k)] for k in np.unique(kinds)), default=0)
    n = ck.checked_arrays(w, g, state, ema, n_state)
    if n < layout.total:
        raise ValueError(f"w has size {n}; the layout needs {layout.total}")
    return params, n_state


def multi_update(
    w: Any,
    g: Any,
    state: Any,
    ema: Any,
    *,
    layout: MultiLayout,
    params: np.ndarray,
    host: np.ndarray,
    stream: Any = 0,
) -> None:
    """Every tensor of `layout` updated in place, each with the semantics of
    ``reference_update`` (its own clipping norm), in two launches at most:
    the norms of all tensors (only when ``clip > 0``), then the update.

    w, g, the arrays of `state` and ema: the flat buffers (`state` as many
    as the tensors' kinds keep, ema None without averages). `params`: a
    float32 host array of the rows of `ops.TensorParams`, copied to the
    device in one transfer on `stream`. `host`: the call's
    `ops.HostStep.array()`.
    """
    params, n_state = _checked_args(w, g, state, ema, layout, params)
    if layout.n_tensors == 0:
        return

    k = ck._load()
    _, dev = ck._device(k)
    config = (min(len(layout.chunk_tensor), dev.max_blocks), k["threads"], stream)
    arrays = ck.on_device(k, dev, w, g, *ck.kernel_state(state, n_state), ema)
    w, g = arrays[:2]
    step = elements.step_scalars(host, ema is not None)
    tables = (layout.chunk_tensor, layout.chunk_start, layout.chunk_stop)
    sc = layout.scratch
    with sc.lock:
        layout.params.copy_to_device(params, stream=stream)
        ck.launch(
            k, dev, sc if step.flags & _CLIP else None, config, k["multi_update"],
            (*arrays, *tables, layout.params, step), k["multi_norm"],
            (g, w, step, *tables),
        )  # fmt: skip
