"""The optimizer update on the CPU, compiled with numba: one pass per element.

`fused_update` has the semantics of the numpy kernel (and of
``tests/kernel_reference.py``) but reads and writes each element once: 16 B
per float32 parameter for w and g, 8 more for each state array of the kind
(32 B for Adam, 24 for Lion, 40 for AdEMAMix), 8 more with averages, plus one
more read of the gradient (and of the weights with L2 in the gradient) for
the clipping norm. `multi_update` runs the same per-tensor code over many
tensors laid out in flat buffers, driven by per-tensor tables (offset, size,
and the rows of `ops.TensorParams`), in one call. The update of each element
is `elements.update_element`, which the CUDA kernels compile too, inlined here
into one loop per update kind (`_kind_loop`). Every kernel takes three state
arrays (`EMPTY` where the kind keeps fewer) and the call's scalars as one
float64 array (`ops.HostStep.array()`).

Numerics. Every operation rounds to float32 in the reference's order:
``fastmath`` stays off, so LLVM neither reassociates nor contracts ``a * b + c``
into FMAs, and the results equal the reference bit for bit whenever the
clipping norm is not involved. ``error_model="numpy"`` gives IEEE division (no
zero-division check), which is what lets LLVM vectorise the loops. The squared
norm is summed in float64, as the reference does, but in a fixed order of
`LANES` interleaved partial sums (vectorisable without reassociation); it
differs from numpy's ``dot`` only in the last bits of a float64, so the
float32 norm almost always agrees exactly. The per-key and the multi-tensor
entry points share that code, so they agree with each other bit for bit.

Threads. `multi_parallel` (and `fused_parallel`, the same kernel on a lone
tensor) runs the per-chunk code over numba's thread pool: every tensor is
cut into `CHUNK`-element chunks from its own start (the cut depends on sizes
alone), the clipping norm's partial sums go to one slot per chunk and are
added in chunk order after the parallel loop, exactly as the serial
`_norm_sq` adds them; so the results are the same bit for bit on any number
of threads, and equal the serial kernels'. (A tensor of one chunk sums its
norm as before chunking existed.) `NumpyOps(threads=N)` picks the parallel
kernel for updates of at least `PARALLEL_MIN` elements. Launches hold a
lock: numba's workqueue layer, the one always available, aborts on
concurrent launches.

This module imports numba at import time; `optsvc.backends.numpy_ops` imports
it lazily, on the first update, and falls back to the numpy kernel without
numba. Functions are compiled on first call and cached on disk (``cache=True``);
numba keys that cache on this file, not on `elements`: after editing
`elements` alone, touch this file (or clear ``__pycache__``) to recompile.
"""

from __future__ import annotations

import functools
import os
import threading
import warnings


def _usable_thread_setting() -> None:
    """NUMBA_NUM_THREADS as numba can take it, before numba reads it: a
    whole number from 1 to `MAX_THREADS` (more threads than CPUs is allowed).
    Anything else (numba refuses 0, warns on a word, may crash on 100000)
    gives way to the CPU count, with a warning that says so."""
    value, cpus = os.environ.get("NUMBA_NUM_THREADS"), os.cpu_count() or 1
    limit = max(MAX_THREADS, cpus)
    if value is None or (value.strip().isdigit() and 1 <= int(value) <= limit):
        return
    os.environ["NUMBA_NUM_THREADS"] = str(cpus)
    warnings.warn(
        f"NUMBA_NUM_THREADS={value!r} is not a whole number from 1 to {limit}; "
        f"optsvc uses {cpus} (the CPUs here)",
        stacklevel=2,
    )


# The most threads NUMBA_NUM_THREADS may ask for (or the CPUs, if more).
MAX_THREADS = 256


_usable_thread_setting()

import numba  # noqa: E402 (after the setting it reads)
import numpy as np  # noqa: E402

from . import elements  # noqa: E402
from .ops import CLIP_FLAG as _CLIP  # noqa: E402
from .ops import L2_FLAG as _L2  # noqa: E402
from .ops import MAX_STATE, TensorParams  # noqa: E402

# Interleaved float64 partial sums of the clipping norm: element i of a tensor
# goes to lane i % LANES. Fixed, so every entry point sums in the same order.
LANES = 64

# The parallel kernels' unit of work: a tensor is cut into chunks of this many
# elements (a multiple of LANES; 64 KiB of each float32 array, so that one
# chunk's five streams stay in a core's L2 cache). The cut depends on the
# tensor's size alone, and the norm's partial sums are added in chunk order,
# so the results never depend on the number of threads.
CHUNK = 16384

# Updates smaller than this many elements (one tensor for the per-key call,
# the whole flat buffer for the multi-tensor call) stay on the calling
# thread. Measured on 2 cores with the pool awake (one call after another):
# break-even at 32K elements, 1.5x faster at 64K, 2.3x at 256K. But a pool
# that slept between steps (other work in between, as in training) must be
# woken first, which costs tens of microseconds on an idle machine (and up to
# a scheduler time slice on an oversubscribed one): 256K elements (~0.3 ms
# on one thread) pay for that.
PARALLEL_MIN = 262144


_jit = numba.njit(cache=True, fastmath=False, nogil=True, error_model="numpy")

# The element update and its helpers (`elements`), inlined into the loops
# below in numba's IR, so LLVM vectorises each loop as if they were written
# out in it.
_el = elements.compiled(
    numba.njit(inline="always", fastmath=False, error_model="numpy")
)
_element, _clip_scale, _step = _el.update_element, _el.clip_scale, _el.step_scalars
_tensor = _el.tensor_scalars

# Stand-in for absent moments / averages (numba needs an array of the type).
EMPTY = np.zeros(0, dtype=np.float32)

_f32 = np.float32


@_jit
def _sumsq(g, w, l2, flags):  # pragma: no cover - compiled
    """Sum of (g + l2 * w)**2 in float64, lane by lane (element i to lane
    i % LANES, then the lanes in order): `elements.grad_sq`, written out in
    one loop per L2 flag (through `grad_sq`, with the flag tested inside the
    loop, the norm pass of 16M elements took 1-2% longer)."""
    acc = np.zeros(LANES, np.float64)
    n = g.shape[0]
    full = (n // LANES) * LANES
    if flags & _L2:
        for base in range(0, full, LANES):
            for j in range(LANES):
                x = np.float64(g[base + j] + l2 * w[base + j])
                acc[j] += x * x
        for j in range(n - full):
            x = np.float64(g[full + j] + l2 * w[full + j])
            acc[j] += x * x
    else:
        for base in range(0, full, LANES):
            for j in range(LANES):
                x = np.float64(g[base + j])
                acc[j] += x * x
        for j in range(n - full):
            x = np.float64(g[full + j])
            acc[j] += x * x
    total = 0.0
    for j in range(LANES):
        total += acc[j]
    return total


@_jit
def _norm_sq(g, w, l2, flags):  # pragma: no cover - compiled
    """The squared clipping norm of a whole tensor: `_sumsq` of each
    `CHUNK`-sized chunk, added in chunk order. A tensor of one chunk sums as
    `_sumsq` alone; the parallel kernels add the same partial sums in the
    same order, so the norm never depends on the number of threads."""
    n = g.shape[0]
    total = 0.0
    for a in range(0, n, CHUNK):
        b = min(a + CHUNK, n)
        total += _sumsq(g[a:b], w[a:b], l2, flags)
    return total


def _kind_loop(kind):
    """The elementwise update of one tensor, or of one chunk of it, by the
    rule of `kind` (the clipping already folded into `scale`).

    One loop per kind, each compiled on its own with its kind a constant:
    LLVM keeps only that kind's rule in it, splits it by the flags and
    vectorises each copy, however `elements.rule` branches (one loop testing
    the kind of every element stayed scalar once those tests compiled to a
    switch, and so did the last of three loops in one function). No
    reference counting, as the loop allocates nothing: numba's inlining
    counts references to the arrays it passes, and those counts, pruned only
    after LLVM's loop passes, keep the loop scalar too."""

    @numba.njit(fastmath=False, nogil=True, error_model="numpy", _nrt=False)
    def loop(w, g, a, b, c, ema, t, scale, step):  # pragma: no cover
        for i in range(w.shape[0]):
            _element(i, w, g, a, b, c, ema, kind, t, scale, step)

    return loop


# One loop per kind, by its number: `_apply` picks one.
_SGD, _ADAM, _MOMENTUM, _LION, _ADEMAMIX, _SF_ADAMW, _SF_SGD = (
    elements.SGD, elements.ADAM, elements.MOMENTUM, elements.LION,
    elements.ADEMAMIX, elements.SF_ADAMW, elements.SF_SGD,
)  # fmt: skip
_sgd, _adam, _momentum = _kind_loop(_SGD), _kind_loop(_ADAM), _kind_loop(_MOMENTUM)
_lion, _ademamix = _kind_loop(_LION), _kind_loop(_ADEMAMIX)
_sf_adamw, _sf_sgd = _kind_loop(_SF_ADAMW), _kind_loop(_SF_SGD)

# The rows of ops.TensorParams, by name.
_LR, _RATE, _KIND, _BC1, _BC2 = (TensorParams.ROWS.index(name) for name in
                                 ("lr", "ema_rate", "kind", "bc1", "bc2"))  # fmt: skip


@numba.njit(cache=True, fastmath=False, nogil=True, error_model="numpy", _nrt=False)
def _apply(w, g, a, b, c, ema, kind, t, scale, step):  # pragma: no cover
    """The loop of `kind` (an update kind's registration on the CPU). No
    reference counting here either: it cost each call some 50 ns on the
    arrays passed on, a few percent of a small tensor's update."""
    if kind == _SGD:
        _sgd(w, g, a, b, c, ema, t, scale, step)
    elif kind == _ADAM:
        _adam(w, g, a, b, c, ema, t, scale, step)
    elif kind == _MOMENTUM:
        _momentum(w, g, a, b, c, ema, t, scale, step)
    elif kind == _LION:
        _lion(w, g, a, b, c, ema, t, scale, step)
    elif kind == _ADEMAMIX:
        _ademamix(w, g, a, b, c, ema, t, scale, step)
    elif kind == _SF_ADAMW:
        _sf_adamw(w, g, a, b, c, ema, t, scale, step)
    else:
        _sf_sgd(w, g, a, b, c, ema, t, scale, step)


@_jit
def _update(w, g, a, b, c, ema, kind, t, step):  # pragma: no cover - compiled
    """One tensor's update (whole arrays; the tensor's `Tensor` scalars):
    the clipping norm if asked, then one pass over the elements."""
    scale = _f32(1.0)
    if step.flags & _CLIP:
        scale = _clip_scale(_norm_sq(g, w, step.l2, step.flags), step.clip)
    _apply(w, g, a, b, c, ema, kind, t, scale, step)


@_jit
def _column(params, t):  # pragma: no cover - compiled
    """Tensor t's `Tensor` from the rows of `ops.TensorParams`."""
    return _tensor(params[_LR, t], params[_RATE, t], params[_BC1, t], params[_BC2, t])


@_jit
def fused_positional(  # pragma: no cover - compiled
    w, g, a, b, c, ema, kind, lr, ema_rate, bc1, bc2, host, has_ema
):
    """`fused_update` as the compiled function itself, for callers that count
    microseconds: positional arguments, `EMPTY` for absent arrays, `kind` a
    plain int (an IntEnum member costs numba a slow dispatch)."""
    step = _step(host, has_ema)
    _update(w, g, a, b, c, ema, kind, _tensor(lr, ema_rate, bc1, bc2), step)


@_jit
def multi_positional(  # pragma: no cover - compiled
    w, g, a, b, c, ema, offsets, sizes, params, host, has_ema
):
    """`multi_update` as the compiled function itself, for callers that count
    microseconds: positional arguments, `EMPTY` for absent arrays."""
    step = _step(host, has_ema)
    for t in range(offsets.shape[0]):
        lo = offsets[t]
        hi = lo + sizes[t]
        # Slices, not index ranges: LLVM vectorises the loop over a view (as
        # in fused_positional), and both entry points run the very same code.
        _update(
            w[lo:hi], g[lo:hi], a[lo:hi], b[lo:hi], c[lo:hi], ema[lo:hi],
            np.int64(params[_KIND, t]), _column(params, t), step,
        )  # fmt: skip


# The parallel kernel (see Threads above), for many tensors or one
# (`fused_parallel`). The thread count is set by the Python entry points
# (numba's setting is per calling thread; set inside a kernel it would keep
# the kernel out of the disk cache). Each chunk builds its own `Step`:
# numba's parallel loops take arrays and scalars from outside, not tuples.
_pjit = numba.njit(
    cache=True, fastmath=False, nogil=True, error_model="numpy", parallel=True
)


@_pjit
def _multi_parallel(  # pragma: no cover - compiled
    w, g, sa, sb, sc, ema, items, spans, n_split, params, host, has_ema
):
    step = _step(host, has_ema)
    l2_32, flags, clip32 = step.l2, step.flags, step.clip
    n_items = items.shape[1]
    n_tensors = spans.shape[1]
    scales = np.ones(n_tensors, np.float32)
    # A tensor of several chunks: its norm from partial sums, in a first pass
    # over the leading `n_split` items (`chunk_items` puts them first).
    # A tensor of one chunk: its norm in the same work item as its update,
    # while its gradient is still in cache (one read from memory, not two);
    # the same sum, 0.0 + its one partial, either way.
    if flags & _CLIP:
        partial = np.empty(n_split, np.float64)
        for i in numba.prange(n_split):
            a, b = items[1, i], items[2, i]
            partial[i] = _sumsq(g[a:b], w[a:b], l2_32, flags)
        for t in range(n_tensors):
            if spans[1, t] > 1:
                total = 0.0
                for i in range(spans[0, t], spans[0, t] + spans[1, t]):
                    total += partial[i]
                scales[t] = _clip_scale(total, clip32)
    for i in numba.prange(n_items):
        t = items[0, i]
        a = items[1, i]
        b = items[2, i]
        scale = scales[t]
        if flags & _CLIP and spans[1, t] == 1:
            scale = _clip_scale(0.0 + _sumsq(g[a:b], w[a:b], l2_32, flags), clip32)
        _apply(
            w[a:b], g[a:b], sa[a:b], sb[a:b], sc[a:b], ema[a:b],
            np.int64(params[_KIND, t]), _column(params, t), scale,
            _step(host, has_ema),
        )  # fmt: skip


@_jit
def _rewrite(x, factor):  # pragma: no cover - compiled
    # A chunk from index 0 and a factor known only at run time: LLVM
    # vectorises the loop and cannot drop it (x * 1.0 written as a constant
    # folds to nothing; indexing from c * CHUNK keeps the loop scalar, which
    # measured a fifth of the bandwidth).
    for i in range(x.shape[0]):
        x[i] = x[i] * factor


@_pjit
def _stream_parallel(buf, factor):  # pragma: no cover - compiled
    n = buf.shape[0]
    for c in numba.prange((n + CHUNK - 1) // CHUNK):
        a = c * CHUNK
        _rewrite(buf[a : min(a + CHUNK, n)], factor)


# workqueue, numba's always-available threading layer, aborts the process when
# two threads launch parallel kernels at once; one launch at a time is cheap.
_LAUNCH = threading.Lock()


def chunk_items(offsets, sizes) -> tuple[np.ndarray, np.ndarray, int]:
    """The work items of the parallel multi-tensor kernel for tensors at
    `offsets` with `sizes`: `items`, int64 rows (tensor, start, stop), each
    tensor cut into `CHUNK`-sized chunks from its own start; `spans`, int64
    rows (first item, item count) per tensor; and `n_split`, how many items
    belong to tensors of several chunks. Those come first, in tensor and
    chunk order, so that the norm pass runs over the leading `n_split` items
    with no test per item; then the tensors of one chunk, in tensor order."""
    offsets = np.asarray(offsets, dtype=np.int64)
    sizes = np.asarray(sizes, dtype=np.int64)
    counts = (sizes + CHUNK - 1) // CHUNK
    order = np.concatenate([np.flatnonzero(counts > 1), np.flatnonzero(counts == 1)])
    firsts = np.zeros(len(sizes), dtype=np.int64)
    firsts[order] = np.cumsum(counts[order]) - counts[order]
    tensor = np.repeat(order, counts[order])
    within = np.arange(len(tensor), dtype=np.int64) - firsts[tensor]
    start = offsets[tensor] + within * CHUNK
    stop = np.minimum(start + CHUNK, offsets[tensor] + sizes[tensor])
    items = np.ascontiguousarray(np.stack([tensor, start, stop]).astype(np.int64))
    spans = np.ascontiguousarray(np.stack([firsts, counts]))
    return items, spans, int(counts[counts > 1].sum())


@functools.lru_cache(maxsize=64)
def _one_tensor(n: int) -> tuple[np.ndarray, np.ndarray, int]:
    """`chunk_items` of a lone tensor of `n` elements (read-only, shared)."""
    return chunk_items(np.zeros(1, np.int64), np.full(1, n, np.int64))


def fused_parallel(
    w, g, a, b, c, ema, kind, lr, ema_rate, bc1, bc2, host, has_ema, threads
) -> None:
    """`fused_positional` over `threads` threads, chunk by chunk (the
    multi-tensor kernel on one tensor); the same results bit for bit."""
    column = dict(lr=lr, ema_rate=ema_rate, kind=kind, bc1=bc1, bc2=bc2)
    params = np.array([[column[row]] for row in TensorParams.ROWS], np.float32)
    multi_parallel(
        w, g, a, b, c, ema, *_one_tensor(w.shape[0]), params, host, has_ema,
        threads,
    )  # fmt: skip


def multi_parallel(
    w, g, a, b, c, ema, items, spans, n_split, params, host, has_ema, threads
) -> None:
    """`multi_update` over `threads` threads, on the work items of
    `chunk_items` (positional; `EMPTY` for absent arrays); the same results
    bit for bit."""
    with _LAUNCH:
        numba.set_num_threads(threads)
        _multi_parallel(
            w, g, a, b, c, ema, items, spans, n_split, params, host, has_ema
        )


def stream_inplace(buf, threads: int) -> int:
    """Read and rewrite the float32 array `buf` in place over `threads`
    threads (the bandwidth floor of `optsvc bench --threads`)."""
    with _LAUNCH:
        numba.set_num_threads(threads)
        _stream_parallel(buf, np.float32(1.0))
    return threads


def max_threads() -> int:
    """The size of numba's thread pool (NUMBA_NUM_THREADS, default: the
    number of CPUs): no call runs on more threads."""
    return int(numba.config.NUMBA_NUM_THREADS)


def default_threads() -> int:
    """The thread count of a `NumpyOps` not told otherwise: NUMBA_NUM_THREADS,
    else OMP_NUM_THREADS (its first entry), else every CPU numba sees."""
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").split(",")[0].strip()
        if value.isdigit() and int(value) > 0:
            return min(int(value), max_threads())
    return max_threads()


def fused_update(
    w, g, state, ema, *, kind, lr, ema_rate, bc1=0.0, bc2=0.0, host
) -> None:
    """One tensor's update in place (flat float32 arrays); `state` holds the
    kind's arrays and `ema` is None without averages. Same arguments and
    results as `numpy_kernels.fused_update`."""
    fused_positional(
        w, g, *state_arrays(state, ema), int(kind), lr, ema_rate, bc1, bc2, host,
        ema is not None,
    )  # fmt: skip


_PAD = (EMPTY,) * MAX_STATE


def state_arrays(state, ema) -> tuple:
    """The optimizer-state arguments of the compiled kernels: the kind's
    state arrays and the average, `EMPTY` for each one absent (numba takes
    no None)."""
    return (*state, *_PAD[len(state) :], EMPTY if ema is None else ema)


def multi_update(
    w, g, state, ema, offsets, sizes, params, *, host, threads=1, work=None
) -> None:
    """Many tensors' updates in one call. w, g, the arrays of `state` and
    ema are flat buffers; tensor t occupies ``[offsets[t], offsets[t] +
    sizes[t])`` (int64 tables) and is updated with column t of `params` (the
    float32 rows of `ops.TensorParams`), exactly as `fused_update` would
    update it alone. With `threads` > 1, over that many threads, on the work
    items `work` of `chunk_items` (cut here when None); the same results."""
    arrays = (w, g, *state_arrays(state, ema))
    if threads > 1:
        work = chunk_items(offsets, sizes) if work is None else work
        multi_parallel(*arrays, *work, params, host, ema is not None, threads)
    else:
        multi_positional(*arrays, offsets, sizes, params, host, ema is not None)


__all__ = [
    "CHUNK",
    "PARALLEL_MIN",
    "EMPTY",
    "LANES",
    "chunk_items",
    "default_threads",
    "fused_parallel",
    "fused_positional",
    "fused_update",
    "max_threads",
    "multi_parallel",
    "multi_positional",
    "multi_update",
    "state_arrays",
    "stream_inplace",
]
