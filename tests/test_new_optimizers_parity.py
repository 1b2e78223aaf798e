"""Lion, AdEMAMix and Schedule-Free AdamW / SGD against their reference
implementations, replayed from tests/reference/torch_reference.json (made by
tests/reference/make_torch_reference.py with torch, schedulefree and
pytorch_optimizer, in their own virtualenv): 200 float32 steps on three
tensors, with and without weight decay and warmup, the weights (y) and, for
Schedule-Free, the evaluation point (x = optimizer.averages) at five steps,
to rtol 1e-5. Every case runs through the per-key call and through
`update_store`, on the numba kernels and on the numpy ones."""

import json
from pathlib import Path

import numpy as np
import pytest
from reference.replay import make_grad

import optsvc
from optsvc import ParamStore, ademamix_alpha_warmup, ademamix_beta3_warmup
from optsvc.backends import NumpyOps

REFERENCE = json.loads(
    (Path(__file__).parent / "reference" / "torch_reference.json").read_text()
)
CASES = {case["label"]: case for case in REFERENCE["cases"]}
RTOL, ATOL = 1e-5, 1e-7
KEYS = [(i, "W") for i in range(len(REFERENCE["tensors"]))]
BACKENDS = {
    "numba": lambda: NumpyOps(compiled=None),
    "numpy": lambda: NumpyOps(compiled=False),
}


def build(case, ops):
    """The case's optimizer: the reference's arguments under optsvc's names,
    no clipping (the references have none), AdEMAMix's warmup as the
    paper's two schedules."""
    args = dict(case["args"], grad_clip=0.0, ops=ops)
    if case["optimizer"] == "AdEMAMix.v1":
        warmup = args.pop("warmup_steps", None)
        if warmup:
            beta1 = args.get("beta1", 0.9)
            args["alpha"] = ademamix_alpha_warmup(args.get("alpha", 5.0), warmup)
            args["beta3"] = ademamix_beta3_warmup(
                beta1, args.get("beta3", 0.9999), warmup
            )
    return optsvc.registry.optimizers.get(case["optimizer"])(**args)


def replay(case, ops, multi):
    """Each checkpoint's y (and x) of the case's loop, run with optsvc."""
    tensors = REFERENCE["tensors"]
    inits = {k: np.asarray(t["init"], np.float32).reshape(t["shape"])
             for k, t in zip(KEYS, tensors)}  # fmt: skip
    bases = {k: np.asarray(t["base"], np.float32).reshape(t["shape"])
             for k, t in zip(KEYS, tensors)}  # fmt: skip
    opt = build(case, ops)
    store = ParamStore.from_arrays(inits, ops=ops)
    marks = {}
    for t in range(case["steps"]):
        for key in KEYS:
            w, g = store.weights(key), store.gradient(key)
            g[...] = make_grad(bases[key], t, w)
            if not multi:
                opt(key, w, g)
        if multi:
            opt.update_store(store)
        opt.step_schedules()
        if str(t + 1) in case["checkpoints"]:
            mark = {"y": [store.weights(k).ravel().copy() for k in KEYS]}
            if "x" in case["checkpoints"][str(t + 1)]:
                mark["x"] = [opt.averages[k].ravel() for k in KEYS]
            marks[str(t + 1)] = mark
    return opt, marks


@pytest.mark.parametrize("multi", [False, True], ids=["per-key", "update_store"])
@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("label", list(CASES))
def test_matches_the_reference_implementation(label, backend, multi):
    case = CASES[label]
    opt, marks = replay(case, BACKENDS[backend](), multi)
    assert set(marks) == set(case["checkpoints"])
    for step, reference in case["checkpoints"].items():
        for point, arrays in reference.items():
            for key, ours, theirs in zip(KEYS, marks[step][point], arrays):
                np.testing.assert_allclose(
                    ours, np.asarray(theirs, np.float32), rtol=RTOL, atol=ATOL,
                    err_msg=f"{label}: {point} of {key} at step {step}",
                )  # fmt: skip
    final = case.get("final_state")
    if final is not None:  # the running sums exactly as schedulefree's
        assert opt.state.sums == (final["weight_sum"], final["lr_max"])
        assert opt.step == final["k"]


def test_every_new_optimizer_has_reference_cases():
    covered = {case["optimizer"] for case in REFERENCE["cases"]}
    assert covered == {
        "Lion.v1", "AdEMAMix.v1", "ScheduleFreeAdamW.v1", "ScheduleFreeSGD.v1"
    }  # fmt: skip
    for name in covered:
        cases = [c for c in CASES.values() if c["optimizer"] == name]
        assert any(c["args"].get("weight_decay") for c in cases), name
        assert all(c["steps"] >= 200 for c in cases), name


@pytest.mark.parametrize(
    "label", [label for label, case in CASES.items() if "final_state" in case]
)
def test_the_training_point_is_not_the_evaluation_point(label):
    """Schedule-Free's commonest misuse, evaluating at y, fails the check
    of x: the two points are further apart than the tolerance."""
    case = CASES[label]
    for step in ("10", "200"):
        for y, x in zip(*(case["checkpoints"][step][p] for p in ("y", "x"))):
            assert not np.allclose(y, x, rtol=RTOL, atol=ATOL), (step, label)
