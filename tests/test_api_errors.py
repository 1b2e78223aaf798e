"""Bad calls of the Python API: each is a clear ValueError or TypeError,
raised by the call that is wrong (construction, assignment, from_bytes), with
a message naming the argument, and a refused call leaves the optimizer as it
was (issue 15, item 8)."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from state_helpers import archive, contents

import optsvc.schedules as S
from optsvc import Adam, Optimizer, RAdam, StateError
from optsvc.errors import ConfigError, OptsvcError
from optsvc.optim.hyperparams import HPARAM_ARGS
from optsvc.optim.optimizer import Beta1, Eps, LearnRate
from optsvc.spec import MAX_INT

HUGE = 10**400


def _trained() -> Optimizer:
    """An Adam with state for one key, a score and a step past 0."""
    opt = Adam(0.01)
    W = np.ones(4, dtype="f")
    opt((0, "W"), W, np.full(4, 0.5, dtype="f"))
    opt.step_schedules()
    opt.last_score = 0.5
    return opt


def _snapshot(opt: Optimizer) -> tuple:
    """What a refused call must leave as it was."""
    arrays = {
        key: (
            opt.nr_update[key],
            opt.mom1[key].copy(),
            opt.mom2[key].copy(),
            opt.averages[key].copy(),
        )
        for key in opt.nr_update
    }
    return (
        opt.learn_rate,
        opt.L2,
        opt.b1,
        opt.b2,
        opt.eps,
        opt.grad_clip,
        opt.step,
        opt.last_score,
        dict(opt.schedules),
        opt.use_radam,
        repr(arrays),
    )


# --- construction ---

CONSTRUCTION = [
    (lambda: Adam(HUGE), ValueError, "'learn_rate'"),
    (lambda: Optimizer(HUGE), ValueError, "'learn_rate'"),
    (lambda: Optimizer(0.1, beta1=1.5), ValueError, "'beta1'"),
    (lambda: Optimizer(0.1, eps=0), ValueError, "'eps'"),
    (lambda: Optimizer(0.1, L2=[0.1, -1.0]), ValueError, "'L2'"),
    (lambda: Adam(ops="numpy"), TypeError, "'ops'"),
    (lambda: Optimizer(0.1, ops="numpy"), TypeError, "'ops'"),
    (lambda: RAdam(ops=object()), TypeError, "'ops'"),
]


@pytest.mark.parametrize("make,error,named", CONSTRUCTION)
def test_bad_construction_is_a_clear_error(make, error, named):
    with pytest.raises(error) as info:
        make()
    assert named in str(info.value)
    assert type(info.value).__module__.startswith(("optsvc", "builtins"))


# --- assignment ---

ASSIGNMENTS = [
    ("learn_rate", HUGE, "'learn_rate'"),
    ("learn_rate", -HUGE, "'learn_rate'"),
    ("learn_rate", -1.0, "'learn_rate'"),
    ("learn_rate", float("nan"), "'learn_rate'"),
    ("learn_rate", [0.1, HUGE], "'learn_rate'"),
    ("learn_rate", "fast", "'learn_rate'"),
    ("b1", 1.0, "'beta1'"),
    ("b1", 1.5, "'beta1'"),
    ("b2", -0.1, "'beta2'"),
    ("eps", 0, "'eps'"),
    ("grad_clip", math.inf, "'grad_clip'"),
    ("L2", [0.0, -1.0], "'L2'"),
    ("last_score", HUGE, "last_score"),
    ("last_score", float("nan"), "last_score"),
    ("last_score", (-1, 0.5), "last_score"),
    ("last_score", ("a", 0.5), "last_score"),
    ("last_score", (2**64, 0.5), "last_score"),
    ("last_score", "good", "last_score"),
]


@pytest.mark.parametrize("attr,value,named", ASSIGNMENTS)
def test_bad_assignment_is_refused_and_changes_nothing(attr, value, named):
    opt = _trained()
    before = _snapshot(opt)
    with pytest.raises(ValueError) as info:
        setattr(opt, attr, value)
    assert isinstance(info.value, OptsvcError)
    assert named in str(info.value)
    assert _snapshot(opt) == before
    # and the optimizer still updates
    opt((0, "W"), np.ones(4, dtype="f"), np.ones(4, dtype="f"))


@pytest.mark.parametrize("name", ["learn_rate", "beta1", "eps"])
def test_setter_ranges_are_the_factories_declarations(name):
    """One definition: the setters' ranges are the `Arg`s on the signatures."""
    alias = {"learn_rate": LearnRate, "beta1": Beta1, "eps": Eps}[name]
    assert alias.__metadata__[0] is HPARAM_ARGS[name]
    attr = {"beta1": "b1"}.get(name, name)
    opt = Adam()
    expected = re.escape(HPARAM_ARGS[name].expected())
    with pytest.raises(ConfigError, match=expected):
        setattr(opt, attr, -1.0)


def test_infinite_float_scores_stay_allowed():
    opt = _trained()
    opt.last_score = float("-inf")  # the worst score, e.g. a failed evaluation
    assert opt.last_score == (1, float("-inf"))


def test_nan_score_does_not_reach_plateau():
    """A NaN score used to count as a plateau while every score improved."""
    opt = Adam(S.plateau(1, 0.5, S.constant(0.1)))
    for step, score in enumerate([0.1, 0.2, 0.3]):
        opt.last_score = (step, score)
        assert opt.learn_rate == 0.1
        with pytest.raises(ConfigError, match="last_score"):
            opt.last_score = (step, float("nan"))
        opt.step_schedules()
    assert opt.learn_rate == 0.1


# --- calls ---


@pytest.mark.parametrize("store", [None, {}, np.ones(3, dtype="f")])
def test_update_store_of_something_else_is_a_type_error(store):
    opt = _trained()
    before = _snapshot(opt)
    with pytest.raises(TypeError, match="update_store needs a ParamStore"):
        opt.update_store(store)
    assert _snapshot(opt) == before


def _to_one():
    yield 0.9
    while True:
        yield 1.0


def test_beta1_schedule_reaching_one_is_a_clear_error():
    """A generator is only known step by step: the update that meets 1.0
    refuses it, by name, before changing the weights."""
    opt = Adam(0.01, beta1=_to_one())
    W = np.ones(4, dtype="f")
    opt((0, "W"), W, np.ones(4, dtype="f"))
    opt.step_schedules()
    W_before = W.copy()
    with pytest.raises(ConfigError, match=r"'beta1' must be in \[0, 1\)"):
        opt((0, "W"), W, np.ones(4, dtype="f"))
    np.testing.assert_array_equal(W, W_before)
    assert opt.nr_update[(0, "W")] == 1


# --- schedules at huge steps ---

SCHEDULES = {
    "constant": lambda: S.constant(0.1),
    "constant_then": lambda: S.constant_then(0.1, 5, S.constant(0.2)),
    "decaying": lambda: S.decaying(0.1, 1e-4),
    "compounding": lambda: S.compounding(1.0, 10.0, 1.001),
    "warmup_linear": lambda: S.warmup_linear(0.1, 10, 100),
    "slanted_triangular": lambda: S.slanted_triangular(0.1, 100),
    "cyclic_triangular": lambda: S.cyclic_triangular(0.01, 0.1, 10),
    "plateau": lambda: S.plateau(2, 0.5, S.constant(0.1)),
    "warmup_cosine": lambda: S.warmup_cosine(0.1, 10, 100),
    "exponential_decay": lambda: S.exponential_decay(0.1, 0.5, 10),
    "step_decay": lambda: S.step_decay(0.1, 10, 0.5),
    "piecewise_constant": lambda: S.piecewise_constant([10], [0.1, 0.01]),
    "linear_warmup": lambda: S.linear_warmup(10, S.constant(0.1)),
    "one_cycle": lambda: S.one_cycle(0.1, 100),
    "list": lambda: S.to_schedule("learn_rate", [0.1, 0.2]),
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_past_2_63_is_a_value_error(name):
    schedule = SCHEDULES[name]()
    with pytest.raises(ValueError, match=r"step must be below 2\*\*63"):
        schedule(HUGE)
    with pytest.raises(ValueError, match="step must be below 2"):
        schedule(MAX_INT + 1)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_at_the_largest_step_is_finite(name):
    assert math.isfinite(SCHEDULES[name]()(MAX_INT))


# --- from_bytes ---


def _crafted(mutate) -> bytes:
    """A saved Adam, changed by `mutate(meta, arrays)`, checksum recomputed."""
    meta, arrays = contents(_trained().to_bytes())
    mutate(meta, arrays)
    return archive(meta, arrays, rehash=True)


def _set(path, value):
    def mutate(meta, arrays):
        *head, last = path
        target = meta
        for part in head:
            target = target[part]
        target[last] = value

    return mutate


def _drop_schedule(meta, arrays):
    del meta["schedules"]["beta1"]


def _nan_moment(meta, arrays):
    arrays["m0"] = arrays["m0"].copy()
    arrays["m0"][1] = np.nan


def _negative_v(meta, arrays):
    arrays["v0"] = -arrays["v0"] - 1.0


def _nested(depth):
    def mutate(meta, arrays):
        deep: list = []
        for _ in range(depth):
            deep = [deep]
        meta["extra"] = deep

    return mutate


def _rate(hparam, value):
    return _set(["schedules", hparam, "attrs", "rate"], value)


FROM_BYTES = [
    ("count -1", _set(["keys", 0, "nr"], -1), "update count"),
    ("count -10", _set(["keys", 0, "nr"], -10), "update count"),
    ("count inf", _set(["keys", 0, "nr"], math.inf), "update count"),
    ("count 2**64", _set(["keys", 0, "nr"], 2**64), "update count"),
    ("count float", _set(["keys", 0, "nr"], 1.0), "update count"),
    ("step -1", _set(["step"], -1), "the step"),
    ("step inf", _set(["step"], math.inf), "the step"),
    ("shape -1", _set(["keys", 0, "shape"], [-1]), "shape"),
    ("shape huge", _set(["keys", 0, "shape"], [2**40, 2**40]), "size"),
    ("learn_rate -1", _rate("learn_rate", -1.0), "'learn_rate'"),
    ("beta1 1.5", _rate("beta1", 1.5), "'beta1'"),
    ("beta2 1.0", _rate("beta2", 1.0), "'beta2'"),
    ("eps 0", _rate("eps", 0.0), "'eps'"),
    ("grad_clip inf", _rate("grad_clip", math.inf), "'grad_clip'"),
    ("missing schedule", _drop_schedule, "schedules"),
    ("score nan", _set(["last_score"], [1, math.nan]), "last_score"),
    ("score step -1", _set(["last_score"], [-1, 0.5]), "last_score"),
    ("use_radam str", _set(["use_radam"], "yes"), "'use_radam'"),
    ("radam buffer", _set(["radam_buffer", 0], ["a", None, None]), "RAdam"),
    ("nested 200", _nested(200), "nests deeper"),
    ("nan moment", _nan_moment, "m0"),
    ("negative v", _negative_v, "negative second moment"),
]


@pytest.mark.parametrize(
    "mutate,named", [c[1:] for c in FROM_BYTES], ids=[c[0] for c in FROM_BYTES]
)
def test_from_bytes_refuses_lying_state_and_changes_nothing(mutate, named):
    data = _crafted(mutate)
    opt = _trained()
    opt.to_bytes()
    before = _snapshot(opt)
    with pytest.raises(StateError) as info:
        opt.from_bytes(data)
    assert isinstance(info.value, OptsvcError) and isinstance(info.value, ValueError)
    assert named in str(info.value)
    assert _snapshot(opt) == before


def test_deeply_nested_metadata_is_refused_before_parsing():
    """Too deep for json (a RecursionError before), checksum wrong or not."""
    depth = 100_000
    meta, arrays = contents(_trained().to_bytes())
    text = json.dumps(meta)[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}"
    opt = _trained()
    before = _snapshot(opt)
    with pytest.raises(StateError, match="nests deeper than"):
        opt.from_bytes(archive(meta, arrays, meta_bytes=text.encode()))
    assert _snapshot(opt) == before


def test_brackets_inside_strings_do_not_count_as_nesting():
    key = '[[[[{{{{"\\"' * 50
    opt = Adam(0.01)
    opt((0, key), np.ones(2, dtype="f"), np.ones(2, dtype="f"))
    restored = Adam(0.01).from_bytes(opt.to_bytes())
    assert restored.nr_update[(0, key)] == 1
