"""Array backends: selection, context, and the GPU entry points without a GPU."""

import subprocess
import sys

import numpy as np
import pytest

import optsvc
from optsvc.backends import (
    NumpyOps,
    get_array_ops,
    get_current_ops,
    get_ops,
    has_cupy,
    use_ops,
)


def test_numpy_is_the_default():
    ops = get_current_ops()
    assert isinstance(ops, NumpyOps) and ops.xp is np


def test_use_ops_is_scoped():
    custom = NumpyOps()
    with use_ops(custom) as ops:
        assert get_current_ops() is ops is custom
    assert get_current_ops() is not custom


def test_backend_is_chosen_from_the_array():
    assert isinstance(get_array_ops(np.zeros(3, dtype="f")), NumpyOps)


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="numpy.*cupy"):
        get_ops("tpu")


@pytest.mark.skipif(has_cupy(), reason="checks the message shown without cupy")
def test_require_gpu_without_cupy_says_how_to_install():
    with pytest.raises(RuntimeError, match=r"pip install 'optsvc\[cuda13\]'"):
        optsvc.require_gpu(0)
    assert optsvc.prefer_gpu(0) is False
    assert isinstance(get_current_ops(), NumpyOps)


def test_cupy_is_imported_in_exactly_one_module():
    import pathlib

    root = pathlib.Path(optsvc.__file__).parent
    importers = sorted(
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if "import cupy" in p.read_text()
    )
    assert importers == ["backends/cupy_ops.py"]


def test_importing_optsvc_does_not_import_numba():
    code = "import optsvc, sys; assert 'numba' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_optimizer_state_follows_the_ops_argument(ops):
    opt = optsvc.Adam(0.01, ops=ops)
    w, g = ops.asarray(np.ones(8, "f")), ops.asarray(np.ones(8, "f"))
    opt((1, "W"), w, g)
    assert opt.ops is ops
    assert ops.owns(opt.mom1[(1, "W")]) and ops.owns(opt.averages[(1, "W")])


def test_the_simulated_gpu_backend_is_the_shipped_dispatch():
    # CI has no GPU: the tests run CudaKernelOps, the dispatch CupyOps ships,
    # on numpy under numba's CUDA simulator. Neither class may carry its own
    # copy of the kernel dispatch.
    from conftest import SimulatedGpuOps

    from optsvc.backends import CudaKernelOps, CupyOps

    dispatch = {"fused_update", "make_layout", "multi_update"}
    assert issubclass(CupyOps, CudaKernelOps)
    assert issubclass(SimulatedGpuOps, CudaKernelOps)
    assert not dispatch & set(vars(CupyOps))
    own = {name for name in vars(SimulatedGpuOps) if not name.startswith("__")}
    assert own == {"name"}


def test_update_kinds_keep_the_numbers_the_kernels_read():
    from optsvc.backends import UpdateKind

    assert [(k.name, int(k)) for k in UpdateKind] == [
        ("SGD", 0),
        ("ADAM", 1),
        ("MOMENTUM", 2),
        ("LION", 3),
        ("ADEMAMIX", 4),
        ("SCHEDULE_FREE_ADAMW", 5),
        ("SCHEDULE_FREE_SGD", 6),
    ]
