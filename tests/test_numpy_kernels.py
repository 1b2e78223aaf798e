"""The numpy kernel, and the element functions that numba compiles into the
CPU and CUDA kernels (run here as plain Python), against the plain
reference, line by line."""

import itertools
import tracemalloc

import numpy as np
import pytest
from kernel_reference import (
    HYPER,
    KINDS,
    call,
    copy_state,
    element_update,
    random_state,
    reference_update,
    split,
    state_of,
)

from optsvc.backends import numpy_kernels
from optsvc.backends.numpy_kernels import BLOCK, fused_update

CASES = list(
    itertools.product(
        KINDS,
        [0.0, 0.01],  # l2 into the gradient
        [0.0, 0.5, 1e4],  # clip: off, fires, idle
        [0.0, 1e-3],  # weight decay
        [False, True],  # averages
    )
)
# The far form of every lerp (a weight of 0.5 or more, as torch picks it).
FAR = dict(to_g1=0.7, to_g2=0.5, to_z=0.9)


@pytest.mark.parametrize("kind,l2,clip,decay,averages", CASES)
@pytest.mark.parametrize("n", [1, 7, BLOCK - 1, BLOCK + 3, 3 * BLOCK])
def test_kernel_matches_reference(n, kind, l2, clip, decay, averages):
    ours = random_state(n, KINDS[kind], averages)
    ref = copy_state(ours)
    hyper = dict(HYPER, kind=KINDS[kind], l2=l2, clip=clip, decay=decay)
    for step in range(3):  # state carried across steps, both forms of lerp
        ours["g"][:] = ref["g"][:] = np.float32(0.3) * ours["w"] + 1
        if step == 2:
            hyper.update(FAR)
        call(fused_update, ours, **hyper)
        reference_update(**ref, **hyper)
    for name in ours:
        if ours[name] is not None:
            # The norm is summed in another order (BLAS float32 vs float64).
            np.testing.assert_allclose(ours[name], ref[name], rtol=2e-6, atol=1e-7)
    assert not ours["g"].any()


@pytest.mark.parametrize("kind,l2,clip,decay,averages", CASES)
def test_kernel_and_element_functions_match_reference(kind, l2, clip, decay, averages):
    """Bit for bit, unless the clip fires (then each sums the norm in its own
    order: BLAS float32, float64 in index order, numpy's float64 dot)."""
    for n in [1, 7, 300]:
        ref = random_state(n, KINDS[kind], averages, seed=n)
        ours = {"numpy": copy_state(ref), "elements": copy_state(ref)}
        hyper = dict(HYPER, kind=KINDS[kind], l2=l2, clip=clip, decay=decay)
        for step in range(3):  # state carried across steps, both forms of lerp
            gradient = np.float32(0.3 + step) * ref["w"] + 1
            for state in (ref, *ours.values()):
                state["g"][:] = gradient
            if step == 2:
                hyper.update(FAR)
            call(fused_update, ours["numpy"], **hyper)
            element_update(**ours["elements"], **hyper)
            reference_update(**ref, **hyper)
        for who, state in ours.items():
            for name, array in state.items():
                if array is None:
                    continue
                if clip == 0.5:  # fires
                    np.testing.assert_allclose(
                        array, ref[name], rtol=2e-6, atol=1e-7, err_msg=(who, name)
                    )
                else:
                    np.testing.assert_array_equal(array, ref[name], err_msg=(who, name))


@pytest.mark.parametrize("kind", list(KINDS.values()), ids=list(KINDS))
def test_kernel_is_bit_exact_without_clipping(kind):
    ours = random_state(5000, kind, True)
    ref = copy_state(ours)
    hyper = dict(HYPER, kind=kind, l2=0.01, clip=0.0, decay=1e-3)
    call(fused_update, ours, **hyper)
    reference_update(**ref, **hyper)
    for name in ours:
        np.testing.assert_array_equal(ours[name], ref[name])


@pytest.mark.parametrize("kind", list(KINDS.values()), ids=list(KINDS))
def test_kernel_allocates_nothing_per_step(kind):
    n = 4 * BLOCK
    arrays = random_state(n, kind, True)
    scratch = numpy_kernels.Scratch()
    tensor, host = split(dict(HYPER, kind=kind, l2=0.0, clip=1.0, decay=1e-3))
    w, g, ema = arrays["w"], arrays["g"], arrays["ema"]
    state = state_of(arrays)

    def step():
        fused_update(w, g, state, ema, host=host, scratch=scratch, **tensor)

    step()
    tracemalloc.start()
    try:
        for _ in range(5):
            arrays["g"][:] = 0.5
            step()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Any temporary over the arrays would be at least n * 4 bytes.
    assert peak < 4 * 1024, f"peak {peak} bytes allocated during updates"
