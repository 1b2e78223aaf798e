"""The Optimizer's behaviour as DESIGN.md §1 states it, on every backend."""

import math

import numpy as np
import pytest

import optsvc
from optsvc import SGD, Adam, Optimizer, RAdam, Schedule, decaying, plateau
from optsvc.schedules.thinc import constant


def arrays(ops, shape=(4, 3), seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    w = rng.uniform(-1, 1, shape).astype(np.float32)
    g = (rng.uniform(-1, 1, shape) * scale).astype(np.float32)
    return ops.asarray(w), ops.asarray(g)


# --- DESIGN §1 examples ---


def test_spec_decaying_example_is_exact():
    opt = Adam(learn_rate=decaying(0.001, 1e-4))
    assert opt.learn_rate == 0.001
    opt.step_schedules()
    assert opt.learn_rate == 0.000999900009999
    assert opt.step == 1


def test_defaults_are_thinc_9s():
    adam = Adam()
    assert (adam.learn_rate, adam.b1, adam.b2, adam.eps) == (0.001, 0.9, 0.999, 1e-8)
    assert (adam.L2, adam.grad_clip) == (0.0, 1.0)
    assert adam.L2_is_weight_decay and adam.averages == {}
    assert RAdam().learn_rate == 0.001 and RAdam().use_radam
    sgd = SGD(0.1)
    assert (sgd.b1, sgd.b2, sgd.grad_clip, sgd.L2) == (0.0, 0.0, 1.0, 0.0)
    assert Optimizer(0.1, use_averages=False).averages is None


def test_signatures_match_the_contract():
    import inspect

    def kwonly(fn):
        params = inspect.signature(fn).parameters.values()
        return [p.name for p in params if p.kind is p.KEYWORD_ONLY]

    assert kwonly(Optimizer) == [
        "L2", "beta1", "beta2", "eps", "grad_clip", "use_averages", "use_radam",
        "L2_is_weight_decay", "ops",
    ]  # fmt: skip
    assert kwonly(SGD) == [
        "L2",
        "grad_clip",
        "use_averages",
        "L2_is_weight_decay",
        "ops",
    ] or kwonly(SGD) == ["L2", "grad_clip", "L2_is_weight_decay", "use_averages", "ops"]
    assert set(kwonly(Adam)) == {
        "L2", "beta1", "beta2", "eps", "grad_clip", "use_averages",
        "L2_is_weight_decay", "ops",
    }  # fmt: skip
    assert {"weight_decay", "L2", "L2_is_weight_decay"} <= set(kwonly(RAdam))


def test_call_updates_in_place_and_zeroes_gradient(ops):
    opt = Adam(0.01, ops=ops)
    w, g = arrays(ops)
    w0 = ops.to_numpy(w).copy()
    w_out, g_out = opt((0, "W"), w, g)
    assert w_out is w and g_out is g
    assert not np.array_equal(ops.to_numpy(w), w0)
    assert not ops.to_numpy(g).any()
    assert opt.nr_update[(0, "W")] == 1


def test_empty_gradient_is_a_no_op(ops):
    opt = Adam(0.01, ops=ops)
    w, g = ops.alloc((0, 3)), ops.alloc((0, 3))
    assert opt((0, "W"), w, g) == (w, g)
    assert (0, "W") not in opt.nr_update


def test_sgd_step_by_hand(ops):
    opt = SGD(0.1, grad_clip=0.0, use_averages=False, ops=ops)
    w, g = arrays(ops)
    expected = ops.to_numpy(w) - np.float32(0.1) * ops.to_numpy(g)
    opt((0, "W"), w, g)
    np.testing.assert_array_equal(ops.to_numpy(w), expected)


def test_adam_first_step_moves_each_weight_by_about_lr(ops):
    # With bias correction, Adam's first step is lr * g / (|g| + eps).
    opt = Adam(0.01, grad_clip=0.0, use_averages=False, ops=ops)
    w, g = arrays(ops)
    w0, g0 = ops.to_numpy(w).copy(), ops.to_numpy(g).copy()
    opt((0, "W"), w, g)
    np.testing.assert_allclose(w0 - ops.to_numpy(w), 0.01 * np.sign(g0), rtol=1e-4)


def test_clipping_bounds_the_gradient_norm(ops):
    opt = SGD(1.0, grad_clip=0.5, use_averages=False, ops=ops)
    w, g = arrays(ops, scale=10.0)
    w0 = ops.to_numpy(w).copy()
    opt((0, "W"), w, g)
    assert math.isclose(np.linalg.norm(w0 - ops.to_numpy(w)), 0.5, rel_tol=1e-5)


def test_weight_decay_after_update_and_averages(ops):
    opt = SGD(0.1, L2=0.5, grad_clip=0.0, ops=ops)
    w, g = arrays(ops)
    w0, g0 = ops.to_numpy(w).copy(), ops.to_numpy(g).copy()
    opt((0, "W"), w, g)
    f = np.float32
    after_sgd = w0 - f(0.1) * g0
    expected = after_sgd - f(0.1 * 0.5) * after_sgd
    np.testing.assert_array_equal(ops.to_numpy(w), expected)
    # ema starts at zero; d = (1 + 1) / (10 + 1) at the first update.
    d = 2.0 / 11.0
    ema = np.zeros_like(w0) - f(1 - d) * (np.zeros_like(w0) - expected)
    np.testing.assert_array_equal(ops.to_numpy(opt.averages[(0, "W")]), ema)


def test_l2_as_gradient_term(ops):
    opt = SGD(0.1, L2=0.5, L2_is_weight_decay=False, grad_clip=0.0, ops=ops)
    w, g = arrays(ops)
    w0, g0 = ops.to_numpy(w).copy(), ops.to_numpy(g).copy()
    opt((0, "W"), w, g)
    f = np.float32
    np.testing.assert_array_equal(ops.to_numpy(w), w0 - f(0.1) * (g0 + f(0.5) * w0))


def test_lr_scale_applies_to_every_optimizer(ops):
    moved = {}
    every = ("SGD", "Adam", "RAdam", "Lion", "AdEMAMix", "ScheduleFreeAdamW",
             "ScheduleFreeSGD")  # fmt: skip
    for name in every:
        for scale in (1.0, 0.5):
            opt = getattr(optsvc, name)(0.01, grad_clip=0.0, ops=ops)
            w, g = arrays(ops)
            w0 = ops.to_numpy(w).copy()
            opt((0, "W"), w, g, lr_scale=scale)
            moved[name, scale] = np.abs(w0 - ops.to_numpy(w)).sum()
        assert moved[name, 0.5] == pytest.approx(moved[name, 1.0] / 2, rel=1e-4)


def test_per_key_update_counts(ops):
    opt = Adam(0.01, ops=ops)
    for step in range(5):
        for key in [(0, "W"), (0, "b")] if step % 2 == 0 else [(0, "W")]:
            w, g = arrays(ops, seed=step)
            opt(key, w, g)
        opt.step_schedules()
    assert opt.nr_update == {(0, "W"): 5, (0, "b"): 3}
    assert opt.step == 5


# --- hyperparameters ---


@pytest.mark.parametrize(
    "attr,arg", [("learn_rate", "learn_rate"), ("L2", "L2"), ("b1", "beta1"),
                 ("b2", "beta2"), ("eps", "eps"), ("grad_clip", "grad_clip")]
)  # fmt: skip
def test_every_hyperparameter_takes_every_form(attr, arg):
    values = [0.5, 0.25, 0.125]
    forms = {
        "float": (0.5, [0.5, 0.5, 0.5, 0.5]),
        "int": (0, [0, 0, 0, 0]) if arg not in ("eps",) else (1, [1, 1, 1, 1]),
        "list": (values, values + [0.125]),
        "generator": ((v for v in values), values + [0.125]),
        "schedule": (decaying(0.5, 1.0), [0.5, 0.25, 0.5 / 3, 0.125]),
    }
    for given, expected in forms.values():
        kwargs = {arg: given}
        if arg == "beta1" and given == 0:
            kwargs["beta2"] = 0  # beta1 = 0 is SGD, which needs beta2 = 0 too
        opt = Adam(**kwargs) if arg != "learn_rate" else Adam(given)
        seen = []
        for _ in range(4):
            seen.append(getattr(opt, attr))
            opt.step_schedules()
        assert seen == pytest.approx(expected, rel=1e-12)
        assert isinstance(seen[0], float)
        assert isinstance(opt.schedules[arg], Schedule)


@pytest.mark.parametrize(
    "arg", ["learn_rate", "L2", "beta1", "beta2", "eps", "grad_clip"]
)
@pytest.mark.parametrize(
    "bad", [[], "0.1", None, {"rate": 1}, True, iter([]), float("nan"), object()]
)
def test_bad_hyperparameter_is_a_value_error_naming_it(arg, bad):
    with pytest.raises(ValueError, match=arg):
        Optimizer(**{"learn_rate": 0.1, arg: bad})


@pytest.mark.parametrize(
    "arg,value",
    [("learn_rate", -0.1), ("beta1", 1.0), ("beta2", -0.1), ("eps", 0.0),
     ("grad_clip", -1.0), ("L2", -1e-3), ("beta1", [0.9, 1.5])],
)  # fmt: skip
def test_out_of_range_hyperparameter_names_it(arg, value):
    with pytest.raises(ValueError, match=arg):
        Optimizer(**{"learn_rate": 0.1, arg: value})


def test_assigning_a_hyperparameter_replaces_its_schedule():
    opt = Adam(0.1)
    opt.learn_rate = [0.3, 0.2]
    assert opt.learn_rate == 0.3 and opt.schedules["learn_rate"].name == "list"
    opt.step_schedules()
    assert opt.learn_rate == 0.2
    opt.b1 = 0.5
    assert opt.b1 == 0.5 and opt.schedules["beta1"].attrs["rate"] == 0.5
    opt.grad_clip = decaying(1.0, 1.0)
    assert opt.grad_clip == 0.5  # step 1
    with pytest.raises(ValueError, match="beta2"):
        opt.b2 = 2.0
    assert opt.b2 == 0.999  # a refused value leaves the old one


def test_schedules_mapping_is_read_only():
    opt = Adam(0.1)
    assert set(opt.schedules) == {
        "learn_rate",
        "L2",
        "beta1",
        "beta2",
        "eps",
        "grad_clip",
    }
    with pytest.raises(TypeError):
        opt.schedules["learn_rate"] = constant(1.0)


def test_schedules_are_evaluated_once_per_step():
    calls = []

    def fn(schedule, step, **extra):
        calls.append(step)
        return 0.01

    opt = Adam(Schedule("counting", fn))  # evaluates step 0 to check it
    for _ in range(3):
        for k in range(10):
            w, g = arrays(optsvc.get_current_ops(), seed=k)
            opt((k, "W"), w, g)
        opt.step_schedules()
    assert calls == [0, 1, 2]


def test_schedules_receive_key_and_last_score():
    seen = []

    def fn(schedule, step, *, key, last_score):
        seen.append((step, key, last_score))
        return 0.01

    opt = Adam(Schedule("spy", fn))
    opt.last_score = 0.5
    assert opt.learn_rate == 0.01
    assert seen[-1] == (0, None, (0, 0.5))


# --- last_score and plateau ---


def test_last_score_float_and_tuple():
    opt = Adam(0.1)
    assert opt.last_score is None
    opt.step_schedules()
    opt.step_schedules()
    opt.last_score = 0.7
    assert opt.last_score == (2, 0.7)
    opt.last_score = (10, 0.9)
    assert opt.last_score == (10, 0.9)
    for bad in ["high", (1, 2, 3), ("a", 1.0)]:
        with pytest.raises(ValueError, match="last_score"):
            opt.last_score = bad


def test_plateau_lowers_the_learning_rate_on_a_flat_score():
    opt = Adam(plateau(2, 0.5, constant(0.1)))
    rates = []
    for score in (0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.7):
        opt.last_score = score
        rates.append(opt.learn_rate)
        opt.step_schedules()
    assert rates == [0.1, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025]
    assert opt.schedules["learn_rate"].attrs["state"].n_plateaus == 2


# --- RAdam ---


def test_radam_weight_decay_is_l2_as_decay():
    a = RAdam(0.01, weight_decay=0.1)
    assert a.L2 == 0.1 and a.L2_is_weight_decay
    b = RAdam(0.01, L2=0.1, L2_is_weight_decay=False)
    assert b.L2 == 0.1 and not b.L2_is_weight_decay
    with pytest.raises(ValueError, match="weight_decay"):
        RAdam(0.01, weight_decay=0.1, L2=0.1)


def test_beta1_zero_with_beta2_is_refused_clearly(ops):
    with pytest.raises(ValueError, match="'beta1' = 0 with 'beta2' = 0.999"):
        Adam(0.01, beta1=0.0, ops=ops)
    # A schedule that reaches beta1 = 0 later is refused at that update.
    opt = Adam(0.01, beta1=[0.9, 0.0], ops=ops)
    w, g = arrays(ops)
    opt((0, "W"), w, g)
    opt.step_schedules()
    with pytest.raises(ValueError, match=r"'beta1' = 0 .*\(key \(0, 'W'\)\)"):
        opt((0, "W"), w, g)


# --- bad input ---


def test_bad_arrays_are_clear_errors_naming_the_key(ops):
    opt = Adam(0.01, ops=ops)
    w, g = arrays(ops)
    with pytest.raises(ValueError, match=r"\(3, 'W'\).*shape"):
        opt((3, "W"), w, ops.alloc((5,)))
    with pytest.raises(ValueError, match=r"\(3, 'W'\).*dtype"):
        opt((3, "W"), w, g.astype("float64"))
    with pytest.raises(ValueError, match=r"\(3, 'W'\).*float32"):
        opt((3, "W"), w.astype("float64"), g.astype("float64"))
    with pytest.raises(TypeError, match=r"\(3, 'W'\)"):
        opt((3, "W"), w, [1.0, 2.0])
    opt((3, "W"), w, g)
    w2, g2 = arrays(ops, shape=(2, 2))
    with pytest.raises(ValueError, match=r"\(3, 'W'\).*shape \(4, 3\)"):
        opt((3, "W"), w2, g2)
    assert opt.nr_update == {(3, "W"): 1}  # refused calls changed nothing


def test_non_contiguous_arrays_are_refused():
    opt = Adam(0.01)
    w, g = arrays(optsvc.get_current_ops(), shape=(4, 6))
    with pytest.raises(ValueError, match="contiguous"):
        opt((0, "W"), w[:, ::2], g[:, ::2])


def test_mixed_devices_are_refused_with_the_fix():
    class FakeGpuArray:
        shape, dtype, size = (3,), np.dtype("float32"), 3

    opt = Adam(0.01)
    w, g = arrays(optsvc.get_current_ops(), shape=(3,))
    opt((0, "W"), w, g)
    with pytest.raises((ValueError, TypeError), match=r"\(0, 'W'\)"):
        opt((0, "W"), w, FakeGpuArray())


def test_to_gpu_without_cupy_is_a_clear_error():
    from optsvc.backends import has_cupy

    if has_cupy():
        pytest.skip("cupy is installed here; the real GPU tests cover to_gpu")
    with pytest.raises(RuntimeError, match="optsvc\\[cuda13\\]"):
        Adam(0.01).to_gpu()


def test_to_cpu_keeps_numbers(ops):
    opt = Adam(0.01, ops=ops)
    w, g = arrays(ops)
    opt((0, "W"), w, g)
    m = ops.to_numpy(opt.mom1[(0, "W")]).copy()
    opt.to_cpu()
    assert isinstance(opt.mom1[(0, "W")], np.ndarray)
    np.testing.assert_array_equal(opt.mom1[(0, "W")], m)
    np.testing.assert_array_equal(
        opt.averages[(0, "W")].reshape(-1), opt.state.slots[(0, "W")].ema
    )


# --- the state: one owner, read-only views ---


def test_moments_averages_and_counts_are_views_of_the_one_state(ops):
    opt = Adam(0.01, ops=ops)
    w, g = arrays(ops)
    opt((0, "W"), w, g)
    slot = opt.state.slots[(0, "W")]
    assert opt.mom1[(0, "W")] is slot.state[0] and opt.mom2[(0, "W")] is slot.state[1]
    assert opt.averages[(0, "W")].shape == w.shape
    assert np.shares_memory(
        ops.to_numpy(opt.averages[(0, "W")]), ops.to_numpy(slot.ema)
    )
    before = ops.to_numpy(opt.mom1[(0, "W")]).copy()
    opt((0, "W"), w, arrays(ops, seed=1)[1])
    # the view shows the new state, nothing was copied or synchronised
    assert not np.array_equal(ops.to_numpy(opt.mom1[(0, "W")]), before)
    assert opt.nr_update[(0, "W")] == 2 == slot.nr
    for view in (opt.mom1, opt.mom2, opt.averages, opt.nr_update):
        with pytest.raises(TypeError):
            view[(1, "W")] = w
    with pytest.raises(AttributeError):
        opt.mom1 = {}


def test_sgd_has_averages_but_no_moments():
    opt = SGD(0.1)
    opt((0, "W"), np.ones(3, "f"), np.ones(3, "f"))
    assert opt.mom1 == {} and len(opt.mom2) == 0 and (0, "W") not in opt.mom1
    assert list(opt.averages) == [(0, "W")] and dict(opt.nr_update) == {(0, "W"): 1}
    with pytest.raises(KeyError):
        opt.mom1[(0, "W")]


def test_hyperparams_at_evaluates_without_stepping():
    opt = Adam(optsvc.warmup_linear(0.1, 10, 100), beta1=[0.9, 0.8])
    at = opt.hyperparams_at(5)
    assert (at.learn_rate, at.beta1, opt.step) == (0.05, 0.8, 0)
    assert at.kernel_b1 == float(np.float32(0.8)) and at.adam and at.betas_supported
    late_nan = Adam(
        Schedule("nan", lambda s, step, **_: 0.1 if step == 0 else math.nan)
    )
    with pytest.raises(ValueError, match="'learn_rate' must be finite"):
        late_nan.hyperparams_at(3)


def test_step_scalars_split_l2_and_weight_decay():
    decoupled = Adam(0.01, L2=0.1).hyperparams_at(0)
    assert (decoupled.l2, decoupled.weight_decay) == (0.0, 0.1)
    in_gradient = Adam(0.01, L2=0.1, L2_is_weight_decay=False).hyperparams_at(0)
    assert (in_gradient.l2, in_gradient.weight_decay) == (0.1, 0.0)
    radam = RAdam(0.01, beta1=0.9).hyperparams_at(0)
    assert radam.kernel_b1 == 0.9 and radam.use_radam  # RAdam's betas unrounded
