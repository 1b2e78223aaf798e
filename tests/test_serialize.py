"""Optimizer state: to_bytes / from_bytes and to_disk / from_disk.

DESIGN.md section 1, "State": everything round-trips (moments, averages,
per-key update counts, step, last_score, the state of every schedule), a
restored optimizer continues bit-identically, and loading never runs code.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import os
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from state_helpers import archive, contents

import optsvc
from optsvc import Schedule, StateError, fileio
from optsvc.config.registry import registry
from optsvc.schedules import base as schedules_base
from optsvc.schedules.thinc import PlateauState

HP_PROPS = ("learn_rate", "L2", "b1", "b2", "eps", "grad_clip")
HPARAMS = ("learn_rate", "L2", "beta1", "beta2", "eps", "grad_clip")

# --- schedules: one learn_rate for each registered schedule ------------------

SCHEDULES = {
    "constant": lambda: optsvc.constant(0.01),
    "constant_then": lambda: optsvc.constant_then(
        0.02, 3, optsvc.linear_warmup(2, optsvc.cyclic_triangular(0.001, 0.01, 3))
    ),
    "decaying": lambda: optsvc.decaying(0.01, 0.1),
    "compounding": lambda: optsvc.compounding(0.001, 0.02, 1.3),
    "warmup_linear": lambda: optsvc.warmup_linear(0.01, 3, 20),
    "slanted_triangular": lambda: optsvc.slanted_triangular(0.01, 20),
    "cyclic_triangular": lambda: optsvc.cyclic_triangular(0.001, 0.01, 3),
    "plateau": lambda: optsvc.plateau(
        2, 0.5, optsvc.constant_then(0.01, 4, optsvc.decaying(0.01, 0.05))
    ),
    "warmup_cosine": lambda: optsvc.warmup_cosine(0.01, 3, 20, final_rate=0.001),
    "exponential_decay": lambda: optsvc.exponential_decay(0.01, 0.5, 4, staircase=True),
    "step_decay": lambda: optsvc.step_decay(0.01, 4, 0.5),
    "piecewise_constant": lambda: optsvc.piecewise_constant(
        [3, 8], [0.01, 0.005, 0.001]
    ),
    "linear_warmup": lambda: optsvc.linear_warmup(
        3, optsvc.constant_then(0.01, 5, optsvc.step_decay(0.01, 3, 0.5))
    ),
    "one_cycle": lambda: optsvc.one_cycle(0.01, 20),
    "ademamix_alpha_warmup": lambda: optsvc.ademamix_alpha_warmup(0.01, 5),
    "ademamix_beta3_warmup": lambda: optsvc.ademamix_beta3_warmup(0.001, 0.01, 5),
}
LEARN_RATES = {
    "float": lambda: 0.01,
    "list": lambda: [0.01, 0.02, 0.005, 0.003],
    **SCHEDULES,
    # plateau around plateau, inside warmup: every nesting level keeps state
    "nested_plateau": lambda: optsvc.linear_warmup(
        2, optsvc.plateau(3, 0.1, optsvc.plateau(2, 0.5, optsvc.constant(0.01)))
    ),
}


def test_every_registered_schedule_is_covered():
    registered = {name.rsplit(".", 1)[0] for name in registry.schedules.get_all()}
    assert registered == set(SCHEDULES)


# --- a deterministic training run -----------------------------------------------

SHAPES = {(0, "W"): (4, 3), (0, "b"): (3,), "emb": (2, 2, 2)}
KEYS = list(SHAPES)
# the step at which each key is first updated (keys may appear late)
FIRST_STEP = {(0, "W"): 0, (0, "b"): 0, "emb": 5}
# scores that rarely improve, so that plateau fires before and after a save
SCORES = [0.5, 0.4, 0.3, 0.6, 0.2, 0.1, 0.7, 0.1, 0.65, 0.6, 0.5, 0.9, 0.2]


def make_weights(keys=KEYS):
    rng = np.random.default_rng(0)
    return {k: rng.normal(size=SHAPES[k]).astype("float32") for k in keys}


def gradient(step: int, key) -> np.ndarray:
    """The same gradient for the same (step, key), on every call; the scale
    varies so that clipping at 1.0 fires on some steps and not others."""
    seed = abs(hash((step, str(key)))) % 2**32
    rng = np.random.default_rng(seed)
    scale = (0.05, 0.3, 2.0)[step % 3]
    return (rng.normal(size=SHAPES[key]) * scale).astype("float32")


def run(opt, weights, start, stop, first_step=FIRST_STEP, score_every=3):
    for step in range(start, stop):
        for key, w in weights.items():
            if step < first_step.get(key, 0):
                continue
            lr_scale = 0.5 if key == "emb" else 1.0
            opt(key, w, gradient(step, key), lr_scale=lr_scale)
        if step % score_every == score_every - 1:
            opt.last_score = SCORES[(step // score_every) % len(SCORES)]
        opt.step_schedules()


def build(kind="Adam", lr="float", *, use_averages=True, wd=True, **hyper):
    factory = registry.optimizers.get(f"{kind}.v1")
    learn_rate = LEARN_RATES[lr]() if isinstance(lr, str) else lr
    hyper.setdefault("L2", 0.01)
    hyper.setdefault("grad_clip", 1.0)
    return factory(
        learn_rate, L2_is_weight_decay=wd, use_averages=use_averages, **hyper
    )


# --- comparing optimizers -----------------------------------------------------


def schedule_tree(value):
    """A schedule (and whatever it holds) as comparable plain data."""
    if isinstance(value, Schedule):
        return (
            "Schedule",
            value.name,
            value.function,
            {k: schedule_tree(v) for k, v in value.attrs.items()},
        )
    if isinstance(value, np.generic):  # saved as the Python scalar
        value = value.item()
    if isinstance(value, PlateauState):
        return ("PlateauState", dataclasses.astuple(value))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [schedule_tree(v) for v in value])
    if isinstance(value, dict):
        return ("dict", {k: schedule_tree(v) for k, v in value.items()})
    return (type(value).__name__, value)


def assert_arrays_equal(a: dict | None, b: dict | None, what: str):
    if a is None or b is None:
        assert a is None and b is None, what
        return
    assert list(a) == list(b) or set(a) == set(b), what
    for key in a:
        assert a[key].dtype == b[key].dtype, (what, key)
        assert a[key].shape == b[key].shape, (what, key)
        assert np.array_equal(a[key], b[key]), (what, key)


def assert_same_state(a, b):
    """Every piece of state the design lists, compared exactly."""
    assert a.step == b.step
    assert a.last_score == b.last_score
    assert type(a.last_score) is type(b.last_score)
    assert a.nr_update == b.nr_update
    assert a.use_radam == b.use_radam
    assert a.L2_is_weight_decay == b.L2_is_weight_decay
    assert_arrays_equal(a.mom1, b.mom1, "mom1")
    assert_arrays_equal(a.mom2, b.mom2, "mom2")
    assert_arrays_equal(a.averages, b.averages, "averages")
    # Reading a hyperparameter evaluates the schedules (plateau takes in a new
    # last_score lazily), so read both before comparing the schedules' state.
    for prop in HP_PROPS:
        va, vb = getattr(a, prop), getattr(b, prop)
        assert va == vb and type(va) is type(vb), prop
    for name in HPARAMS:
        assert schedule_tree(a.schedules[name]) == schedule_tree(b.schedules[name])


def snapshot(opt) -> dict:
    """A deep, plain copy of an optimizer's state, for "left unchanged"."""

    def copy(arrays):
        return None if arrays is None else {k: v.copy() for k, v in arrays.items()}

    return {
        "step": opt.step,
        "last_score": opt.last_score,
        "nr_update": dict(opt.nr_update),
        "flags": (opt.use_radam, opt.L2_is_weight_decay),
        "mom1": copy(opt.mom1),
        "mom2": copy(opt.mom2),
        "averages": copy(opt.averages),
        "schedules": {n: schedule_tree(opt.schedules[n]) for n in HPARAMS},
        "objects": {n: opt.schedules[n] for n in HPARAMS},
        "plateau": _plateau_states(opt),
        "ops": opt.ops,
    }


def _plateau_states(opt):
    out = []

    def walk(value):
        if isinstance(value, Schedule):
            for v in value.attrs.values():
                walk(v)
        elif isinstance(value, PlateauState):
            out.append(dataclasses.astuple(value))

    for name in HPARAMS:
        walk(opt.schedules[name])
    return out


def assert_snapshot_equal(before: dict, after: dict):
    for field in ("mom1", "mom2", "averages"):
        assert_arrays_equal(before[field], after[field], field)
    for field in before:
        if field not in ("mom1", "mom2", "averages", "objects", "ops"):
            assert before[field] == after[field], field
    for name in HPARAMS:
        assert before["objects"][name] is after["objects"][name], name
    assert before["ops"] is after["ops"]


def plateau_count(opt) -> int:
    return sum(state[3] for state in _plateau_states(opt))


def archive_contents(opt):
    return contents(opt.to_bytes())


def assert_same_archive(a, b):
    """Saving a restored optimizer gives back the same state: a fixed point."""
    meta_a, arrays_a = archive_contents(a)
    meta_b, arrays_b = archive_contents(b)
    assert meta_a == meta_b
    assert_arrays_equal(arrays_a, arrays_b, "archive")


# --- 1. bit-identical continuation ------------------------------------------------


@pytest.mark.parametrize("lr", list(LEARN_RATES))
@pytest.mark.parametrize("kind", ["SGD", "Adam", "RAdam"])
@pytest.mark.parametrize(
    "use_averages,wd", [(True, True), (False, False), (True, False), (False, True)]
)
def test_restored_optimizer_continues_bit_identically(
    tmp_path, kind, lr, use_averages, wd
):
    n, m = 11, 12
    opt = build(kind, lr, use_averages=use_averages, wd=wd)
    weights = make_weights()
    run(opt, weights, 0, n)
    if lr.endswith("plateau"):
        assert plateau_count(opt) > 0, "the test should make plateau fire"
    fired_before = plateau_count(opt)

    data = opt.to_bytes()
    from_bytes = build(kind, lr, use_averages=use_averages, wd=wd)
    assert from_bytes.from_bytes(data) is from_bytes
    path = tmp_path / "optimizer.safetensors"
    opt.to_disk(path)
    assert os.listdir(tmp_path) == ["optimizer.safetensors"]
    from_disk = build(kind, lr, use_averages=use_averages, wd=wd)
    assert from_disk.from_disk(path) is from_disk

    copies = [opt, from_bytes, from_disk]
    all_weights = [weights] + [
        {k: w.copy() for k, w in weights.items()} for _ in copies[1:]
    ]
    for other in copies[1:]:
        assert_same_state(opt, other)
        assert_same_archive(opt, other)
    for step in range(n, n + m):
        for o, w in zip(copies, all_weights):
            run(o, w, step, step + 1)
        for other, w in zip(copies[1:], all_weights[1:]):
            assert_same_state(opt, other)
            for key in weights:
                assert np.array_equal(weights[key], w[key]), (step, key)
    if lr.endswith("plateau"):
        assert plateau_count(opt) > fired_before, "plateau should fire after the save"
    if use_averages:
        assert set(opt.averages) == set(KEYS)
    assert opt.nr_update == {(0, "W"): n + m, (0, "b"): n + m, "emb": n + m - 5}


# Beyond Thinc: each optimizer with its own hyperparameters, some scheduled
# (AdEMAMix's warmups of alpha and beta3, Schedule-Free's own warmup and
# averaging weights), so every running sum and schedule state is in the save.
BEYOND_THINC = {
    "Lion": lambda lr: optsvc.Lion(lr, weight_decay=0.1),
    "Lion-no-averages": lambda lr: optsvc.Lion(lr, use_averages=False),
    "AdEMAMix": lambda lr: optsvc.AdEMAMix(
        lr,
        beta3=optsvc.ademamix_beta3_warmup(0.9, 0.999, 8),
        alpha=optsvc.ademamix_alpha_warmup(5.0, 8),
        weight_decay=0.01,
    ),
    "ScheduleFreeAdamW": lambda lr: optsvc.ScheduleFreeAdamW(
        lr, warmup_steps=4, weight_decay=0.01, r=0.5
    ),
    "ScheduleFreeSGD": lambda lr: optsvc.ScheduleFreeSGD(
        lr, momentum=0.8, warmup_steps=4, weight_decay=0.01
    ),
}


def test_every_registered_optimizer_is_covered():
    covered = {"SGD", "Adam", "RAdam", *(n.split("-")[0] for n in BEYOND_THINC)}
    registered = {name.rsplit(".", 1)[0] for name in registry.optimizers.get_all()}
    assert registered == covered


def assert_same_point(a, b, weights_a, weights_b, what):
    """Same weights, same averages (Schedule-Free's x), same saved state.
    Reading Schedule-Free's averages evaluates the schedules (plateau takes
    in a new last_score lazily), so they are read before the states."""
    for key in weights_a:
        assert np.array_equal(weights_a[key], weights_b[key]), (what, key)
    if a.averages is not None:
        assert_arrays_equal(dict(a.averages), dict(b.averages), f"{what}: averages")
    assert_same_archive(a, b)


@pytest.mark.parametrize("mid_step", [False, True], ids=["between", "mid-step"])
@pytest.mark.parametrize("lr", ["float", "list", "warmup_cosine", "plateau"])
@pytest.mark.parametrize("name", list(BEYOND_THINC))
def test_beyond_thinc_optimizer_continues_bit_identically(tmp_path, name, lr, mid_step):
    """to_bytes / to_disk mid-training, into an optimizer built with other
    settings: the restored one continues bit for bit. `mid-step` saves after
    some keys of a step were updated and before `step_schedules`."""
    n, m = 11, 12
    make = BEYOND_THINC[name]
    opt, weights = make(LEARN_RATES[lr]()), make_weights()
    run(opt, weights, 0, n)
    if mid_step:  # the first key of step n before the save
        opt(KEYS[0], weights[KEYS[0]], gradient(n, KEYS[0]))
    from_bytes = make(0.5).from_bytes(opt.to_bytes())
    opt.to_disk(tmp_path / "optimizer.safetensors")
    from_disk = make(0.5).from_disk(tmp_path / "optimizer.safetensors")
    copies = [from_bytes, from_disk]
    copy_weights = [{k: w.copy() for k, w in weights.items()} for _ in copies]
    for other, w in zip(copies, copy_weights):
        other.attach(w)  # Schedule-Free's x needs y, which a save does not hold
        assert_same_point(opt, other, weights, w, "restored")
    if mid_step:  # the step's other keys, then its end
        for o, w in zip([opt, *copies], [weights, *copy_weights]):
            run(o, {k: w[k] for k in KEYS[1:]}, n, n + 1)
        n += 1
    for step in range(n, n + m):
        for o, w in zip([opt, *copies], [weights, *copy_weights]):
            run(o, w, step, step + 1)
        for other, w in zip(copies, copy_weights):
            assert_same_point(opt, other, weights, w, f"step {step}")
    assert opt.nr_update[(0, "W")] == n + m


def test_every_hyperparameter_scheduled_round_trips():
    """Not only learn_rate: L2, beta1, beta2, eps and grad_clip as schedules,
    lists and plateaus, with scores set at every step."""

    def make():
        return optsvc.Adam(
            optsvc.plateau(1, 0.7, optsvc.warmup_cosine(0.01, 2, 15)),
            L2=[0.0, 0.01, 0.02],
            beta1=optsvc.piecewise_constant([4], [0.8, 0.9]),
            beta2=optsvc.plateau(2, 0.999, optsvc.constant(0.99)),
            eps=optsvc.exponential_decay(1e-6, 0.5, 3, final_rate=1e-8),
            grad_clip=optsvc.constant_then(0.5, 6, optsvc.constant(2.0)),
            L2_is_weight_decay=False,
        )

    opt = make()
    weights = make_weights()
    run(opt, weights, 0, 9, score_every=1)
    restored = make().from_bytes(opt.to_bytes())
    other = {k: w.copy() for k, w in weights.items()}
    assert_same_state(opt, restored)
    for step in range(9, 20):
        run(opt, weights, step, step + 1, score_every=1)
        run(restored, other, step, step + 1, score_every=1)
        assert_same_state(opt, restored)
    for key in weights:
        assert np.array_equal(weights[key], other[key])
    assert plateau_count(opt) > 2


def test_sgd_that_becomes_adam_round_trips():
    """beta1/beta2 scheduled from 0 (SGD, no moments) to Adam: moments appear
    only after the save."""

    def make():
        return optsvc.Optimizer(0.01, beta1=[0.0] * 6 + [0.9], beta2=[0.0] * 6 + [0.99])

    opt = make()
    weights = make_weights()
    run(opt, weights, 0, 4)
    assert opt.mom1 == {}
    restored = make().from_bytes(opt.to_bytes())
    other = {k: w.copy() for k, w in weights.items()}
    run(opt, weights, 4, 12)
    run(restored, other, 4, 12)
    assert_same_state(opt, restored)
    assert set(opt.mom1) == set(KEYS)
    for key in weights:
        assert np.array_equal(weights[key], other[key])


def test_fresh_and_saved_at_step_zero():
    """Saving before any update (no keys, no ops) round-trips too."""
    opt = build("Adam", "plateau")
    restored = build("Adam", "plateau").from_bytes(opt.to_bytes())
    assert_same_state(opt, restored)
    assert restored.mom1 == {} and restored.averages == {} and restored.step == 0
    weights, other = make_weights(), make_weights()
    run(opt, weights, 0, 8)
    run(restored, other, 0, 8)
    assert_same_state(opt, restored)
    for key in weights:
        assert np.array_equal(weights[key], other[key])


def test_last_score_as_tuple_and_none_round_trip():
    opt = build("Adam", "plateau")
    run(opt, make_weights(), 0, 4)
    for score in [(17, 0.25), (3, float("-inf")), None, (0, 1e-300)]:
        opt.last_score = score
        restored = build("SGD", "float").from_bytes(opt.to_bytes())
        assert restored.last_score == opt.last_score
        if score is not None:
            assert type(restored.last_score[0]) is int
            assert type(restored.last_score[1]) is float


@pytest.mark.parametrize(
    "saved,target",
    [
        (
            dict(kind="Adam", lr="plateau", use_averages=True, wd=True),
            dict(kind="RAdam", lr="float", use_averages=False, wd=False, L2=0.5),
        ),
        (
            dict(kind="RAdam", lr="nested_plateau", use_averages=False, wd=False),
            dict(kind="SGD", lr="list", use_averages=True, wd=True, grad_clip=5.0),
        ),
        (
            dict(kind="SGD", lr="one_cycle", use_averages=True, wd=False),
            dict(kind="Adam", lr="constant_then", use_averages=False, wd=True),
        ),
    ],
)
def test_saved_settings_win_over_the_target_settings(saved, target):
    opt = build(**saved)
    weights = make_weights()
    run(opt, weights, 0, 10)
    data = opt.to_bytes()

    other_opt = build(**target)
    other_weights = make_weights()
    run(other_opt, other_weights, 0, 3)  # the target has state of its own
    restored = other_opt.from_bytes(data)

    assert_same_state(opt, restored)
    other = {k: w.copy() for k, w in weights.items()}
    for step in range(10, 20):
        run(opt, weights, step, step + 1)
        run(restored, other, step, step + 1)
        assert_same_state(opt, restored)
    for key in weights:
        assert np.array_equal(weights[key], other[key])


def test_restore_replaces_keys_the_target_had():
    opt = build("Adam", "float")
    opt.step_schedules()  # no keys at all
    target = build("Adam", "float")
    target("only_in_target", np.ones(3, dtype="f"), np.ones(3, dtype="f"))
    target.from_bytes(opt.to_bytes())
    assert target.nr_update == {} and target.mom1 == {} and target.averages == {}


# --- 2. hypothesis --------------------------------------------------------------


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    kind=st.sampled_from(["SGD", "Adam", "RAdam"]),
    lr=st.sampled_from(sorted(LEARN_RATES)),
    use_averages=st.booleans(),
    wd=st.booleans(),
    first_steps=st.lists(st.integers(0, 12), min_size=3, max_size=3),
    save_points=st.lists(st.integers(0, 14), min_size=1, max_size=3),
    extra=st.integers(0, 8),
    score_every=st.integers(1, 4),
)
def test_round_trip_hypothesis(
    kind, lr, use_averages, wd, first_steps, save_points, extra, score_every
):
    """Save at random points (restoring each time into a fresh optimizer that
    carries on), with keys first seen before or after a save."""
    first = dict(zip(KEYS, first_steps))
    total = max(save_points) + extra
    ref = build(kind, lr, use_averages=use_averages, wd=wd)
    ref_w = make_weights()
    run(ref, ref_w, 0, total, first, score_every)

    cur = build(kind, lr, use_averages=use_averages, wd=wd)
    cur_w = make_weights()
    done = 0
    for point in sorted(save_points):
        run(cur, cur_w, done, point, first, score_every)
        done = point
        cur = build(kind, lr, use_averages=not use_averages, wd=not wd).from_bytes(
            cur.to_bytes()
        )
    run(cur, cur_w, done, total, first, score_every)

    assert_same_state(ref, cur)
    for key in KEYS:
        assert np.array_equal(ref_w[key], cur_w[key]), key
    assert set(ref.nr_update) == {k for k in KEYS if first[k] < total}


# --- 3. generators ----------------------------------------------------------------


@pytest.mark.parametrize("hparam", HPARAMS)
def test_generator_hyperparameter_is_a_clear_error_at_save_time(tmp_path, hparam):
    values = {"learn_rate": 0.01, "L2": 0.0, "beta1": 0.9, "beta2": 0.999}
    values.update({"eps": 1e-8, "grad_clip": 1.0})
    value = values[hparam]
    kwargs = {hparam: (value for _ in itertools.count())}
    lr = kwargs.pop("learn_rate", 0.01)
    opt = optsvc.Optimizer(lr, **kwargs)
    run(opt, make_weights(), 0, 3)
    with pytest.raises(StateError, match=f"'{hparam}'.*generator") as info:
        opt.to_bytes()
    assert isinstance(info.value, ValueError)
    path = tmp_path / "opt.bin"
    with pytest.raises(StateError, match=hparam):
        opt.to_disk(path)
    assert os.listdir(tmp_path) == []


def test_generator_inside_a_custom_schedule_is_a_clear_error():
    def fn(schedule, step, **kw):
        return 0.01

    gen = iter([0.1, 0.2])
    opt = optsvc.Adam(0.01, beta1=Schedule("mine", fn, attrs={"source": gen}))
    with pytest.raises(StateError, match="'beta1'"):
        opt.to_bytes()


def test_list_hyperparameter_saves_and_continues():
    def make():
        return optsvc.Adam([0.01, 0.02, 0.03], L2=[0.0, 0.1], grad_clip=[1.0, 0.1])

    opt = make()
    weights = make_weights()
    run(opt, weights, 0, 2)
    restored = make().from_bytes(opt.to_bytes())
    assert restored.schedules["learn_rate"].attrs["values"] == [0.01, 0.02, 0.03]
    other = {k: w.copy() for k, w in weights.items()}
    run(opt, weights, 2, 6)
    run(restored, other, 2, 6)
    assert_same_state(opt, restored)
    assert restored.learn_rate == 0.03 and restored.grad_clip == 0.1


# --- 4. keys ----------------------------------------------------------------------

GOOD_KEYS = [
    0,
    7,
    -3,
    2**40,
    "W",
    "",
    "0",
    "ü/ß\n",
    (0, "W"),
    (12, "b"),
    ("0", 0),
    (),
    ("W",),
    (1, (2, ("x", 3))),
    ((1, 2), (3, ("y",)), ()),
]


def typed(key):
    if isinstance(key, tuple):
        return ("tuple", [typed(k) for k in key])
    return (type(key).__name__, key)


def test_keys_round_trip_with_their_types():
    opt = optsvc.Adam(0.01)
    for i, key in enumerate(GOOD_KEYS):
        w = np.full(2 + i % 3, 0.5, dtype="f")
        opt(key, w, np.ones_like(w))
        if i % 2:
            opt(key, w, np.ones_like(w))
    restored = optsvc.Adam(0.01).from_bytes(opt.to_bytes())
    assert sorted(map(repr, map(typed, restored.nr_update))) == sorted(
        map(repr, map(typed, GOOD_KEYS))
    )
    assert list(restored.nr_update) == list(opt.nr_update)
    assert restored.nr_update == opt.nr_update
    for name in ("mom1", "mom2", "averages"):
        saved, loaded = getattr(opt, name), getattr(restored, name)
        assert [typed(k) for k in saved] == [typed(k) for k in loaded], name
    assert_same_state(opt, restored)


@pytest.mark.parametrize(
    "key",
    [frozenset({1, 2}), 1.5, (1, 2.5), ("W", (0, frozenset())), None, b"W", True],
    ids=repr,
)
def test_unsupported_key_is_a_clear_error_at_save_time(key):
    opt = optsvc.Adam(0.01)
    w = np.ones(3, dtype="f")
    opt((0, "W"), w, np.ones_like(w))
    opt(key, w.copy(), np.ones_like(w))  # any hashable key trains
    with pytest.raises(StateError, match="cannot save parameter key") as info:
        opt.to_bytes()
    assert "ints, strings or tuples" in str(info.value)


# --- 5. loading never runs code; bad input ----------------------------------------


class Payload:
    """Unpickling this creates the file `path`."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def trained(kind="Adam", lr="plateau"):
    opt = build(kind, lr)
    run(opt, make_weights(), 0, 9)
    return opt


def assert_refused(data, match, target=None):
    target = target if target is not None else trained("RAdam", "nested_plateau")
    before = snapshot(target)
    with pytest.raises(StateError, match=match):
        target.from_bytes(data)
    assert_snapshot_equal(before, snapshot(target))
    # and the target still trains
    run(target, make_weights(), 9, 10)


def test_the_planted_payload_is_live(tmp_path):
    """The test's payload does run when loaded with pickle allowed (so the
    refusal tests below are meaningful)."""
    marker = tmp_path / "ran"
    buf = io.BytesIO()
    np.savez(buf, m0=np.array([Payload(marker)], dtype=object))
    np.load(io.BytesIO(buf.getvalue()), allow_pickle=True)["m0"]
    assert marker.exists()


@pytest.mark.parametrize("member", ["m0", "ema1", "__meta__", "extra"])
def test_pickle_member_in_archive_is_refused_without_running(tmp_path, member):
    marker = tmp_path / "ran"
    meta, arrays = archive_contents(trained())
    arrays = dict(arrays)
    evil = np.array([Payload(marker), 1], dtype=object)
    buf = io.BytesIO()
    if member == "__meta__":
        arrays["__meta__"] = evil
    else:
        arrays[member] = evil
        arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(buf, allow_pickle=True, **arrays)
    assert_refused(buf.getvalue(), "not a readable optsvc state archive")
    assert not marker.exists()


def test_raw_pickle_and_npy_pickle_are_refused_without_running(tmp_path):
    marker = tmp_path / "ran"
    assert_refused(pickle.dumps(Payload(marker)), "not a readable")
    assert_refused(pickle.dumps({"m0": Payload(marker)}, protocol=0), "not a readable")
    buf = io.BytesIO()
    np.save(buf, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    assert_refused(buf.getvalue(), "not a readable")
    assert not marker.exists()


def test_a_single_npy_array_is_refused():
    buf = io.BytesIO()
    np.save(buf, np.arange(4, dtype=np.uint8))
    assert_refused(buf.getvalue(), "not a readable optsvc state archive")


def test_from_disk_refuses_a_pickle_file(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "opt.bin"
    path.write_bytes(pickle.dumps(Payload(marker)))
    target = trained()
    before = snapshot(target)
    with pytest.raises(StateError):
        target.from_disk(path)
    assert_snapshot_equal(before, snapshot(target))
    assert not marker.exists()


@pytest.mark.parametrize("cut", [0, 1, 4, 30, 200, -200, -22, -1])
def test_truncated_bytes_are_refused(cut):
    data = trained().to_bytes()
    assert_refused(data[:cut], "not a readable optsvc state archive")


@pytest.mark.parametrize("seed", range(3))
def test_random_bytes_are_refused(seed):
    data = np.random.default_rng(seed).bytes(2000)
    assert_refused(data, "not a readable optsvc state archive")
    assert_refused(b"PK\x03\x04" + data, "not a readable optsvc state archive")


def test_flipped_byte_in_an_array_member_is_refused():
    opt = trained()
    data = opt.to_bytes()
    raw = opt.mom1[(0, "W")].tobytes()
    at = data.find(raw)
    assert at > 0
    for offset in (0, 5, len(raw) - 1):
        bad = bytearray(data)
        bad[at + offset] ^= 0x10
        assert_refused(bytes(bad), "CRC|checksum|corrupt")


def test_changed_array_with_valid_zip_is_refused_by_the_checksum():
    meta, arrays = archive_contents(trained())
    arrays = dict(arrays)
    arrays["v1"] = arrays["v1"].copy()
    arrays["v1"][0] = np.nextafter(arrays["v1"][0], np.float32(1))
    assert_refused(archive(meta, arrays), "checksum does not match")
    arrays = dict(archive_contents(trained())[1], stray=np.zeros(2, "f"))
    assert_refused(archive(meta, arrays), "checksum does not match")


def test_flipped_bytes_anywhere_are_refused_or_harmless():
    """Sampled single-byte corruption: a StateError, or (zip header fields
    that numpy ignores, such as timestamps) the same state as the original."""
    opt = trained()
    data = opt.to_bytes()
    rng = np.random.default_rng(1)
    offsets = sorted(
        set(rng.integers(0, len(data), 250)) | set(range(len(data) - 120, len(data)))
    )
    accepted = 0
    for offset in offsets:
        bad = bytearray(data)
        bad[offset] ^= int(rng.integers(1, 256))
        target = build("SGD", "float")
        try:
            target.from_bytes(bytes(bad))
        except StateError:
            continue
        accepted += 1
        assert_same_state(opt, target)
    assert accepted < len(offsets) / 2


def test_wrong_format_name_is_refused():
    meta, arrays = archive_contents(trained())
    assert_refused(archive(dict(meta, format="thinc.optimizer"), arrays), "format")
    no_format = {k: v for k, v in meta.items() if k != "format"}
    assert_refused(archive(no_format, arrays), "format")


@pytest.mark.parametrize("version", [1, 99, 0, "2", None])
def test_other_versions_are_refused(version):
    meta, arrays = archive_contents(trained())
    assert_refused(archive(dict(meta, version=version), arrays), "version")


def test_missing_or_bad_meta_is_refused():
    meta, arrays = archive_contents(trained())
    assert_refused(fileio.encode_arrays(arrays), "metadata is missing")
    assert_refused(archive(meta, arrays, meta_bytes=b"{not json"), "metadata")
    assert_refused(archive(meta, arrays, meta_bytes=b"\xff\xfe\x00"), "metadata")
    assert_refused(archive(meta, arrays, meta_bytes=b"[1, 2]"), "not a JSON object")
    assert_refused(archive(meta, arrays, meta_bytes=b'"x"'), "not a JSON object")


@pytest.mark.parametrize(
    "name,value,match",
    [
        ("m0", lambda a: a[:-1], "bad m0"),
        ("m0", lambda a: a.reshape(4, 3), "bad m0"),
        ("v2", lambda a: a.astype("float64"), "bad v2"),
        ("v1", lambda a: a.astype("int32"), "bad v1"),
        ("ema0", lambda a: a.reshape(-1), "bad averages"),
        ("ema1", lambda a: a.astype("float16"), "bad averages"),
        ("ema2", lambda a: np.zeros((3, 3), "f"), "bad averages"),
    ],
)
def test_shape_or_dtype_mismatch_is_refused(name, value, match):
    meta, arrays = archive_contents(trained())
    arrays = dict(arrays)
    arrays[name] = value(arrays[name])
    assert_refused(archive(meta, arrays, rehash=True), match)


@pytest.mark.parametrize("name", ["m1", "v1", "ema2"])
def test_missing_array_member_is_refused(name):
    meta, arrays = archive_contents(trained())
    arrays = {k: v for k, v in arrays.items() if k != name}
    assert_refused(archive(meta, arrays, rehash=True), "optimizer state")


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.pop("keys"),
        lambda m: m.pop("schedules"),
        lambda m: m.pop("settings"),
        lambda m: m.pop("rule"),
        lambda m: m.update(rule="lamb"),
        lambda m: m.update(settings={"use_radam": 1, "L2_is_weight_decay": True}),
        lambda m: m.update(settings={"use_radam": False}),
        lambda m: m.update(sums=[0.0, -1.0]),
        lambda m: m.pop("step"),
        lambda m: m.update(step="many"),
        lambda m: m.update(keys=[{"key": [0, "W"]}]),
        lambda m: m.update(keys=[{"key": {"a": 1}, "shape": [3], "nr": 1}]),
        lambda m: m.update(last_score=[1]),
        lambda m: m.update(radam_buffer=5),
        lambda m: m["schedules"].update(learn_rate=[1, 2]),
        lambda m: m["schedules"]["learn_rate"].pop("attrs"),
    ],
)
def test_malformed_meta_is_refused(change):
    meta, arrays = archive_contents(trained())
    meta = json.loads(json.dumps(meta))
    change(meta)
    assert_refused(archive(meta, arrays), "optimizer state|schedule")


def test_unknown_schedule_name_is_refused():
    meta, arrays = archive_contents(trained())
    meta = json.loads(json.dumps(meta))
    meta["schedules"]["beta2"]["name"] = "no_such_schedule"
    data = archive(meta, arrays, rehash=True)
    assert_refused(data, "'no_such_schedule' schedule of 'beta2'")


def test_schedules_nest_as_deep_as_saved_state_can_hold():
    def nested(depth):
        schedule = optsvc.constant(0.01)
        for _ in range(depth - 1):
            schedule = optsvc.constant_then(0.02, 1, schedule)
        return schedule

    deepest = optsvc.Adam(nested(schedules_base.MAX_DEPTH))
    run(deepest, make_weights(), 0, 3)
    restored = build("Adam", "float").from_bytes(deepest.to_bytes())
    assert_same_state(deepest, restored)
    with pytest.raises(optsvc.ConfigError, match="nests 33 schedules deep"):
        nested(schedules_base.MAX_DEPTH + 1)


# --- 6. atomic to_disk ---------------------------------------------------------


def test_to_disk_leaves_no_temporary_files(tmp_path):
    opt = trained()
    path = tmp_path / "opt.bin"
    opt.to_disk(path)
    run(opt, make_weights(), 9, 12)
    opt.to_disk(str(path))  # overwrite, with a str path
    assert os.listdir(tmp_path) == ["opt.bin"]
    restored = build("SGD", "float").from_disk(path)
    assert_same_state(opt, restored)


def _failing_write(monkeypatch, how):
    if how == "fsync":

        def fsync(fd):
            raise OSError("disk on fire")

        monkeypatch.setattr(os, "fsync", fsync)
    elif how == "replace":

        def replace(src, dst):
            raise OSError("disk on fire")

        monkeypatch.setattr(os, "replace", replace)
    else:  # "open": a file that takes half the data, then fails
        real_open = open

        class Torn:
            def __init__(self, f):
                self.f = f

            def write(self, data):
                self.f.write(data[: len(data) // 2])
                self.f.flush()
                raise OSError("disk full")

            def __getattr__(self, name):
                return getattr(self.f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

        monkeypatch.setattr(
            fileio,
            "open",
            lambda *a, **kw: Torn(real_open(*a, **kw)),
            raising=False,
        )


@pytest.mark.parametrize("how", ["fsync", "open", "replace"])
def test_failed_to_disk_leaves_the_previous_file_intact(tmp_path, monkeypatch, how):
    opt = trained()
    path = tmp_path / "opt.bin"
    opt.to_disk(path)
    saved = build("SGD", "float").from_disk(path)
    old_bytes = path.read_bytes()

    run(opt, make_weights(), 9, 13)
    with monkeypatch.context() as patch:
        _failing_write(patch, how)
        with pytest.raises(OSError, match="disk"):
            opt.to_disk(path)

    assert path.read_bytes() == old_bytes
    assert os.listdir(tmp_path) == ["opt.bin"], "temporary file left behind"
    reloaded = build("Adam", "plateau").from_disk(path)
    assert_same_state(saved, reloaded)


def test_failed_first_to_disk_creates_nothing(tmp_path, monkeypatch):
    opt = trained()

    def fsync(fd):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError):
        opt.to_disk(tmp_path / "opt.bin")
    assert os.listdir(tmp_path) == []


def test_from_disk_of_a_truncated_file_is_a_state_error(tmp_path):
    path = tmp_path / "opt.bin"
    path.write_bytes(trained().to_bytes()[:-10])
    target = trained()
    before = snapshot(target)
    with pytest.raises(StateError):
        target.from_disk(path)
    assert_snapshot_equal(before, snapshot(target))


# --- 7. custom schedules -----------------------------------------------------------


def _my_decay(schedule, step, *, last_score=None, **kwargs):
    """A user's own stateful schedule: counts the scores it has seen."""
    a = schedule.attrs
    if last_score is not None and last_score[0] != a["seen_step"]:
        a["seen_step"] = last_score[0]
        a["seen"] += 1
    return a["rate"] * a["gamma"] ** (step + a["seen"])


def my_schedule(rate=0.01, gamma=0.9):
    attrs = {"rate": rate, "gamma": gamma, "seen": 0, "seen_step": -1}
    attrs["extra"] = {"tags": ["a", "b"], "weight": np.float64(2.0), "flag": True}
    return Schedule("my_decay", _my_decay, attrs=attrs)


def test_custom_schedule_round_trips_into_a_same_named_schedule():
    opt = optsvc.Adam(my_schedule(), beta1=optsvc.plateau(1, 0.9, my_schedule(0.9, 1)))
    weights = make_weights()
    run(opt, weights, 0, 8)
    assert opt.schedules["learn_rate"].attrs["seen"] > 0

    # built with other attributes: the saved ones win, the function is reused
    target = optsvc.Adam(
        my_schedule(0.5, 0.5), beta1=optsvc.plateau(3, 0.1, my_schedule(0.1, 0.1))
    )
    target.from_bytes(opt.to_bytes())
    assert target.schedules["learn_rate"].function is _my_decay
    assert target.schedules["learn_rate"].attrs["rate"] == 0.01
    assert target.schedules["learn_rate"].attrs["extra"]["tags"] == ["a", "b"]
    assert_same_state(opt, target)
    other = {k: w.copy() for k, w in weights.items()}
    for step in range(8, 16):
        run(opt, weights, step, step + 1)
        run(target, other, step, step + 1)
        assert_same_state(opt, target)
    for key in weights:
        assert np.array_equal(weights[key], other[key])


@pytest.mark.parametrize(
    "target",
    [
        lambda: optsvc.Adam(0.01),
        lambda: optsvc.Adam(optsvc.plateau(1, 0.5, optsvc.constant(0.1))),
        lambda: optsvc.Adam(0.01, beta1=my_schedule()),  # same name, other hparam
    ],
)
def test_custom_schedule_without_a_match_is_a_clear_error(target):
    opt = optsvc.Adam(optsvc.plateau(2, 0.5, my_schedule()))
    run(opt, make_weights(), 0, 4)
    t = target()
    run(t, make_weights(), 0, 2)
    assert_refused(opt.to_bytes(), "'my_decay' schedule of 'learn_rate'", target=t)


def test_custom_schedule_with_code_in_its_attrs_cannot_be_saved():
    sched = Schedule("mine", lambda s, step, **kw: s.attrs["f"](step), attrs={})
    sched.attrs["f"] = lambda step: 0.01
    opt = optsvc.Adam(sched)
    with pytest.raises(StateError, match="'learn_rate'.*function"):
        opt.to_bytes()
    arr = Schedule("arr", lambda s, step, **kw: 0.01, attrs={"a": np.zeros(2)})
    with pytest.raises(StateError, match="'L2'"):
        optsvc.Adam(0.01, L2=arr).to_bytes()


def test_custom_schedule_named_like_a_builtin_keeps_its_function():
    """The target's function of that name wins over optsvc's built-in one."""

    def halving(schedule, step, **kw):
        return schedule.attrs["rate"] / 2**step

    def make():
        return optsvc.Adam(Schedule("constant", halving, attrs={"rate": 0.01}))

    opt = make()
    run(opt, make_weights(), 0, 3)
    restored = make().from_bytes(opt.to_bytes())
    assert restored.learn_rate == opt.learn_rate
