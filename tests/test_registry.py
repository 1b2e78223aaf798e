"""The registries: their contents, config files, and third-party entry points."""

import importlib
import importlib.metadata
import sys
from pathlib import Path

import pytest
from confection import Config

import optsvc
from optsvc import registry
from optsvc.spec import unchecked

LISTED = Path(__file__).with_name("registered_functions.txt")


def registered():
    return sorted(
        f"{name}: {func}"
        for name in ("optimizers", "schedules", "datasets", "models", "loggers")
        for func in getattr(registry, name).get_all()
    )


def test_registry_contents_match_the_checked_in_list():
    listed = [
        line for line in LISTED.read_text().splitlines() if line and line[0] != "#"
    ]
    assert registered() == sorted(listed)


def test_thinc_names_are_all_there():
    thinc9 = {
        "constant.v1", "constant_then.v1", "decaying.v1", "compounding.v1",
        "warmup_linear.v1", "slanted_triangular.v1", "cyclic_triangular.v1",
        "plateau.v1",
    }  # fmt: skip
    assert thinc9 <= set(registry.schedules.get_all())
    assert {"SGD.v1", "Adam.v1", "RAdam.v1"} <= set(registry.optimizers.get_all())


def test_registry_is_confection_compatible():
    assert registry.has("optimizers", "Adam.v1")
    assert registry.get("schedules", "plateau.v1") is optsvc.plateau


SPEC_BLOCK = """
[optimizer]
@optimizers = "Adam.v1"
beta1 = 0.9
L2 = 1e-6
grad_clip = 1.0

[optimizer.learn_rate]
@schedules = "warmup_linear.v1"
initial_rate = 0.001
warmup_steps = 250
total_steps = 20000
"""


def test_spec_config_block_builds_an_optimizer():
    opt = registry.resolve(Config().from_str(SPEC_BLOCK))["optimizer"]
    assert isinstance(opt, optsvc.Optimizer)
    assert (opt.b1, opt.L2, opt.grad_clip, opt.learn_rate) == (0.9, 1e-6, 1.0, 0.0)
    for _ in range(125):
        opt.step_schedules()
    assert opt.learn_rate == pytest.approx(0.0005)


def test_spacy_training_optimizer_block():
    text = SPEC_BLOCK.replace("[optimizer", "[training.optimizer")
    text = "[training]\nmax_steps = 10\n" + text
    resolved = registry.resolve(Config().from_str(text))
    assert isinstance(resolved["training"]["optimizer"], optsvc.Optimizer)


def test_third_party_schedule_through_an_entry_point(tmp_path, monkeypatch):
    (tmp_path / "myschedules.py").write_text(
        "import optsvc\n"
        "def halving(rate: float):\n"
        "    return optsvc.Schedule('halving', lambda s, step, **kw: rate / 2**step)\n"
    )
    dist = tmp_path / "myschedules-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: myschedules\nVersion: 0.1\n"
    )
    (dist / "entry_points.txt").write_text(
        "[optsvc_schedules]\nhalving.v1 = myschedules:halving\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    # catalogue reads the installed entry points once, at import; a real
    # package is installed before the process starts.
    import catalogue

    monkeypatch.setattr(
        catalogue, "AVAILABLE_ENTRY_POINTS", importlib.metadata.entry_points()
    )
    try:
        sched = registry.schedules.get("halving.v1")(rate=1.0)
        assert sched(3) == 0.125
        block = '[optimizer]\n@optimizers = "SGD.v1"\n[optimizer.learn_rate]\n'
        block += '@schedules = "halving.v1"\nrate = 0.5\n'
        opt = registry.resolve(Config().from_str(block))["optimizer"]
        assert opt.learn_rate == 0.5
    finally:
        sys.modules.pop("myschedules", None)


def test_every_registered_function_checks_its_python_calls():
    # The same declarations (optsvc.spec) that the config check reads.
    for name in ("optimizers", "schedules", "datasets", "models", "loggers"):
        for func_name, func in getattr(registry, name).get_all().items():
            assert unchecked(func) is not func, func_name
    with pytest.raises(
        ValueError, match="Adam: 'beta1' must be in \\[0, 1\\), got 1.5"
    ):
        optsvc.Adam(beta1=1.5)
