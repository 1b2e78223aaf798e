"""The multi-tensor numba.cuda kernels (`cuda_multi.multi_update`): the
chunk table, per-tensor norms and clipping, per-tensor learning rates,
averaging rates and kinds, all against `reference_update` tensor by tensor.

As in test_cuda_kernels.py, without a GPU the kernels run under numba's CUDA
simulator on numpy arrays; with a GPU, on cupy arrays. The norms are summed
per chunk and then atomically, in another order than the reference's dot, so
clipped tensors are compared to rtol 1e-6; the rest bit for bit under the
simulator.
"""

import numpy as np
import pytest
from kernel_reference import HYPER, STATE, reference_update, split, state_of

from optsvc.backends import STATE_ARRAYS, TensorParams, UpdateKind

numba = pytest.importorskip(
    "numba",
    reason="numba (in the dev extra) is needed to test the CUDA kernels",
    exc_type=ImportError,
)

from optsvc.backends import cuda_kernels as ck  # noqa: E402
from optsvc.backends import cuda_multi as cm  # noqa: E402

SIM = bool(numba.config.ENABLE_CUDASIM)
if SIM:
    cupy = None
else:
    cupy = pytest.importorskip(
        "cupy", reason="CUDA simulator is off and cupy is missing: no arrays to use"
    )
    if not numba.cuda.is_available():
        pytest.skip(
            "CUDA simulator is off and no GPU is usable", allow_module_level=True
        )

# Sizes cross the simulator's 64-element chunks (and leave gaps: a store's
# empty tensors have no entry, and the layout need not cover the buffer).
SIZES = [5, 150, 64, 1, 65, 30]
GAP = 3


def to_device(a):
    if a is None:
        return None
    return a.copy() if SIM else cupy.asarray(a)


def to_host(a):
    if a is None:
        return None
    return a if SIM else cupy.asnumpy(a)


def layout_arrays(sizes=SIZES):
    offsets = np.cumsum([0] + [s + GAP for s in sizes[:-1]])
    return offsets, np.array(sizes), int(offsets[-1] + sizes[-1] + GAP)


def make_state(total, n_state, with_ema, seed):
    rng = np.random.default_rng(seed)
    f32 = np.float32
    w = rng.standard_normal(total).astype(f32)
    state = {
        "w": w,
        "g": (0.3 * rng.standard_normal(total)).astype(f32),
        **dict.fromkeys(STATE),
        "ema": (w + 0.01 * rng.standard_normal(total)).astype(f32)
        if with_ema
        else None,
    }
    for i in range(n_state):  # the second is a second moment
        if i == 1:
            state[STATE[i]] = rng.uniform(1e-3, 1e-2, total).astype(f32)
        else:
            state[STATE[i]] = (0.05 * rng.standard_normal(total)).astype(f32)
    return state


def tensor_params(kinds, seed):
    rng = np.random.default_rng(seed)
    n = len(kinds)
    params = TensorParams(n)
    params.lr[:] = rng.uniform(1e-3, 1e-2, n)  # lr, bias correction folded in
    params.ema_rate[:] = rng.uniform(0.0, 0.5, n)  # averaging rate
    params.kind[:] = kinds
    params.bc1[:] = rng.uniform(0.1, 1.0, n)
    params.bc2[:] = rng.uniform(0.03, 1.0, n)
    return params.packed


def n_state(kinds):
    return max(STATE_ARRAYS[int(k)] for k in kinds)


def run_both(state, offsets, sizes, params, *, exact, layout=None, **shared):
    """multi_update on device copies, reference_update per tensor on host
    copies; compare everything, gaps included; return the new state."""
    ref = {k: None if a is None else a.copy() for k, a in state.items()}
    for t, (start, size) in enumerate(zip(offsets, sizes)):
        part = {
            k: None if a is None else a[start : start + size] for k, a in ref.items()
        }
        column = dict(zip(TensorParams.ROWS, params[:, t].tolist()))
        column["kind"] = kind = int(column["kind"])
        for name in STATE[STATE_ARRAYS[kind] :]:  # what the kind does not keep
            part[name] = None
        reference_update(**part, **column, **shared)
    dev = {k: to_device(a) for k, a in state.items()}
    layout = layout or cm.make_layout(offsets, sizes)
    _, host = split(dict(shared, kind=0))
    assert (
        cm.multi_update(
            dev["w"],
            dev["g"],
            state_of(dev),
            dev["ema"],
            layout=layout,
            params=params,
            host=host,
        )
        is None
    )
    got = {k: to_host(a) for k, a in dev.items()}
    for k in ref:
        if ref[k] is None:
            continue
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-6, atol=1e-7, err_msg=k)
        if exact:
            np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
    return got


# The call's shared scalars, as the reference takes them.
SHARED = {k: v for k, v in HYPER.items() if k not in TensorParams.ROWS}


@pytest.mark.parametrize(
    "kinds",
    [
        [UpdateKind.SGD] * 6,
        [UpdateKind.ADAM] * 6,
        [UpdateKind.ADAM, UpdateKind.MOMENTUM] * 3,
        [UpdateKind.LION] * 6,
        [UpdateKind.ADEMAMIX] * 6,
        [UpdateKind.SCHEDULE_FREE_ADAMW, UpdateKind.SCHEDULE_FREE_SGD] * 3,
        [*UpdateKind][:6],
    ],
    ids=["sgd", "adam", "adam-momentum", "lion", "ademamix", "schedule-free", "mixed"],
)
@pytest.mark.parametrize("l2,decay", [(0.0, 0.0), (0.01, 1e-3)])
@pytest.mark.parametrize("with_ema", [False, True], ids=["no_ema", "ema"])
def test_matches_reference_without_clipping(kinds, l2, decay, with_ema):
    offsets, sizes, total = layout_arrays()
    seed = len(kinds) + int(l2 * 100)
    state = make_state(total, n_state(kinds), with_ema, seed=seed)
    params = tensor_params(kinds, seed=1)
    run_both(
        state, offsets, sizes, params, exact=SIM, l2=l2, clip=0.0, decay=decay, **SHARED
    )


@pytest.mark.parametrize("l2", [0.0, 0.01])
def test_per_tensor_clipping(l2):
    # The same threshold fires on the tensors with a large gradient and not
    # on the others: each tensor's own norm decides.
    offsets, sizes, total = layout_arrays()
    state = make_state(total, 3, True, seed=5)
    for i, (start, size) in enumerate(zip(offsets, sizes)):
        state["g"][start : start + size] *= 10.0 if i % 2 else 0.01
    kinds = [UpdateKind.ADAM, UpdateKind.LION, UpdateKind.ADEMAMIX] * 2
    params = tensor_params(kinds, seed=2)
    run_both(
        state,
        offsets,
        sizes,
        params,
        exact=False,
        l2=l2,
        clip=1.0,
        decay=1e-3,
        **SHARED,
    )


def test_consecutive_clipped_calls_reuse_the_scratch():
    # Clipped, unclipped and clipped again on one layout: a norm row that is
    # not re-zeroed between clipped calls would give wrong norms later.
    offsets, sizes, total = layout_arrays()
    layout = cm.make_layout(offsets, sizes)
    state = make_state(total, 2, True, seed=6)
    params = tensor_params([UpdateKind.ADAM] * 6, seed=3)
    rng = np.random.default_rng(7)
    for clip in (0.5, 0.0, 0.5, 2.0):
        state["g"] = (rng.standard_normal(total) * 0.5).astype(np.float32)
        state = run_both(
            state,
            offsets,
            sizes,
            params,
            exact=clip == 0.0 and SIM,
            layout=layout,
            l2=0.0,
            clip=clip,
            decay=0.0,
            **SHARED,
        )
    assert not layout.scratch.dirty
    sumsq = layout.scratch.sumsq.copy_to_host()
    n, slot = layout.n_tensors, layout.scratch.slot
    assert (sumsq[slot * n : (slot + 1) * n] == 0).all()


def test_dirty_scratch_is_rezeroed():
    offsets, sizes, total = layout_arrays()
    layout = cm.make_layout(offsets, sizes)
    layout.scratch.sumsq.copy_to_device(np.full(2 * len(sizes), 7.0))  # garbage
    layout.scratch.dirty = True
    state = make_state(total, 2, False, seed=8)
    params = tensor_params([UpdateKind.ADAM] * 6, seed=4)
    run_both(
        state, offsets, sizes, params, exact=False, layout=layout,
        l2=0.0, clip=0.5, decay=0.0, **SHARED,
    )  # fmt: skip
    assert not layout.scratch.dirty


def test_chunk_table():
    offsets, sizes, _ = layout_arrays()
    layout = cm.make_layout(offsets, sizes)
    chunk = ck._loaded["chunk"]
    tensor = np.asarray(layout.chunk_tensor.copy_to_host())
    start = np.asarray(layout.chunk_start.copy_to_host())
    stop = np.asarray(layout.chunk_stop.copy_to_host())
    assert (stop - start <= chunk).all() and (stop > start).all()
    for t, (offset, size) in enumerate(zip(offsets, sizes)):
        mine = tensor == t
        covered = np.concatenate(
            [np.arange(a, b) for a, b in zip(start[mine], stop[mine])]
        )
        np.testing.assert_array_equal(covered, np.arange(offset, offset + size))


def test_empty_layout_is_a_no_op():
    layout = cm.make_layout([], [])
    a = to_device(np.ones(4, np.float32))
    _, host = split(dict(SHARED, kind=0, clip=1.0))
    cm.multi_update(
        a, a, (), None, layout=layout, params=TensorParams(0).packed, host=host
    )
    np.testing.assert_array_equal(to_host(a), np.ones(4, np.float32))


def test_rejects_bad_arguments():
    layout = cm.make_layout([0, 4], [4, 4])
    a = to_device(np.ones(8, np.float32))
    _, host = split(dict(SHARED, kind=0, l2=0.0, clip=0.0, decay=0.0))
    kw = dict(layout=layout, host=host)
    params = tensor_params([UpdateKind.SGD, UpdateKind.SGD], seed=0)
    with pytest.raises(ValueError, match="shape"):
        cm.multi_update(a, a, (), None, params=params[:, :1], **kw)
    with pytest.raises(ValueError, match="keeps 2 state arrays"):
        adam = tensor_params([UpdateKind.SGD, UpdateKind.ADAM], seed=0)
        cm.multi_update(a, a, (), None, params=adam, **kw)
    with pytest.raises(ValueError, match="keeps 3 state arrays"):
        mixed = tensor_params([UpdateKind.ADEMAMIX, UpdateKind.ADAM], seed=0)
        cm.multi_update(a, a, (a, a), None, params=mixed, **kw)
    with pytest.raises(ValueError, match="kind"):
        bad = tensor_params([UpdateKind.SGD, 7], seed=0)
        cm.multi_update(a, a, (), None, params=bad, **kw)
    with pytest.raises(ValueError, match="layout needs 8"):
        short = to_device(np.ones(6, np.float32))
        cm.multi_update(short, short, (), None, params=params, **kw)
    with pytest.raises(ValueError, match="non-empty"):
        cm.make_layout([0, 4], [4, 0])
