"""`Optimizer.update_store` (the multi-tensor step) against the per-key call.

The contract: `opt.update_store(store, lr_scale=s)` leaves every number where
calling `opt(key, store.weights(key), store.gradient(key), lr_scale=s)` for
each key in store order leaves it: weights, zeroed gradients, moments,
averages, update counts, RAdam's buffer, the serialized state.

The multi-tensor step runs on each backend of the `ops` fixture (numpy, the
CUDA kernels under the simulator, cupy on a GPU); the per-key calls it is
compared with run on numpy (the simulated per-key kernel is held to the same
numbers in test_cuda_kernels.py, and this keeps the simulator's time down).

Tolerance: on numpy both paths run the same compiled code per tensor (or the
same numpy kernel without numba), so they agree bit for bit. The CUDA kernels
sum the clipping norm in another order (per chunk, then atomically), so with
clipping the float32 norm may differ in its last bit: rtol 1e-6 there. Without
clipping the simulator agrees bit for bit; a real GPU contracts a * b + c into
FMAs, so cupy is compared with rtol 1e-6 throughout.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import to_host

import optsvc
from optsvc import SGD, Adam, RAdam
from optsvc.backends import NumpyOps, get_ops
from optsvc.optim import ParamStore
from optsvc.optim.state import FlatGroup

# Mixed shapes: empty tensors, scalars-as-(1,), sizes around the CPU kernel's
# 64 lanes and the simulator's 64-element chunks, 3-D.
SHAPES = {
    (0, "W"): (3, 4),
    (0, "b"): (0,),
    (1, "W"): (7, 9),
    (1, "b"): (1,),
    "emb": (2, 5, 3),
    (2, "W"): (0, 4),
    (2, "b"): (150,),
    (3, "W"): (64,),
}
KEYS = list(SHAPES)
NONEMPTY = [k for k in KEYS if np.prod(SHAPES[k]) > 0]

OPTIMIZERS = {
    "sgd": lambda clip, avg, **kw: SGD(0.1, grad_clip=clip, use_averages=avg, **kw),
    "adam": lambda clip, avg, **kw: Adam(
        0.01, L2=0.01, grad_clip=clip, use_averages=avg, **kw
    ),
    "radam": lambda clip, avg, **kw: RAdam(
        0.01, weight_decay=0.01, grad_clip=clip, use_averages=avg, **kw
    ),
    "lion": lambda clip, avg, **kw: optsvc.Lion(
        1e-3, weight_decay=0.1, grad_clip=clip, use_averages=avg, **kw
    ),
    "ademamix": lambda clip, avg, **kw: optsvc.AdEMAMix(
        0.01,
        beta3=optsvc.ademamix_beta3_warmup(0.9, 0.999, 4),
        alpha=optsvc.ademamix_alpha_warmup(5.0, 4),
        weight_decay=0.01,
        grad_clip=clip,
        use_averages=avg,
        **kw,
    ),  # fmt: skip
    # Schedule-Free's averages are its evaluation point: always there.
    "sf-adamw": lambda clip, avg, **kw: optsvc.ScheduleFreeAdamW(
        0.01, warmup_steps=2, weight_decay=0.01, r=0.5, grad_clip=clip, **kw
    ),
    "sf-sgd": lambda clip, avg, **kw: optsvc.ScheduleFreeSGD(
        0.1, warmup_steps=2, weight_decay=0.01, grad_clip=clip, **kw
    ),
}
# grad_clip per mode: off, fires (gradient norms are ~1..10), never fires
CLIPS = {"off": 0.0, "fires": 0.5, "idle": 1e4}


@pytest.fixture(autouse=True, scope="module")
def _fast_simulator():
    # As in test_cuda_kernels.py: the simulator's block-wide syncs crawl at
    # the default 5 ms GIL switch interval.
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    yield
    sys.setswitchinterval(old)


def weights(shapes=SHAPES, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.uniform(-1, 1, s).astype(np.float32) for k, s in shapes.items()}


def gradient(step, key, shape):
    rng = np.random.default_rng([step, abs(hash(str(key))) % 2**32])
    return (rng.normal(size=shape) * (0.3, 1.0, 3.0)[step % 3]).astype(np.float32)


def fill_gradients(store, step, keys=None):
    for key in keys or store.keys():
        g = gradient(step, key, store.shape(key))
        store.gradient(key)[...] = store.ops.asarray(g)


def per_key(opt, store, *, lr_scale=1.0, keys=None):
    """The semantics update_store must reproduce: one call per key."""
    for key in keys or store.keys():
        opt(key, store.weights(key), store.gradient(key), lr_scale=lr_scale)


NUMPY = get_ops("numpy")


def exact(ops, clip=1.0):
    return ops.name == "numpy" or (ops.name == "cuda-sim" and clip == 0.0)


def steps_for(ops, n):
    return max(2, n // 2) if ops.name == "cuda-sim" else n


def assert_same(a, b, *, exact_=True, what=""):
    a, b = to_host(a), to_host(b)
    if exact_:
        np.testing.assert_array_equal(a, b, err_msg=what)
    else:
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=what)


def assert_same_optimizers(multi, single, *, exact_=True):
    assert dict(multi.nr_update) == dict(single.nr_update)
    assert list(multi.nr_update) == list(single.nr_update)
    assert multi.state.radam_buffer == single.state.radam_buffer
    tables = {name: (multi.state.view(name), single.state.view(name))
              for name in multi.rule.state}  # fmt: skip
    tables["averages"] = (multi.averages, single.averages)
    for name, (a, b) in tables.items():
        if a is None:
            assert b is None
            continue
        assert list(a) == list(b), name
        for key in a:
            assert a[key].shape == b[key].shape, (name, key)
            assert_same(a[key], b[key], exact_=exact_, what=f"{name}[{key!r}]")


def assert_same_stores(a, b, *, exact_=True):
    assert_same(a.flat_weights, b.flat_weights, exact_=exact_, what="weights")
    assert not to_host(a.flat_gradients).any()
    assert not to_host(b.flat_gradients).any()


def twins(ops, shapes=SHAPES, seed=0, ref_ops=NUMPY):
    """Two stores with the same weights: on `ops`, and on `ref_ops`."""
    arrays = weights(shapes, seed)
    return ParamStore.from_arrays(arrays, ops=ops), ParamStore.from_arrays(
        arrays, ops=ref_ops
    )


# --- the contract, over optimizers, clipping and averages ----------------------


@pytest.mark.parametrize("clip_mode", list(CLIPS))
@pytest.mark.parametrize("kind", list(OPTIMIZERS))
def test_update_store_equals_per_key_calls(ops, kind, clip_mode):
    clip = CLIPS[clip_mode]
    averages = clip_mode != "idle"  # averages on and off, across the matrix
    make = OPTIMIZERS[kind]
    multi, single = make(clip, averages, ops=ops), make(clip, averages, ops=NUMPY)
    store_m, store_s = twins(ops)
    for step in range(steps_for(ops, 6)):
        lr_scale = (1.0, 0.5, 2.0)[step % 3]
        fill_gradients(store_m, step)
        fill_gradients(store_s, step)
        multi.update_store(store_m, lr_scale=lr_scale)
        per_key(single, store_s, lr_scale=lr_scale)
        multi.step_schedules()
        single.step_schedules()
    ok = exact(ops, clip)
    assert_same_stores(store_m, store_s, exact_=ok)
    assert_same_optimizers(multi, single, exact_=ok)
    assert set(multi.nr_update) == set(NONEMPTY)
    if multi.rule.keeps_averages:
        assert (multi.averages is None) == (not averages)
    if ok:
        assert multi.to_bytes() == single.to_bytes()


@pytest.mark.parametrize("wd", [True, False], ids=["weight_decay", "l2_in_grad"])
def test_l2_modes_and_schedules(ops, wd):
    # Every hyperparameter scheduled; L2 as weight decay or into the gradient.
    def make(ops):
        return optsvc.Optimizer(
            optsvc.decaying(0.01, 0.1),
            L2=[0.01, 0.0, 0.02],
            beta1=[0.9, 0.8, 0.85],
            beta2=optsvc.constant_then(0.999, 2, optsvc.constant(0.99)),
            eps=1e-7,
            grad_clip=[0.0, 0.5, 2.0],
            L2_is_weight_decay=wd,
            ops=ops,
        )

    multi, single = make(ops), make(NUMPY)
    store_m, store_s = twins(ops)
    for step in range(steps_for(ops, 4)):
        fill_gradients(store_m, step)
        fill_gradients(store_s, step)
        multi.update_store(store_m, lr_scale=0.7)
        per_key(single, store_s, lr_scale=0.7)
        multi.step_schedules()
        single.step_schedules()
    assert_same_stores(store_m, store_s, exact_=exact(ops))
    assert_same_optimizers(multi, single, exact_=exact(ops))


def test_sgd_then_adam_allocates_moments_late(ops):
    # beta1 = beta2 = 0 at step 0 (SGD: no moments), Adam from step 1 on.
    def make(ops):
        return optsvc.Optimizer(
            0.01, beta1=[0.0, 0.9], beta2=[0.0, 0.999], grad_clip=0.0, ops=ops
        )

    multi, single = make(ops), make(NUMPY)
    store_m, store_s = twins(ops)
    for step in range(3):
        fill_gradients(store_m, step)
        fill_gradients(store_s, step)
        multi.update_store(store_m)
        per_key(single, store_s)
        if step == 0:
            assert multi.mom1 == {} and single.mom1 == {}
        multi.step_schedules()
        single.step_schedules()
    assert_same_stores(store_m, store_s, exact_=exact(ops, 0.0))
    assert_same_optimizers(multi, single, exact_=exact(ops, 0.0))


# --- keys first seen late, state shared with the per-key call -------------------


def test_keys_appearing_late_and_moving_between_stores(ops):
    """Per-key updates first; then a store that adds new keys; then a second
    store that shares some keys (their state moves over) and adds one; then
    the first store again. Every stage equals the per-key calls."""
    part = {k: SHAPES[k] for k in KEYS[:3]}
    extra = {"late": (5, 2), (1, "W"): SHAPES[(1, "W")], (0, "W"): (3, 4)}
    multi, single = Adam(0.01, grad_clip=0.5, ops=ops), Adam(0.01, grad_clip=0.5)
    a_m, a_s = twins(ops)
    b_m, b_s = twins(ops, extra, seed=1)
    p_m, p_s = twins(ops, part, seed=2)

    plan = [("per_key", p_m, p_s), ("store", a_m, a_s), ("store", a_m, a_s)]
    plan += [("store", b_m, b_s), ("store", a_m, a_s), ("per_key", b_m, b_s)]
    plan += [("store", b_m, b_s), ("store", a_m, a_s)]
    for step, (how, store_m, store_s) in enumerate(plan):
        fill_gradients(store_m, step)
        fill_gradients(store_s, step)
        if how == "store":
            multi.update_store(store_m)
        else:
            per_key(multi, store_m)
        per_key(single, store_s)
        multi.step_schedules()
        single.step_schedules()
        assert_same_stores(store_m, store_s, exact_=exact(ops))
        assert_same_optimizers(multi, single, exact_=exact(ops))
    assert multi.nr_update[(0, "W")] == len(plan) and multi.nr_update["late"] == 3


def test_per_key_calls_on_store_keys_share_the_state():
    ops = get_ops("numpy")
    multi, single = RAdam(0.01, ops=ops), RAdam(0.01, ops=ops)
    store_m, store_s = twins(ops)
    for step in range(6):
        fill_gradients(store_m, step)
        fill_gradients(store_s, step)
        if step % 2:
            multi.update_store(store_m)
        else:  # only some keys this step: the counts drift apart per key
            keys = NONEMPTY[step % 3 :: 2]
            per_key(multi, store_m, keys=keys)
            per_key(single, store_s, keys=keys)
            continue
        per_key(single, store_s)
    assert len(set(single.nr_update.values())) > 1  # RAdam saw mixed counts
    assert_same_stores(store_m, store_s)
    assert_same_optimizers(multi, single)
    assert multi.to_bytes() == single.to_bytes()
    group = multi.state.group_for(store_m)
    for key in NONEMPTY:
        # views into the flat buffers, shaped like the parameter
        assert np.shares_memory(multi.mom1[key], group.state[0])
        assert np.shares_memory(multi.mom2[key], group.state[1])
        assert np.shares_memory(multi.averages[key], group.ema)
        assert multi.averages[key].shape == SHAPES[key]


def test_radam_ten_slot_buffer_quirk():
    # Thinc's RAdam memoises its step size by step % 10 across keys. With keys
    # at different counts and beta2 changing, stale memoised values are used;
    # update_store must use exactly the same ones as the per-key loop.
    ops = get_ops("numpy")

    def make():
        return RAdam(0.01, beta2=[0.999, 0.99, 0.9, 0.95], grad_clip=0.0, ops=ops)

    multi, single = make(), make()
    store_m, store_s = twins(ops)
    early = NONEMPTY[:2]
    for step in range(12):
        fill_gradients(store_m, step)
        fill_gradients(store_s, step)
        if step < 11:  # two keys run 11 steps ahead of the others
            per_key(multi, store_m, keys=early)
            per_key(single, store_s, keys=early)
        else:
            multi.update_store(store_m)
            per_key(single, store_s)
        multi.step_schedules()
        single.step_schedules()
    assert multi.state.radam_buffer == single.state.radam_buffer
    assert_same_stores(store_m, store_s)
    assert_same_optimizers(multi, single)


# --- many shapes, no numba, serialization, devices ---------------------------------


@pytest.mark.parametrize("compiled", [True, False], ids=["numba", "numpy"])
def test_many_random_shapes(compiled):
    if compiled:
        pytest.importorskip("numba", exc_type=ImportError)
    ops = NumpyOps(compiled=compiled)
    rng = np.random.default_rng(5)
    shapes = {}
    for i in range(60):
        ndim = int(rng.integers(1, 4))
        dims = rng.integers(0, 9, ndim) if i % 7 == 0 else rng.integers(1, 40, ndim)
        shapes[(i, "W")] = tuple(int(d) for d in dims)
    multi = Adam(0.01, L2=0.001, grad_clip=1.0, ops=ops)
    single = Adam(0.01, L2=0.001, grad_clip=1.0, ops=ops)
    store_m, store_s = twins(ops, shapes)
    for step in range(3):
        fill_gradients(store_m, step)
        fill_gradients(store_s, step)
        multi.update_store(store_m)
        per_key(single, store_s)
    assert_same_stores(store_m, store_s)
    assert_same_optimizers(multi, single)


def test_serialization_round_trips_with_stores():
    ops = get_ops("numpy")
    opt = Adam(optsvc.warmup_linear(0.01, 2, 20), L2=0.01, ops=ops)
    store, twin = twins(ops)
    for step in range(3):
        fill_gradients(store, step)
        opt.update_store(store)
        opt.step_schedules()
    data = opt.to_bytes()
    restored = Adam(optsvc.warmup_linear(0.01, 2, 20), L2=0.01).from_bytes(data)
    assert restored.to_bytes() == data
    twin.flat_weights[...] = store.flat_weights
    for step in range(3, 6):  # both continue with the multi-tensor step
        fill_gradients(store, step)
        fill_gradients(twin, step)
        opt.update_store(store)
        restored.update_store(twin)
        opt.step_schedules()
        restored.step_schedules()
    assert_same_stores(store, twin)
    assert restored.to_bytes() == opt.to_bytes()
    # A restored optimizer's state is laid out afresh for the store.
    assert np.shares_memory(
        restored.mom1[(0, "W")], restored.state.group_for(twin).state[0]
    )


def test_moving_devices_keeps_the_numbers():
    # to_cpu() from another numpy backend object moves every array: the flat
    # state stays behind and the next update_store lays it out again.
    source, target = NumpyOps(), get_ops("numpy")
    multi, single = Adam(0.01, ops=source), Adam(0.01, ops=source)
    store_m, store_s = twins(source)
    for step in range(4):
        if step == 2:
            multi.to_cpu()
            single.to_cpu()
            assert multi.ops is target and multi.state.groups == {}
        fill_gradients(store_m, step)
        fill_gradients(store_s, step)
        multi.update_store(store_m)
        per_key(single, store_s)
    assert_same_stores(store_m, store_s)
    assert_same_optimizers(multi, single)


# --- edges and errors ---------------------------------------------------------------


def test_empty_stores_are_a_no_op(ops):
    opt = Adam(0.01, ops=ops)
    opt.update_store(ParamStore({}, ops=ops))
    opt.update_store(ParamStore({"a": (0,), "b": (2, 0)}, ops=ops))
    assert dict(opt.nr_update) == {} and opt.mom1 == {} and opt.averages == {}


def test_shape_conflict_names_the_key_and_changes_nothing():
    opt = Adam(0.01)
    opt((1, "W"), np.ones((2, 2), "f"), np.ones((2, 2), "f"))
    before = opt.to_bytes()
    store = ParamStore({(0, "W"): (3,), (1, "W"): (4,)})
    with pytest.raises(ValueError, match=r"key \(1, 'W'\).*shape \(2, 2\)"):
        opt.update_store(store)
    assert opt.to_bytes() == before and opt.state.groups == {}


def test_unsupported_betas_name_the_key_and_change_nothing():
    # beta1 reaches 0 at step 1 (at step 0 it would be refused at construction)
    opt = optsvc.Optimizer(0.01, beta1=[0.9, 0.0], beta2=0.9)
    opt.step_schedules()
    store = ParamStore({"e": (0,), "x": (3,)})
    with pytest.raises(ValueError, match=r"'beta1' = 0.*key 'x'"):
        opt.update_store(store)
    assert dict(opt.nr_update) == {} and opt.state.groups == {}


def test_flat_group_runs():
    store = ParamStore({})
    group = FlatGroup(store, get_ops("numpy"), [], [], [])
    assert group.runs(np.array([], np.int64)) == []
    assert group.runs(np.array([3, 3, 3])) == [(0, 3)]
    assert group.runs(np.array([1, 1, 2, 1])) == [(0, 2), (2, 3), (3, 4)]
    assert group.runs(np.array([4, 2, 4])) == [(0, 1), (1, 2), (2, 3)]
