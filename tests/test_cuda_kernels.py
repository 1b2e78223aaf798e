"""Tests of the numba.cuda fused update (optsvc/backends/cuda_kernels.py).

Without a GPU the kernels run under numba's CUDA simulator (switched on in
tests/conftest.py) on numpy arrays; on a GPU with cupy the same cases run on
cupy arrays. Every case, for every update kind, is compared with
``reference_update`` from tests/kernel_reference.py, the plain-numpy
statement of each kind's update order.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

# exc_type=ImportError: also skip when numba is installed but refuses to import
# (e.g. a numpy newer than it supports).
numba = pytest.importorskip(
    "numba",
    reason="numba (in the dev extra) is needed to test the CUDA kernels",
    exc_type=ImportError,
)

from kernel_reference import (  # noqa: E402
    HYPER,
    KINDS,
    NAMES,
    STATE,
    reference_update,
    split,
    state_of,
)

from optsvc.backends import STATE_ARRAYS, UpdateKind  # noqa: E402
from optsvc.backends import cuda_kernels as ck  # noqa: E402

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


def to_device(a):
    if a is None:
        return None
    return a.copy() if SIM else cupy.asarray(a)


def to_host(a):
    if a is None:
        return None
    return a if SIM else cupy.asnumpy(a)


def make_state(rng, n, kind, with_ema):
    f32 = np.float32
    w = rng.standard_normal(n).astype(f32)
    state = {
        "w": w,
        "g": (0.1 * rng.standard_normal(n)).astype(f32),
        **dict.fromkeys(STATE),
        "ema": None,
    }
    for i in range(STATE_ARRAYS[kind]):  # the second is a second moment
        if i == 1:
            state[STATE[i]] = rng.uniform(1e-3, 1e-2, n).astype(f32)
        else:
            state[STATE[i]] = (0.05 * rng.standard_normal(n)).astype(f32)
    if with_ema:
        state["ema"] = (w + 0.01 * rng.standard_normal(n)).astype(f32)
    return state


def clip_value(g, w, l2, mode):
    """A clip threshold that is off, fires (half the norm) or does not (2x)."""
    if mode == "off":
        return 0.0
    geff = g + np.float32(l2) * w
    norm = float(np.sqrt(np.dot(geff.astype(np.float64), geff)))
    return norm * (0.5 if mode == "fires" else 2.0)


def kernel(dev, stream=0, **kw):
    """`ck.fused_update` on a dict of device arrays, `kw` as the reference's."""
    tensor, host = split(kw)
    return ck.fused_update(
        dev["w"], dev["g"], state_of(dev), dev["ema"], host=host, stream=stream,
        **tensor,
    )  # fmt: skip


def step_both(state, *, exact, atol=1e-7, **kw):
    """Run reference and kernel on copies of state; compare; return the new state."""
    ref = {k: None if a is None else a.copy() for k, a in state.items()}
    reference_update(**ref, **kw)
    dev = {k: to_device(a) for k, a in state.items()}
    assert kernel(dev, **kw) is None
    got = {k: to_host(a) for k, a in dev.items()}
    for k in NAMES:
        if ref[k] is None:
            assert got[k] is None
            continue
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-6, atol=atol, err_msg=k)
        if exact:
            # Under the simulator the float32 arithmetic is the reference's,
            # op for op: any silent float64 promotion would show up here.
            np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
    assert (got["g"] == 0).all()
    return got


@pytest.mark.parametrize("n", [1, 257, 700])
@pytest.mark.parametrize("with_ema", [False, True], ids=["no_ema", "ema"])
@pytest.mark.parametrize("decay", [0.0, 1e-3])
@pytest.mark.parametrize("clip_mode", ["off", "fires", "no_fire"])
@pytest.mark.parametrize("l2", [0.0, 0.01])
@pytest.mark.parametrize("kind", list(KINDS.values()), ids=list(KINDS))
def test_matches_reference(kind, l2, clip_mode, decay, with_ema, n):
    seed = [kind, int(l2 * 100), len(clip_mode), int(decay * 1e3), with_ema, n]
    rng = np.random.default_rng(seed)
    state = make_state(rng, n, kind, with_ema)
    clip = clip_value(state["g"], state["w"], l2, clip_mode)
    step_both(state, exact=SIM, kind=kind, l2=l2, clip=clip, decay=decay, **HYPER)


@pytest.mark.parametrize("kind", list(KINDS.values()), ids=list(KINDS))
def test_consecutive_steps_carry_state(kind):
    # Alternates clipped and unclipped steps with new gradients, so a scratch
    # slot that is not re-zeroed between clipped calls would show up as a wrong
    # norm in a later step.
    rng = np.random.default_rng(100 + kind)
    n = 300
    state = make_state(rng, n, kind, with_ema=True)
    for t in range(6):
        state["g"] = (0.1 * rng.standard_normal(n)).astype(np.float32)
        mode = ["fires", "fires", "off", "no_fire", "fires", "fires"][t]
        clip = clip_value(state["g"], state["w"], 1e-2, mode)
        kw = dict(HYPER, ema_rate=1.0 - (1 + t) / (10 + t))
        state = step_both(
            state, exact=SIM, kind=kind, l2=1e-2, clip=clip, decay=1e-3, **kw
        )


def _clipped_call(rng, n=40):
    state = make_state(rng, n, UpdateKind.ADAM, with_ema=False)
    clip = clip_value(state["g"], state["w"], 0.0, "fires")
    return step_both(
        state, exact=False, kind=UpdateKind.ADAM, l2=0.0, clip=clip, decay=0.0, **HYPER
    )


def _default_stream_scratch():
    return ck._scratch[(ck._device(ck._loaded)[0], 0)]


def test_scratch_buffer_is_reused():
    rng = np.random.default_rng(7)
    _clipped_call(rng)
    sc = _default_stream_scratch()
    n_scratch, n_devices = len(ck._scratch), len(ck._devices)
    for _ in range(4):
        _clipped_call(rng)
    assert _default_stream_scratch() is sc
    assert (len(ck._scratch), len(ck._devices)) == (n_scratch, n_devices)
    assert sc.sumsq.shape == (2,)
    assert not sc.dirty
    # The slot the next clipped call accumulates into is already zero.
    assert sc.sumsq.copy_to_host()[sc.slot] == 0.0


def test_dirty_scratch_is_rezeroed():
    rng = np.random.default_rng(8)
    _clipped_call(rng)
    sc = _default_stream_scratch()
    sc.sumsq.copy_to_device(np.array([5.0, 7.0]))  # as after a failed launch
    sc.dirty = True
    _clipped_call(rng)  # compares with the reference: the garbage is not used
    assert not sc.dirty


def test_external_stream():
    rng = np.random.default_rng(9)
    n = 50
    state = make_state(rng, n, UpdateKind.MOMENTUM, with_ema=True)
    clip = clip_value(state["g"], state["w"], 0.0, "fires")
    kw = dict(HYPER, kind=UpdateKind.MOMENTUM, l2=0.0, clip=clip, decay=0.0)
    ref = {k: None if a is None else a.copy() for k, a in state.items()}
    reference_update(**ref, **kw)
    if SIM:
        stream = ck.external_stream(0)
        dev = {k: to_device(a) for k, a in state.items()}
        kernel(dev, stream=stream, **kw)
    else:
        cupy_stream = cupy.cuda.Stream(non_blocking=True)
        with cupy_stream:
            dev = {k: to_device(a) for k, a in state.items()}
            stream = ck.external_stream(cupy_stream.ptr)
            kernel(dev, stream=stream, **kw)
            cupy_stream.synchronize()
            assert any(key[1] == cupy_stream.ptr for key in ck._scratch)
    for k in NAMES:
        if ref[k] is not None:
            np.testing.assert_allclose(to_host(dev[k]), ref[k], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", list(KINDS.values()), ids=list(KINDS))
def test_branches_follow_host_values(kind):
    # l2, clip and decay so small that they round to 0 in float32 must still
    # take the reference's branches (clip then zeroes the gradient: norm >= 0).
    # The second, ordinary clipped step checks the scratch slot was re-zeroed.
    rng = np.random.default_rng(11 + kind)
    state = make_state(rng, 33, kind, with_ema=True)
    tiny = dict(HYPER, kind=kind, l2=1e-50, clip=1e-50, decay=1e-50)
    state = step_both(state, exact=SIM, **tiny)
    state["g"] = (0.1 * rng.standard_normal(33)).astype(np.float32)
    clip = clip_value(state["g"], state["w"], 0.0, "fires")
    kw = dict(HYPER, kind=kind, l2=0.0, clip=clip, decay=0.0)
    step_both(state, exact=SIM, **kw)


# The simulator's threads do not inherit np.errstate: NaN / inf warn there.
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("kind", list(KINDS.values()), ids=list(KINDS))
def test_non_finite_gradients_propagate_like_the_reference(kind):
    rng = np.random.default_rng(12)
    state = make_state(rng, 20, kind, with_ema=True)
    state["g"][3] = np.nan
    state["g"][7] = np.inf
    kw = dict(HYPER, kind=kind, l2=0.01, clip=1.0, decay=1e-3)
    with np.errstate(invalid="ignore", over="ignore"):
        step_both(state, exact=SIM, **kw)


def test_empty_arrays_are_a_no_op():
    e = to_device(np.zeros(0, np.float32))
    dev = {"w": e, "g": e, "s0": e, "s1": e, "s2": e, "ema": e}
    kernel(dev, **dict(HYPER, kind=UpdateKind.ADEMAMIX, l2=0.1, clip=1.0, decay=0.1))


def test_rejects_bad_arguments():
    a = to_device(np.ones(4, np.float32))
    tensor, host = split(dict(HYPER, kind=0, l2=0.0, clip=0.0, decay=0.0))
    kw = dict(tensor, host=host)
    kw.pop("kind")
    with pytest.raises(ValueError, match="kind"):
        ck.fused_update(a, a, (), None, kind=7, **kw)
    with pytest.raises(ValueError, match="keeps 2 state arrays"):
        ck.fused_update(a, a, (), None, kind=UpdateKind.ADAM, **kw)
    with pytest.raises(ValueError, match="keeps 3 state arrays"):
        ck.fused_update(a, a, (a, a, None), None, kind=UpdateKind.ADEMAMIX, **kw)
    with pytest.raises(TypeError, match="float32"):
        b = to_device(np.ones(4, np.float64))
        ck.fused_update(a, b, (), None, kind=UpdateKind.SGD, **kw)
    with pytest.raises(TypeError, match="float32"):
        b = to_device(np.ones(4, np.float64))
        ck.fused_update(a, a, (b,), None, kind=UpdateKind.LION, **kw)
    with pytest.raises(ValueError, match="size"):
        b = to_device(np.ones(5, np.float32))
        ck.fused_update(a, b, (), None, kind=UpdateKind.SGD, **kw)
    with pytest.raises(ValueError, match="contiguous"):
        b = to_device(np.ones(8, np.float32))[::2]
        ck.fused_update(a, b, (), None, kind=UpdateKind.SGD, **kw)


def test_module_imports_without_numba():
    # optsvc must import without numba: the kernels module imports it lazily,
    # and only on first use, where its absence is a clear ImportError.
    code = """
import sys
import numpy as np
import optsvc.backends.cuda_kernels as ck
import optsvc.backends.cuda_multi
from optsvc.backends import HostStep, UpdateKind
assert "numba" not in sys.modules, "importing the CUDA kernels imported numba"
sys.modules["numba"] = None  # make numba unimportable from here on
a = np.zeros(3, np.float32)
try:
    ck.fused_update(a, a.copy(), (), None, kind=UpdateKind.SGD, lr=0.1, ema_rate=0.0,
                    host=HostStep().array())
except ImportError as exc:
    assert "numba" in str(exc), exc
else:
    raise AssertionError("expected ImportError without numba")
"""
    root = Path(ck.__file__).resolve().parents[2]
    paths = [str(root), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


def _f32_arrays(n, lo, hi):
    lo, hi = float(np.float32(lo)), float(np.float32(hi))
    return hnp.arrays(np.float32, n, elements=st.floats(lo, hi, width=32))


@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_property_matches_reference(data):
    n = data.draw(st.integers(1, 40), label="n")
    kind = data.draw(st.sampled_from(list(KINDS.values())), label="kind")
    with_ema = data.draw(st.booleans(), label="with_ema")
    state = {
        "w": data.draw(_f32_arrays(n, -2, 2), label="w"),
        "g": data.draw(_f32_arrays(n, -2, 2), label="g"),
        **dict.fromkeys(STATE),
        "ema": data.draw(_f32_arrays(n, -2, 2), label="ema") if with_ema else None,
    }
    for i in range(STATE_ARRAYS[kind]):
        low = 1e-2 if i == 1 else -1  # the second is a second moment
        state[STATE[i]] = data.draw(_f32_arrays(n, low, 1), label=STATE[i])
    l2 = data.draw(st.sampled_from([0.0, 1e-3, 0.05]), label="l2")
    clip_mode = data.draw(st.sampled_from(["off", "fires", "no_fire"]), label="clip")
    weight = st.floats(0.0, 1.0)  # a lerp's: both of its forms
    kw = dict(
        kind=kind,
        lr=data.draw(st.floats(1e-4, 1e-2), label="lr"),
        b1=data.draw(st.floats(0.5, 0.99), label="b1"),
        b2=data.draw(st.floats(0.9, 0.9999), label="b2"),
        eps=1e-8,
        l2=l2,
        clip=clip_value(state["g"], state["w"], l2, clip_mode),
        decay=data.draw(st.sampled_from([0.0, 1e-4, 1e-2]), label="decay"),
        ema_rate=data.draw(st.floats(0.0, 1.0), label="ema_rate"),
        bc1=data.draw(st.floats(0.05, 1.0), label="bc1"),
        bc2=data.draw(st.floats(0.02, 1.0), label="bc2"),
        to_g1=data.draw(weight, label="to_g1"),
        to_g2=data.draw(weight, label="to_g2"),
        to_z=data.draw(weight, label="to_z"),
        alpha=data.draw(st.floats(0.0, 8.0), label="alpha"),
        y_step=data.draw(st.floats(-0.01, 0.0), label="y_step"),
    )
    # On a GPU, NVVM fuses a * b + c into FMAs: about one float32 ulp away from
    # the reference, which can exceed atol=1e-7 where ema - r * (ema - w)
    # cancels with |ema - w| up to 4. The simulator matches bit for bit.
    step_both(state, exact=False, atol=1e-7 if SIM else 5e-7, **kw)
