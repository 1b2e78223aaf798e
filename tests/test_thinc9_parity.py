"""Parity with Thinc 9.1.1: replay the reference trajectories and schedule values
in tests/reference/ (made by tests/reference/make_thinc9_reference.py in a
separate thinc==9.1.1 venv) against optsvc.

Weights and averages must agree to 1e-5 relative to each tensor's scale:
    max|ours - ref| <= 1e-5 * max(max|ref|, 1e-6)
Schedule values and the learning-rate trace are float64 formulas and must agree
to 1e-12 relative (floored at 1e-6 of the sequence's largest value, so exact
zeros and zero crossings do not demand bit equality).

The replay helpers take any module-like object with a `registry` (optsvc here),
so the same code can be pointed at another implementation.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from reference.replay import build_optimizer, build_spec
from reference.replay import replay as shared_replay

REF_DIR = Path(__file__).resolve().parent / "reference"
TRAJECTORIES = json.loads((REF_DIR / "thinc9_trajectories.json").read_text())
SCHEDULES = json.loads((REF_DIR / "thinc9_schedules.json").read_text())
CASES = TRAJECTORIES["cases"]
TENSOR_SETS = TRAJECTORIES["tensor_sets"]

WEIGHT_RTOL = 1e-5
SCHEDULE_RTOL = 1e-12


# ---------------------------------------------------------------------------
# The replay loop: the generator runs exactly this (reference/replay.py)
# against Thinc


def read_learn_rate(opt, key):
    """optsvc exposes the current learning rate as a float."""
    return float(opt.learn_rate)


def replay(mod, case, *, read_lr=read_learn_rate, learn_rate=None, lr_scale=None):
    """Run one case. Returns lr_trace, checkpoints ({"step": [w per key]}),
    nr_update and averages (None without use_averages)."""
    opt = build_optimizer(mod.registry, case, learn_rate=learn_rate)
    keys, lr_trace, checkpoints, _ = shared_replay(
        opt,
        TENSOR_SETS[case["tensors"]],
        case,
        lr_scale=case["lr_scale"] if lr_scale is None else lr_scale,
        read_lr=read_lr,
    )
    averages = None
    if opt.averages:
        averages = [np.array(opt.averages[k]) for k in keys]
    return {
        "lr_trace": lr_trace,
        "checkpoints": checkpoints,
        "nr_update": [opt.nr_update[k] for k in keys],
        "averages": averages,
    }


# ---------------------------------------------------------------------------
# Comparison helpers


def scaled_error(ours, ref, *, what, key, step, rtol=WEIGHT_RTOL):
    """None if max|ours - ref| <= rtol * max(max|ref|, 1e-6), else a message
    naming the tensor, key and step."""
    ref = np.asarray(ref, dtype=np.float64)
    ours = np.asarray(ours, dtype=np.float64)
    if ours.shape != ref.shape:
        return f"{what} key={key} step={step}: shape {ours.shape} != {ref.shape}"
    if not np.all(np.isfinite(ours)):
        return f"{what} key={key} step={step}: non-finite values"
    scale = max(float(np.max(np.abs(ref))), 1e-6)
    err = float(np.max(np.abs(ours - ref)))
    if err <= rtol * scale:
        return None
    idx = np.unravel_index(int(np.argmax(np.abs(ours - ref))), ref.shape)
    return (
        f"{what} key={key} step={step}: max abs err {err:.3e} > {rtol:g} * "
        f"scale {scale:.3e} (rel {err / scale:.2e}; at {idx}: "
        f"ours {ours[idx]!r} ref {ref[idx]!r})"
    )


def sequence_errors(ours, ref, *, what, rtol=SCHEDULE_RTOL):
    """Per-value relative comparison of two float sequences (floored at 1e-6
    of the largest reference magnitude). Returns a list of messages."""
    if len(ours) != len(ref):
        return [f"{what}: length {len(ours)} != {len(ref)}"]
    floor = max((abs(r) for r in ref), default=0.0) * 1e-6
    errs = []
    for step, (o, r) in enumerate(zip(ours, ref)):
        o = float(o)
        if not abs(o - r) <= rtol * max(abs(r), floor):
            errs.append(f"{what} step={step}: ours {o!r} ref {r!r} (diff {o - r:.3e})")
    return errs


def case_errors(case, got):
    tensors = TENSOR_SETS[case["tensors"]]
    keys = [tuple(k["key"]) for k in tensors]
    shapes = [tuple(k["shape"]) for k in tensors]
    errs = []
    for step, ref_ws in case["checkpoints"].items():
        for key, shape, ours, ref in zip(
            keys, shapes, got["checkpoints"][step], ref_ws
        ):
            msg = scaled_error(
                ours,
                np.asarray(ref, np.float32).reshape(shape),
                what="weights",
                key=key,
                step=step,
            )
            if msg:
                errs.append(msg)
    if got["nr_update"] != case["nr_update"]:
        errs.append(f"nr_update: ours {got['nr_update']} ref {case['nr_update']}")
    if "averages" in case:
        if got["averages"] is None:
            errs.append("averages: missing (use_averages=True)")
        else:
            for key, shape, ours, ref in zip(
                keys, shapes, got["averages"], case["averages"]
            ):
                msg = scaled_error(
                    ours,
                    np.asarray(ref, np.float32).reshape(shape),
                    what="averages",
                    key=key,
                    step=case["steps"],
                )
                if msg:
                    errs.append(msg)
    elif got["averages"] is not None:
        errs.append("averages: present although use_averages=False")
    return errs


def report(errs, limit=25):
    more = f"\n... and {len(errs) - limit} more" if len(errs) > limit else ""
    return "\n".join(errs[:limit]) + more


# ---------------------------------------------------------------------------
# Tests


@pytest.fixture(scope="module")
def optsvc_mod():
    import optsvc

    return optsvc


_REPLAYS = {}


def replayed(mod, case):
    if case["name"] not in _REPLAYS:
        _REPLAYS[case["name"]] = replay(mod, case)
    return _REPLAYS[case["name"]]


def test_reference_files_are_thinc_9_1_1():
    assert TRAJECTORIES["versions"]["thinc"] == "9.1.1"
    assert SCHEDULES["versions"]["thinc"] == "9.1.1"
    assert len(CASES) >= 70
    assert len({c["name"] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_trajectory_matches_thinc9(optsvc_mod, case):
    errs = case_errors(case, replayed(optsvc_mod, case))
    assert not errs, f"{case['name']}: {case.get('note', '')}\n" + report(errs)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_learn_rate_trace_matches_thinc9(optsvc_mod, case):
    got = replayed(optsvc_mod, case)["lr_trace"]
    errs = sequence_errors(got, case["lr_trace"], what="learn_rate")
    assert not errs, f"{case['name']}\n" + report(errs)


@pytest.mark.parametrize(
    "entry", SCHEDULES["cases"], ids=[e["id"] for e in SCHEDULES["cases"]]
)
def test_schedule_matches_thinc9(optsvc_mod, entry):
    registry = optsvc_mod.registry
    sched = build_spec(registry, {"@schedules": entry["name"], **entry["args"]})
    last_scores = entry.get("last_scores") or [None] * len(entry["values"])
    got = []
    for step, ls in enumerate(last_scores):
        got.append(sched(step, last_score=None if ls is None else tuple(ls)))
    errs = sequence_errors(got, entry["values"], what=entry["id"])
    assert not errs, report(errs)
