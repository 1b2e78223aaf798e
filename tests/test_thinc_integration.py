"""optsvc inside Thinc: entry points, the adapters, a Thinc model trained with
optsvc (per key and through a ParamStore), and optsvc without Thinc.

The spaCy command line is exercised in tests/test_spacy_train.py.
"""

import inspect
import subprocess
import sys
import typing
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest

import optsvc
from optsvc import registries
from optsvc.spec import params_of

thinc_api = pytest.importorskip(
    "thinc.api", reason="Thinc comes with the 'thinc', 'spacy' and 'compare' extras"
)
from optsvc.integrations import thinc as integration  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OPTIMIZERS = ("SGD.v1", "Adam.v1", "RAdam.v1")


def optsvc_schedule_names():
    return sorted(registries.schedules.get_all())


# --- entry points -----------------------------------------------------------------


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_thinc_registry_has_optsvc_optimizers(name):
    made = thinc_api.registry.optimizers.get(f"optsvc.{name}")
    assert made is getattr(integration, name.split(".")[0])


def test_every_optsvc_schedule_is_in_thincs_registry():
    names = optsvc_schedule_names()
    assert "warmup_cosine.v1" in names
    for name in names:
        made = thinc_api.registry.schedules.get(f"optsvc.{name}")
        # The entry wraps the very function that optsvc registers.
        assert made.__wrapped__ is registries.schedules.get(name)
    group = {ep.name for ep in entry_points(group="thinc_schedules")}
    assert {f"optsvc.{n}" for n in names} <= group


def own_functions(registry_name):
    """optsvc's own functions in one of its registries (no third party's)."""
    functions = getattr(registries, registry_name).get_all()
    return {n: f for n, f in functions.items() if f.__module__.startswith("optsvc.")}


ADAPTED = [(r, n) for r in ("optimizers", "schedules") for n in own_functions(r)]


def test_entry_points_name_every_registered_function():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11's")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    groups = pyproject["project"]["entry-points"]
    for registry_name in ("optimizers", "schedules"):
        functions = own_functions(registry_name)
        points = groups[f"thinc_{registry_name}"]
        assert sorted(points) == sorted(f"optsvc.{name}" for name in functions)
        for point, target in points.items():
            module, _, attr = target.partition(":")
            assert module == integration.__name__ and attr in integration.__all__
            func = functions[point.removeprefix("optsvc.")]
            assert getattr(integration, attr).__wrapped__ is func


@pytest.mark.parametrize("registry_name, name", ADAPTED)
def test_each_adapter_takes_the_arguments_of_optsvcs_function(registry_name, name):
    func = own_functions(registry_name)[name]
    adapter = getattr(integration, func.__name__)

    def arguments(f):
        params = inspect.signature(f).parameters.values()
        return [(p.name, p.kind, p.default) for p in params if p.name != "ops"]

    assert arguments(adapter) == arguments(func)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_adapters_annotate_as_thinc_does(name):
    # Each hyperparameter is Thinc's FloatOrSeq (or None, where optsvc's
    # default is None), so confection checks a config as for Thinc's own;
    # other arguments keep optsvc's type.
    from thinc.optimizers import FloatOrSeq

    func = registries.optimizers.get(name)
    hints = typing.get_type_hints(getattr(integration, func.__name__))
    thincs = typing.get_type_hints(thinc_api.registry.optimizers.get(name))
    assert hints.pop("return") is integration.ThincOptimizer
    for param in params_of(func):
        hint = hints.pop(param.name)
        if param.kind == "hyper":
            assert hint == (FloatOrSeq | None if param.optional else FloatOrSeq)
        else:
            assert hint == typing.get_type_hints(func)[param.name]
        if param.name in thincs:  # RAdam's L2 may be None, unlike Thinc's
            assert hint in (thincs[param.name], thincs[param.name] | None)
    assert hints == {}


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize(
    "arg, value",
    [("learn_rate", "true"), ("learn_rate", "null"), ("L2", '{"a": 1}'),
     ("beta1", '"x"'), ("use_averages", '"yes"'), ("L2_is_weight_decay", "3"),
     ("grad_clip", "[0.1, 0.2]"), ("nope", "1")],
)  # fmt: skip
def test_confection_checks_an_adapter_block_as_thincs_own(name, arg, value):
    from confection import ConfigValidationError

    def refused(registered):
        text = f'[optimizer]\n@optimizers = "{registered}"\n{arg} = {value}\n'
        if name == "SGD.v1" and arg != "learn_rate":
            text += "learn_rate = 0.1\n"
        try:
            resolve(text)
        except ConfigValidationError as err:
            return [line for line in str(err).splitlines() if "->" in line]
        except (ValueError, TypeError):  # the function's own check, past confection's
            return None
        return None

    if name == "SGD.v1" and arg == "beta1":
        arg = "nope"  # SGD has no beta1 in either
    assert refused(f"optsvc.{name}") == refused(name)


def test_entry_points_found_in_a_fresh_process_without_importing_optsvc():
    code = (
        "import sys\n"
        "from thinc.api import registry\n"
        "registry.optimizers.get('optsvc.Adam.v1')\n"
        "registry.schedules.get('optsvc.warmup_cosine.v1')\n"
        "print('optsvc' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    # The lookup itself imported optsvc: nothing else asked for it.
    assert out.stdout.strip() == "True"


# --- configs --------------------------------------------------------------------

CONFIG = """
[optimizer]
@optimizers = "optsvc.Adam.v1"
L2 = 0.01
use_averages = true

[optimizer.learn_rate]
@schedules = "optsvc.warmup_cosine.v1"
initial_rate = 0.01
warmup_steps = 2
total_steps = 6
final_rate = 0.001
"""


def resolve(text):
    return thinc_api.registry.resolve(thinc_api.Config().from_str(text))


def test_config_builds_a_thinc_optimizer_driven_by_optsvc():
    opt = resolve(CONFIG)["optimizer"]
    assert isinstance(opt, thinc_api.Optimizer)
    assert isinstance(opt.optimizer, optsvc.Optimizer)
    # The schedule reached optsvc's optimizer as an optsvc Schedule, evaluated
    # by step, not as an iterator.
    assert opt.schedules["learn_rate"].name == "warmup_cosine"
    expected = optsvc.warmup_cosine(0.01, 2, 6, final_rate=0.001)
    seen = []
    for _ in range(8):
        seen.append(opt.learn_rate)
        opt.step_schedules()
    assert seen == [expected(step) for step in range(8)]
    assert opt.step == 8 and opt.L2 == 0.01 and opt.averages == {}


def test_spacy_training_schema_accepts_the_optimizer():
    pytest.importorskip("spacy", reason="spaCy comes with the 'spacy' extra")
    from spacy.schemas import ConfigSchemaTraining
    from spacy.util import load_config, registry

    config = load_config(ROOT / "configs/spacy/tagger.cfg")
    training = registry.resolve(
        config.interpolate()["training"], schema=ConfigSchemaTraining
    )
    assert isinstance(training["optimizer"], integration.ThincOptimizer)
    assert training["optimizer"].schedules["learn_rate"].name == "warmup_cosine"


def test_thincs_own_adam_iterates_an_optsvc_schedule():
    opt = resolve(CONFIG.replace('"optsvc.Adam.v1"', '"Adam.v1"'))["optimizer"]
    assert type(opt) is thinc_api.Optimizer
    expected = optsvc.warmup_cosine(0.01, 2, 6, final_rate=0.001)
    seen = []
    for _ in range(8):
        seen.append(opt.learn_rate)
        opt.step_schedules()
    assert seen == [expected(step) for step in range(8)]


def test_nested_optsvc_schedules_and_bad_arguments():
    opt = resolve(
        """
[optimizer]
@optimizers = "optsvc.RAdam.v1"
weight_decay = 0.01

[optimizer.learn_rate]
@schedules = "optsvc.linear_warmup.v1"
warmup_steps = 2

[optimizer.learn_rate.schedule]
@schedules = "optsvc.constant.v1"
rate = 0.5
"""
    )["optimizer"]
    assert opt.use_radam and opt.L2 == 0.01
    values = []
    for _ in range(4):
        values.append(opt.learn_rate)
        opt.step_schedules()
    assert values == [0.0, 0.25, 0.5, 0.5]
    with pytest.raises(ValueError, match="not both"):
        integration.RAdam(weight_decay=0.01, L2=0.01)


def test_thinc_schedule_iterates_and_calls():
    s = integration.warmup_cosine(1.0, 2, 6, final_rate=0.1)
    assert isinstance(s, integration.ThincSchedule)
    assert iter(s) is s
    assert [next(s) for _ in range(4)] == [s.schedule(i) for i in range(4)]
    assert s(4) == s.schedule(4) and s.name == "warmup_cosine"
    assert s.attrs["final_rate"] == 0.1
    with pytest.raises(TypeError, match="optsvc.Schedule"):
        integration.ThincSchedule(iter([1.0]))


# --- the optimizer adapter -------------------------------------------------------


def test_thinc_optimizer_forwards_the_update_and_the_state(tmp_path):
    opt = integration.Adam(0.01, use_averages=True)
    W, dW = np.ones((2, 3), "f"), np.full((2, 3), 0.5, "f")
    ref = optsvc.Adam(0.01, use_averages=True)
    W2, dW2 = W.copy(), dW.copy()
    out = opt((0, "W"), W, dW, lr_scale=0.5)
    ref((0, "W"), W2, dW2, lr_scale=0.5)
    assert out[0] is W and not dW.any()
    np.testing.assert_array_equal(W, W2)
    np.testing.assert_array_equal(opt.averages[(0, "W")], ref.averages[(0, "W")])
    assert opt.nr_update[(0, "W")] == 1 and opt.mom1[(0, "W")].shape == (6,)
    opt.last_score = 0.75
    assert opt.last_score == (0, 0.75)
    opt.learn_rate = integration.constant(0.02)
    assert opt.learn_rate == 0.02 and opt.schedules["learn_rate"].name == "constant"
    opt.grad_clip = 5.0
    assert opt.grad_clip == 5.0
    assert opt.to_cpu() is opt

    # The state round-trips: restored copies continue exactly as `opt` does.
    opt.to_disk(tmp_path / "opt.bin")
    twins = [
        integration.Adam(0.01, use_averages=True).from_bytes(opt.to_bytes()),
        integration.Adam(0.01, use_averages=True).from_disk(tmp_path / "opt.bin"),
    ]
    results = []
    for each in [opt, *twins]:
        W3, dW3 = W.copy(), np.full((2, 3), 0.25, "f")
        each((0, "W"), W3, dW3)
        results.append(W3)
        assert each.last_score == (0, 0.75) and each.learn_rate == 0.02
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])
    with pytest.raises(TypeError, match="optsvc.Optimizer"):
        integration.ThincOptimizer(thinc_api.Adam(0.01))


# --- a Thinc model trained with optsvc ----------------------------------------------


def make_model_and_data():
    from thinc.api import Relu, Softmax, chain, fix_random_seed

    fix_random_seed(0)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 10)).astype("f")
    Y = np.eye(3, dtype="f")[rng.integers(0, 3, size=64)]
    model = chain(Relu(16), Softmax(3)).initialize(X=X, Y=Y)
    return model, X, Y


def train(model, X, Y, update, steps=50):
    for _ in range(steps):
        Yh, backprop = model.begin_update(X)
        backprop(Yh - Y)
        update(model)


def keys(model):
    """The model's parameter keys in walk order (node ids differ between
    two models built alike; the order does not)."""
    return [(node.id, name) for node in model.walk() for name in node.param_names]


def params(model):
    """Copies of the model's parameters, in walk order."""
    return [
        node.get_param(name).copy()
        for node in model.walk()
        for name in node.param_names
    ]


def train_both(grad_clip, steps=50):
    """A Thinc model trained with optsvc's Adam and its twin with Thinc's."""
    ours, X, Y = make_model_and_data()
    theirs, _, _ = make_model_and_data()
    opt = optsvc.Adam(0.01, grad_clip=grad_clip)
    ref = thinc_api.Adam(0.01, grad_clip=grad_clip)
    train(ours, X, Y, lambda m: m.finish_update(opt), steps)
    train(theirs, X, Y, lambda m: m.finish_update(ref), steps)
    ours_avg = [opt.averages[k] for k in keys(ours)]
    theirs_avg = [ref.averages[k] for k in keys(theirs)]
    return params(ours) + ours_avg, params(theirs) + theirs_avg


def float64_norm_clip(self, gradient, threshold):
    """Thinc's `Ops.clip_gradient` with the norm summed in float64, as
    optsvc sums it, instead of numpy's float32 BLAS dot."""
    flat = gradient.ravel().astype(np.float64)
    norm = np.float32(np.sqrt(np.dot(flat, flat)))
    if norm >= threshold:
        gradient *= np.float32(threshold) / norm
    return gradient


def test_a_thinc_model_trained_without_clipping_is_thincs_bit_for_bit():
    # No norm, no CPU-dependent rounding: the same bits on every machine.
    ours, theirs = train_both(grad_clip=0.0)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_clipped_thinc_model_is_thincs_bit_for_bit_given_the_same_norm(
    monkeypatch,
):
    # Thinc's clip norm is numpy.linalg.norm of a float32 array: a float32
    # BLAS dot whose summation order follows the CPU's vector kernels. With
    # that one sum computed as optsvc computes it, all else is equal.
    from thinc.backends.ops import Ops

    monkeypatch.setattr(Ops, "clip_gradient", float64_norm_clip)
    ours, theirs = train_both(grad_clip=1.0)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_clipped_thinc_model_is_within_the_float32_norms_rounding_of_thincs():
    # Against Thinc as shipped, a step's clip scale may differ by the
    # rounding of a float32 sum of n squares, at most about n * 2**-24
    # relative (n: the largest tensor). To first order that adds up over the
    # steps: the bound on every weight, relative to its tensor's scale.
    steps, n = 50, max(p.size for p in params(make_model_and_data()[0]))
    bound = steps * n * 2.0**-24
    ours, theirs = train_both(grad_clip=1.0, steps=steps)
    for a, b in zip(ours, theirs, strict=True):
        scale = float(np.abs(b).max())
        assert float(np.abs(a - b).max()) <= bound * scale


def test_param_store_serves_a_thinc_model_without_copies():
    per_key, X, Y = make_model_and_data()
    bound, _, _ = make_model_and_data()
    opt_a, opt_b = optsvc.Adam(0.01), optsvc.Adam(0.01)
    store = integration.bind_param_store(bound)

    def views_of_store(model):
        return all(
            np.shares_memory(node.get_param(n), store.flat_weights)
            and np.shares_memory(node.get_grad(n), store.flat_gradients)
            for node in model.walk()
            for n in node.param_names
        )

    assert views_of_store(bound)
    assert store.size == sum(p.size for p in params(bound))
    train(per_key, X, Y, lambda m: m.finish_update(opt_a))
    train(bound, X, Y, lambda m: opt_b.update_store(store))
    # The backward pass added into the store's gradients in place, one pass
    # updated them all, and the model still holds the store's arrays.
    assert views_of_store(bound)
    assert not store.flat_gradients.any()
    for a, b in zip(params(per_key), params(bound), strict=True):
        np.testing.assert_array_equal(a, b)
    # use_params with the averages (how spaCy evaluates) restores the views.
    with bound.use_params(opt_b.averages):
        assert not views_of_store(bound)
    assert views_of_store(bound)


# --- without Thinc ----------------------------------------------------------------

BLOCK = "import sys; sys.modules['thinc'] = None; sys.modules['spacy'] = None; "


def test_optsvc_works_without_thinc():
    code = BLOCK + (
        "import numpy as np, optsvc, optsvc.integrations\n"
        "opt = optsvc.Adam(optsvc.warmup_cosine(0.1, 2, 10))\n"
        "opt((0, 'W'), np.ones(3, 'f'), np.ones(3, 'f'))\n"
        "optsvc.registry.optimizers.get('Adam.v1')\n"
        "try:\n"
        "    import optsvc.integrations.thinc\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert "pip install 'optsvc[thinc]'" in out.stdout


@pytest.mark.slow
def test_the_test_suite_passes_without_thinc_or_spacy():
    """The fast tests, in a process where Thinc and spaCy cannot be
    imported: the tests that need them skip, everything else passes."""
    # test_api runs every module's docstring examples, this adapter's too,
    # which need Thinc by design.
    deselect = (
        "tests/test_api.py::test_docstring_examples_run[optsvc.integrations.thinc]"
    )
    args = ["-q", "-x", "-p", "no:cacheprovider", "-m", "not slow"]
    args += ["--deselect", deselect, "tests"]
    code = BLOCK + f"import pytest; sys.exit(pytest.main({args!r}))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert " passed" in out.stdout
    # Thinc was really out of reach: the tests that need it said so.
    assert "Thinc comes with the 'thinc', 'spacy' and 'compare' extras" in out.stdout


# --- what Thinc's and spaCy's own tests ask of a drop-in (tests/peer) -------------


def test_step_counts_may_be_whole_floats_as_in_thinc():
    # thinc/tests/test_schedules.py: slanted_triangular(1.0, 20.0, ratio=10)
    assert optsvc.slanted_triangular(1.0, 20.0, ratio=10).attrs == (
        optsvc.slanted_triangular(1.0, 20, ratio=10).attrs
    )
    rates = integration.slanted_triangular(1.0, 20.0, ratio=10)
    first = [next(rates) for _ in range(4)]
    assert first[0] < first[1] and first[2] < first[1]
    with pytest.raises(optsvc.ConfigError, match="'num_steps' must be a whole"):
        optsvc.slanted_triangular(1.0, 20.5)


def test_constant_then_takes_the_values_that_follow_as_thinc_8_does():
    # thinc/tests/test_schedules.py: constant_then(1.0, 2, [100, 200])
    rates = integration.constant_then(1.0, 2, [100, 200])
    assert [next(rates) for _ in range(5)] == [1.0, 1.0, 100, 200, 200]
    generated = optsvc.constant_then(0.5, 1, (x for x in [3.0, 4.0]))
    assert [generated(step) for step in range(3)] == [0.5, 3.0, 4.0]
    # a Schedule that follows sees the global step, as in Thinc 9
    assert optsvc.constant_then(1.0, 2, optsvc.warmup_linear(1.0, 4, 8))(2) == 0.5


def test_averages_can_be_switched_off_and_on_as_on_thincs_optimizer():
    # thinc/tests/layers/test_linear.py: sgd.averages = None
    sgd = integration.SGD(1.0, L2=0.0, grad_clip=0.0)
    sgd.averages = None
    W = np.ones(3, "f")
    sgd((0, "W"), W, np.full(3, 0.5, "f"))
    assert sgd.averages is None and W.tolist() == [0.5, 0.5, 0.5]
    sgd.averages = {}  # from now on, from zero
    sgd((0, "W"), W, np.full(3, 0.25, "f"))  # W = 0.25; the second update
    rate = 1 - min((1 + 2) / (10 + 2), 0.9999)
    assert sgd.averages[(0, "W")].tolist() == pytest.approx([rate * 0.25] * 3)
    with pytest.raises(TypeError, match="None"):
        sgd.averages = {(0, "W"): W}


def test_thincs_optimizer_arguments_make_an_optsvc_optimizer():
    opt = integration.ThincOptimizer(learn_rate=0.123, use_radam=True, L2=0.1)
    assert isinstance(opt, thinc_api.Optimizer)
    assert (opt.learn_rate, opt.use_radam, opt.L2) == (0.123, True, 0.1)


def test_optimizers_and_schedules_pickle_and_copy_through_their_own_state():
    # spaCy pickles a trained nlp, and deep-copies its optimizer
    import copy
    import pickle

    opt = integration.Adam(integration.warmup_linear(0.01, 2, 10))
    W = np.ones((2, 3), "f")
    opt((0, "W"), W, np.full((2, 3), 0.5, "f"))
    opt.step_schedules()
    twins = [pickle.loads(pickle.dumps(opt)), copy.deepcopy(opt)]
    results = []
    for each in [opt, *twins]:
        assert isinstance(each, integration.ThincOptimizer)
        W2 = W.copy()
        each((0, "W"), W2, np.full((2, 3), 0.25, "f"))
        results.append(W2)
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])
    assert twins[1].mom1[(0, "W")] is not opt.mom1[(0, "W")]
    schedule = integration.warmup_linear(0.01, 2, 10)
    next(schedule)
    assert next(pickle.loads(pickle.dumps(schedule))) == next(schedule)
