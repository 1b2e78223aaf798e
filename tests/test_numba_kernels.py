"""The numba CPU kernels (optsvc/backends/numba_kernels.py) against the plain
reference, and how NumpyOps chooses between them and the numpy kernel.

Without clipping the compiled kernel must equal ``reference_update`` bit for
bit (fastmath off: no FMA contraction, no reassociation, float32 throughout).
With clipping the only difference is the float64 summation order of the norm,
so the float32 norm agrees to within one ulp (and in practice exactly).
"""

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from kernel_reference import (
    HYPER,
    KINDS,
    NAMES,
    call,
    copy_state,
    random_state,
    reference_update,
    split,
    state_of,
)

pytest.importorskip(
    "numba", reason="numba (the fast extra) is not installed", exc_type=ImportError
)

from optsvc.backends import (  # noqa: E402
    FlatLayout,
    NumpyOps,
    TensorParams,
    UpdateKind,
    numba_kernels,
)

SIZES = [
    1,
    7,
    numba_kernels.LANES - 1,
    numba_kernels.LANES,
    numba_kernels.LANES + 1,
    1000,
]
CASES = list(
    itertools.product(
        KINDS,
        [0.0, 0.01],  # l2 into the gradient
        ["off", "fires", "idle"],  # clipping
        [0.0, 1e-3],  # weight decay
        [False, True],  # averages
    )
)


def clip_for(arrays, l2, mode):
    if mode == "off":
        return 0.0
    g = arrays["g"] + np.float32(l2) * arrays["w"]
    norm = float(np.sqrt(np.dot(g.astype(np.float64), g)))
    return norm * (0.5 if mode == "fires" else 2.0)


@pytest.mark.parametrize("kind,l2,clip_mode,decay,averages", CASES)
def test_matches_reference(kind, l2, clip_mode, decay, averages):
    for n in SIZES:
        ours = random_state(n, KINDS[kind], averages, seed=n)
        ref = copy_state(ours)
        clip = clip_for(ours, l2, clip_mode)
        hyper = dict(HYPER, kind=KINDS[kind], l2=l2, clip=clip, decay=decay)
        for step in range(2):  # state carried across steps
            ours["g"][:] = ref["g"][:] = np.float32(0.3 + step) * ours["w"] + 1
            call(numba_kernels.fused_update, ours, **hyper)
            reference_update(**ref, **hyper)
        for name in NAMES:
            if ours[name] is None:
                continue
            if clip_mode == "fires":
                np.testing.assert_allclose(
                    ours[name], ref[name], rtol=1e-6, atol=1e-7, err_msg=name
                )
            else:
                np.testing.assert_array_equal(ours[name], ref[name], err_msg=name)
        assert not ours["g"].any()


@pytest.mark.parametrize("kind", list(KINDS.values()), ids=list(KINDS))
def test_branches_follow_host_values(kind):
    # l2, clip and decay that round to 0 in float32 still take the
    # reference's branches (clip then zeroes the gradient: norm >= 0).
    ours = random_state(33, kind, True)
    ref = copy_state(ours)
    hyper = dict(HYPER, kind=kind, l2=1e-50, clip=1e-50, decay=1e-50)
    call(numba_kernels.fused_update, ours, **hyper)
    reference_update(**ref, **hyper)
    for name in NAMES:
        np.testing.assert_array_equal(ours[name], ref[name], err_msg=name)


@pytest.mark.parametrize("kind", list(KINDS.values()), ids=list(KINDS))
def test_non_finite_values_propagate_like_the_reference(kind):
    ours = random_state(100, kind, True)
    ours["g"][3], ours["g"][70], ours["w"][5] = np.nan, np.inf, -np.inf
    ref = copy_state(ours)
    hyper = dict(HYPER, kind=kind, l2=0.01, clip=0.0, decay=1e-3)
    with np.errstate(invalid="ignore", over="ignore"):
        call(numba_kernels.fused_update, ours, **hyper)
        reference_update(**ref, **hyper)
    for name in NAMES:
        np.testing.assert_array_equal(ours[name], ref[name], err_msg=name)


def test_norm_is_float64_in_a_fixed_order():
    rng = np.random.default_rng(3)
    g = rng.standard_normal(1000).astype(np.float32)
    w = rng.standard_normal(1000).astype(np.float32)
    flags = 1 | 2  # L2 and clip
    ours = numba_kernels._sumsq(g[10:990], w[10:990], np.float32(0.01), flags)
    x = (g + np.float32(0.01) * w)[10:990].astype(np.float64)
    assert ours == pytest.approx(float(np.dot(x, x)), rel=1e-14)
    # the same order wherever the tensor starts (a view into a flat buffer)
    shifted = np.concatenate([np.zeros(5, np.float32), g])
    w_shifted = np.concatenate([np.zeros(5, np.float32), w])
    again = numba_kernels._sumsq(
        shifted[15:995], w_shifted[15:995], np.float32(0.01), flags
    )
    assert again == ours


@pytest.mark.parametrize("kind", list(KINDS.values()), ids=list(KINDS))
def test_multi_update_equals_one_call_per_tensor(kind):
    sizes = [5, 0, 130, 1, 64, 300]
    offsets = np.cumsum([0, *sizes[:-1]])
    flat = random_state(sum(sizes), kind, True, seed=kind)
    ref = copy_state(flat)
    nonempty = [i for i, s in enumerate(sizes) if s]
    params = TensorParams(len(nonempty))
    params.lr[:] = [0.01 * (i + 1) for i in range(len(nonempty))]
    params.ema_rate[:] = [0.1 / (i + 1) for i in range(len(nonempty))]
    params.kind[:] = kind
    params.bc1[:] = [1 - 0.9 ** (i + 1) for i in range(len(nonempty))]
    params.bc2[:] = [(1 - 0.99 ** (i + 1)) ** 0.5 for i in range(len(nonempty))]
    _, host = split(dict(HYPER, kind=kind, l2=0.01, clip=3.0, decay=1e-3))
    numba_kernels.multi_update(
        flat["w"], flat["g"], state_of(flat), flat["ema"], offsets[nonempty],
        np.array(sizes)[nonempty], params.packed, host=host,
    )  # fmt: skip
    for t, i in enumerate(nonempty):
        part = {
            k: None if a is None else a[offsets[i] : offsets[i] + sizes[i]]
            for k, a in ref.items()
        }
        column = dict(zip(params.ROWS, params.packed[:, t].tolist()))
        column["kind"] = kind
        numba_kernels.fused_update(
            part["w"], part["g"], state_of(part), part["ema"], host=host, **column
        )
    for name in NAMES:
        if flat[name] is not None:
            np.testing.assert_array_equal(flat[name], ref[name], err_msg=name)


def test_numpy_ops_uses_the_compiled_kernel_and_falls_back():
    assert NumpyOps().compiled is True
    assert NumpyOps(compiled=False).compiled is False
    # Both backends give the reference's numbers without clipping.
    results = []
    for kind in KINDS.values():
        for ops in (NumpyOps(), NumpyOps(compiled=False)):
            arrays = random_state(5000, kind, True, seed=9)
            call(ops.fused_update, arrays, **dict(HYPER, kind=kind, l2=0.01,
                                                 clip=0.0, decay=1e-3))  # fmt: skip
            results.append(arrays)
        for name in NAMES:
            if results[-1][name] is not None:
                np.testing.assert_array_equal(results[-2][name], results[-1][name])
    # And the multi-tensor entry point of the fallback loops over tensors.
    layout = FlatLayout([0, 10], [10, 20])
    params = TensorParams(2)
    params.lr[:] = 0.1
    params.kind[:] = [UpdateKind.SGD, UpdateKind.LION]
    _, host = split(dict(kind=0, to_g1=0.1, to_g2=0.01))
    flat = [random_state(30, UpdateKind.LION, False, seed=1) for _ in range(2)]
    for ops, arrays in zip((NumpyOps(), NumpyOps(compiled=False)), flat):
        ops.multi_update(
            arrays["w"], arrays["g"], state_of(arrays), None, layout=layout,
            params=params, host=host,
        )  # fmt: skip
    np.testing.assert_array_equal(flat[0]["w"], flat[1]["w"])
    np.testing.assert_array_equal(flat[0]["s0"], flat[1]["s0"])


def _run(code: str, **env) -> subprocess.CompletedProcess:
    root = Path(numba_kernels.__file__).resolve().parents[2]
    paths = [str(root), os.environ.get("PYTHONPATH", "")]
    full_env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], env=full_env, capture_output=True, text=True
    )


def test_numba_is_imported_on_the_first_update_not_before():
    code = """
import sys
import numpy as np
import optsvc
opt = optsvc.Adam(0.01)
assert "numba" not in sys.modules
from optsvc.backends import numba_kernels
assert numba_kernels.fused_positional.signatures == [], "compiled at import"
opt((0, "W"), np.ones(3, "f"), np.ones(3, "f"))
assert numba_kernels.fused_positional.signatures, "the first update did not use numba"
"""
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("how", ["env", "missing"])
def test_without_numba_the_numpy_kernel_is_used(how):
    code = """
import sys
import numpy as np
if sys.argv[-1] == "missing":
    sys.modules["numba"] = None  # numba cannot be imported
from optsvc.backends import NumpyOps
ops = NumpyOps()
assert ops.compiled is False
import optsvc
opt = optsvc.Adam(0.01, ops=ops)
opt((0, "W"), np.ones(3, "f"), np.ones(3, "f"))
try:
    NumpyOps(compiled=True).compiled
except ImportError as exc:
    assert "optsvc[fast]" in str(exc)
else:
    raise AssertionError("compiled=True without numba must fail")
"""
    env = {"OPTSVC_NO_NUMBA": "1"} if how == "env" else {}
    proc = _run(code.replace("sys.argv[-1]", repr(how)), **env)
    assert proc.returncode == 0, proc.stderr
