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
from kernel_reference import NAMES, reference_update

from optsvc.backends import UpdateKind

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


def make_state(total, with_moments, with_ema, seed):
    rng = np.random.default_rng(seed)
    f32 = np.float32
    w = rng.standard_normal(total).astype(f32)
    return {
        "w": w,
        "g": (0.3 * rng.standard_normal(total)).astype(f32),
        "m": (0.05 * rng.standard_normal(total)).astype(f32) if with_moments else None,
        "v": rng.uniform(1e-3, 1e-2, total).astype(f32) if with_moments else None,
        "ema": (w + 0.01 * rng.standard_normal(total)).astype(f32)
        if with_ema
        else None,
    }


def tensor_params(kinds, seed):
    rng = np.random.default_rng(seed)
    n = len(kinds)
    params = np.zeros((3, n), np.float32)
    params[0] = rng.uniform(1e-3, 1e-2, n)  # lr, bias correction folded in
    params[1] = rng.uniform(0.0, 0.5, n)  # averaging rate
    params[2] = kinds
    return params


def run_both(state, offsets, sizes, params, *, exact, layout=None, **shared):
    """multi_update on device copies, reference_update per tensor on host
    copies; compare everything, gaps included; return the new state."""
    ref = {k: None if a is None else a.copy() for k, a in state.items()}
    for t, (start, size) in enumerate(zip(offsets, sizes)):
        part = {
            k: None if a is None else a[start : start + size] for k, a in ref.items()
        }
        kind = int(params[2, t])
        reference_update(
            *(None if kind == UpdateKind.SGD and k in "mv" else part[k] for k in NAMES),
            kind=kind,
            lr=float(params[0, t]),
            ema_rate=float(params[1, t]),
            **shared,
        )
    dev = {k: to_device(a) for k, a in state.items()}
    layout = layout or cm.make_layout(offsets, sizes)
    assert (
        cm.multi_update(
            *(dev[k] for k in NAMES), layout=layout, params=params, **shared
        )
        is None
    )
    got = {k: to_host(a) for k, a in dev.items()}
    for k in NAMES:
        if ref[k] is None:
            continue
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-6, atol=1e-7, err_msg=k)
        if exact:
            np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
    return got


HYPER = dict(b1=0.9, b2=0.999, eps=1e-8)


@pytest.mark.parametrize(
    "kinds",
    [
        [UpdateKind.SGD] * 6,
        [UpdateKind.ADAM] * 6,
        [UpdateKind.ADAM, UpdateKind.MOMENTUM] * 3,
    ],
)
@pytest.mark.parametrize("l2,decay", [(0.0, 0.0), (0.01, 1e-3)])
@pytest.mark.parametrize("with_ema", [False, True], ids=["no_ema", "ema"])
def test_matches_reference_without_clipping(kinds, l2, decay, with_ema):
    offsets, sizes, total = layout_arrays()
    has_moments = any(k != UpdateKind.SGD for k in kinds)
    state = make_state(total, has_moments, with_ema, seed=len(kinds) + int(l2 * 100))
    params = tensor_params(kinds, seed=1)
    run_both(
        state, offsets, sizes, params, exact=SIM, l2=l2, clip=0.0, decay=decay, **HYPER
    )


@pytest.mark.parametrize("l2", [0.0, 0.01])
def test_per_tensor_clipping(l2):
    # The same threshold fires on the tensors with a large gradient and not
    # on the others: each tensor's own norm decides.
    offsets, sizes, total = layout_arrays()
    state = make_state(total, True, True, seed=5)
    for i, (start, size) in enumerate(zip(offsets, sizes)):
        state["g"][start : start + size] *= 10.0 if i % 2 else 0.01
    params = tensor_params([UpdateKind.ADAM, UpdateKind.MOMENTUM] * 3, seed=2)
    run_both(
        state, offsets, sizes, params, exact=False, l2=l2, clip=1.0, decay=1e-3, **HYPER
    )


def test_consecutive_clipped_calls_reuse_the_scratch():
    # Clipped, unclipped and clipped again on one layout: a norm row that is
    # not re-zeroed between clipped calls would give wrong norms later.
    offsets, sizes, total = layout_arrays()
    layout = cm.make_layout(offsets, sizes)
    state = make_state(total, True, True, seed=6)
    params = tensor_params([UpdateKind.ADAM] * 6, seed=3)
    rng = np.random.default_rng(7)
    for clip in (0.5, 0.0, 0.5, 2.0):
        state["g"] = (rng.standard_normal(total) * 0.5).astype(np.float32)
        state = run_both(
            state, offsets, sizes, params, exact=clip == 0.0 and SIM, layout=layout,
            l2=0.0, clip=clip, decay=0.0, **HYPER,
        )  # fmt: skip
    assert not layout.scratch.dirty
    sumsq = layout.scratch.sumsq.copy_to_host()
    n, slot = layout.n_tensors, layout.scratch.slot
    assert (sumsq[slot * n : (slot + 1) * n] == 0).all()


def test_dirty_scratch_is_rezeroed():
    offsets, sizes, total = layout_arrays()
    layout = cm.make_layout(offsets, sizes)
    layout.scratch.sumsq.copy_to_device(np.full(2 * len(sizes), 7.0))  # garbage
    layout.scratch.dirty = True
    state = make_state(total, True, False, seed=8)
    params = tensor_params([UpdateKind.ADAM] * 6, seed=4)
    run_both(
        state, offsets, sizes, params, exact=False, layout=layout,
        l2=0.0, clip=0.5, decay=0.0, **HYPER,
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
    cm.multi_update(
        a, a, None, None, None, layout=layout, params=np.zeros((3, 0), np.float32),
        l2=0.0, clip=1.0, decay=0.0, **HYPER,
    )  # fmt: skip
    np.testing.assert_array_equal(to_host(a), np.ones(4, np.float32))


def test_rejects_bad_arguments():
    layout = cm.make_layout([0, 4], [4, 4])
    a = to_device(np.ones(8, np.float32))
    kw = dict(HYPER, l2=0.0, clip=0.0, decay=0.0)
    params = tensor_params([UpdateKind.SGD, UpdateKind.SGD], seed=0)
    with pytest.raises(ValueError, match="shape"):
        cm.multi_update(
            a, a, None, None, None, layout=layout, params=params[:, :1], **kw
        )
    with pytest.raises(ValueError, match="m and v"):
        adam = tensor_params([UpdateKind.SGD, UpdateKind.ADAM], seed=0)
        cm.multi_update(a, a, None, None, None, layout=layout, params=adam, **kw)
    with pytest.raises(ValueError, match="kind"):
        bad = tensor_params([UpdateKind.SGD, 7], seed=0)
        cm.multi_update(a, a, None, None, None, layout=layout, params=bad, **kw)
    with pytest.raises(ValueError, match="layout needs 8"):
        short = to_device(np.ones(6, np.float32))
        cm.multi_update(
            short, short, None, None, None, layout=layout, params=params, **kw
        )
    with pytest.raises(ValueError, match="non-empty"):
        cm.make_layout([0, 4], [4, 0])
