"""`optsvc validate`: a catalogue of bad configs, the valid examples, the
library functions behind the command, and generated configs that must
never make it crash."""

from __future__ import annotations

import collections
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from optsvc_cli.main import app
from typer.testing import CliRunner

import optsvc
import optsvc.toys
from optsvc.bench import optimizer_from_config
from optsvc.config import build_block, load_config, load_optimizer
from optsvc.config.blocks import check_arguments
from optsvc.config.parse import (
    ConfigError,
    ConfigIssue,
    config_from_str,
    parse_overrides,
)
from optsvc.config.registry import registry
from optsvc.config.schema import SECTIONS
from optsvc.config.validation import validate_config
from optsvc.spec import params_of, rules_of

ROOT = Path(__file__).parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.cfg"))

runner = CliRunner()

ADAM = '[optimizer]\n@optimizers = "Adam.v1"\n'
WARMUP = (
    ADAM + "\n[optimizer.learn_rate]\n"
    '@schedules = "warmup_linear.v1"\n'
    "initial_rate = 0.001\nwarmup_steps = 250\ntotal_steps = 20000\n"
)
PLATEAU = (
    ADAM + "\n[optimizer.learn_rate]\n"
    '@schedules = "plateau.v1"\nmax_patience = 3\nscale = 0.5\n'
)
SPACY = """\
[paths]
train = "corpus/train.spacy"

[nlp]
lang = "en"

[training]
max_steps = 20000
patience = 1600

[training.optimizer]
@optimizers = "Adam.v1"

[training.optimizer.learn_rate]
@schedules = "warmup_linear.v1"
initial_rate = 0.00005
warmup_steps = 25000
total_steps = 20000
"""
TRAINING = """\
[system]
seed = 0

[training]
max_steps = 1000
"""
# The file's own name stands in for the dotted path of whole-file problems.
FILE = "<file>"
BINARY = b"\x00\xff\xfe\x01 not text \x80\x81"


def invoke(args):
    result = runner.invoke(app, [str(a) for a in args])
    return result, result.output


def assert_no_crash(result, output):
    assert "Traceback" not in output, output
    assert "internal error" not in output, output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )


# id, config text (or bytes), overrides, dotted path in the output, message fragment
BAD = [
    # --- wrong types
    ("str-for-number", ADAM + 'learn_rate = "fast"\n', [],
     "optimizer.learn_rate", 'must be a number, a list of numbers or a [schedule]'),
    ("number-for-bool", ADAM + "use_averages = 1\n", [],
     "optimizer.use_averages", "boolean"),
    ("bool-for-number", ADAM + "learn_rate = true\n", [],
     "optimizer.learn_rate", "must be a number"),
    ("list-for-number",
     ADAM + '[optimizer.learn_rate]\n@schedules = "constant.v1"\nrate = [0.1, 0.2]\n',
     [], "optimizer.learn_rate.rate", "must be a number"),
    ("list-for-int", ADAM + "[training]\nmax_steps = [100]\n", [],
     "training.max_steps", "integer"),
    ("float-for-int", WARMUP.replace("warmup_steps = 250", "warmup_steps = 2.5"), [],
     "optimizer.learn_rate.warmup_steps", "whole number"),
    # --- out of range, each optimizer hyperparameter
    ("learn_rate-negative", ADAM + "learn_rate = -0.1\n", [],
     "optimizer.learn_rate", "must be >= 0, got -0.1"),
    ("beta1-one", ADAM + "beta1 = 1.0\n", [], "optimizer.beta1", "must be in [0, 1)"),
    ("beta2-negative", ADAM + "beta2 = -0.5\n", [],
     "optimizer.beta2", "must be in [0, 1)"),
    ("eps-zero", ADAM + "eps = 0\n", [], "optimizer.eps", "must be > 0"),
    ("grad_clip-negative", ADAM + "grad_clip = -1\n", [],
     "optimizer.grad_clip", "must be >= 0"),
    ("L2-negative", ADAM + "L2 = -0.01\n", [], "optimizer.L2", "must be >= 0"),
    ("weight_decay-negative",
     '[optimizer]\n@optimizers = "RAdam.v1"\nweight_decay = -0.01\n', [],
     "optimizer.weight_decay", "must be >= 0"),
    ("pct_start-one",
     ADAM + '[optimizer.learn_rate]\n@schedules = "one_cycle.v1"\n'
     "max_rate = 0.01\ntotal_steps = 100\npct_start = 1\n", [],
     "optimizer.learn_rate.pct_start", "must be in (0, 1)"),
    # --- not finite
    ("nan", ADAM + "learn_rate = NaN\n", [], "optimizer.learn_rate", "finite"),
    ("inf", ADAM + "beta1 = Infinity\n", [], "optimizer.beta1", "finite"),
    ("minus-inf-in-schedule",
     WARMUP.replace("initial_rate = 0.001", "initial_rate = -Infinity"), [],
     "optimizer.learn_rate.initial_rate", "finite"),
    # --- unknown and misspelt keys
    ("unknown-key", ADAM + "colour = 1\n", [],
     "optimizer.colour", "arguments: learn_rate, L2, beta1"),
    ("misspelt-key", ADAM + "lern_rate = 0.1\n", [],
     "optimizer.lern_rate", "did you mean 'learn_rate'?"),
    ("misspelt-schedule-key",
     WARMUP.replace("warmup_steps", "warmup_step"), [],
     "optimizer.learn_rate.warmup_step", "did you mean 'warmup_steps'?"),
    # --- registered names and registries
    ("unknown-optimizer", '[optimizer]\n@optimizers = "Adma.v1"\n', [],
     "optimizer.@optimizers", "did you mean 'Adam.v1'? known: AdEMAMix.v1, Adam.v1"),
    ("unknown-schedule", WARMUP.replace("warmup_linear.v1", "warmup_linaer.v1"), [],
     "optimizer.learn_rate.@schedules", "did you mean 'warmup_linear.v1'? known:"),
    ("wrong-registry", '[optimizer]\n@schedules = "constant.v1"\nrate = 0.1\n', [],
     "optimizer.@schedules", "expects a function from @optimizers"),
    ("unknown-registry", WARMUP.replace("@schedules", "@schedulez"), [],
     "optimizer.learn_rate.@schedulez", "did you mean 'schedules'?"),
    ("two-functions", ADAM + '@schedules = "constant.v1"\n', [],
     "optimizer", "names more than one function"),
    ("data-without-function", ADAM + "[data]\nn_samples = 100\n", [],
     "data", 'add @datasets = "blobs.v1"'),
    # --- missing required arguments, cross-field checks
    ("sgd-without-learn_rate", '[optimizer]\n@optimizers = "SGD.v1"\n', [],
     "optimizer.learn_rate", "missing required argument of SGD.v1"),
    ("warmup-without-total_steps",
     WARMUP.replace("total_steps = 20000\n", ""), [],
     "optimizer.learn_rate.total_steps", "missing required argument"),
    ("warmup-after-total",
     WARMUP.replace("warmup_steps = 250", "warmup_steps = 30000"), [],
     "optimizer.learn_rate.warmup_steps", "must be <= total_steps (20000)"),
    ("piecewise-lengths",
     ADAM + '[optimizer.learn_rate]\n@schedules = "piecewise_constant.v1"\n'
     "boundaries = [10, 20]\nvalues = [0.1]\n", [],
     "optimizer.learn_rate", "one more item than 'boundaries'"),
    ("piecewise-float-boundary",
     ADAM + '[optimizer.learn_rate]\n@schedules = "piecewise_constant.v1"\n'
     "boundaries = [10.5]\nvalues = [0.1, 0.2]\n", [],
     "optimizer.learn_rate.boundaries", "item 0 must be a whole number"),
    # --- nesting
    ("section-without-function",
     ADAM + "[optimizer.learn_rate]\ninitial_rate = 0.1\n", [],
     "optimizer.learn_rate", "is a section, but a value is expected"),
    ("value-for-schedule-block", PLATEAU + "schedule = 0.1\n", [],
     "optimizer.learn_rate.schedule", "must be a [schedule] block"),
    ("plateau-without-schedule", PLATEAU, [],
     "optimizer.learn_rate.schedule", "missing required argument of plateau.v1"),
    ("nested-schedule-error",
     PLATEAU + '[optimizer.learn_rate.schedule]\n@schedules = "decaying.v1"\n'
     'base_rate = 0.1\ndecay = "fast"\n', [],
     "optimizer.learn_rate.schedule.decay", "must be a number"),
    ("both-optimizer-blocks",
     ADAM + '[training]\n[training.optimizer]\n@optimizers = "Adam.v1"\n', [],
     "training.optimizer", "both [optimizer] and [training.optimizer]"),
    ("no-optimizer", TRAINING, [], "optimizer", "no optimizer block"),
    ("training-subsection", ADAM + "[training]\n[training.loop]\nx = 1\n", [],
     "training.loop", "has no subsection"),
    # --- lists as hyperparameters
    ("empty-list", ADAM + "learn_rate = []\n", [],
     "optimizer.learn_rate", "non-empty list"),
    ("list-with-bad-item", ADAM + "beta1 = [0.9, 1.5]\n", [],
     "optimizer.beta1", "list item 1 must be in [0, 1)"),
    ("list-with-string", ADAM + 'learn_rate = [0.1, "a"]\n', [],
     "optimizer.learn_rate", "list item 1 must be a number"),
    # --- the file itself
    ("bad-ini-header", '[optimizer\n@optimizers = "Adam.v1"\n', [],
     FILE, "not a valid config file"),
    ("bad-ini-no-value", ADAM + "learn_rate\n", [], FILE, "not a valid config file"),
    ("bad-ini-duplicate-key", ADAM + "L2 = 0.1\nL2 = 0.2\n", [],
     FILE, "'L2' in section 'optimizer' already exists"),
    ("subsection-without-parent",
     '[optimizer.learn_rate]\n@schedules = "constant.v1"\nrate = 1\n', [],
     FILE, "not a valid config file"),
    ("not-json", ADAM + "learn_rate = [0.1,\n", [],
     "optimizer.learn_rate", 'got "[0.1,"'),
    ("empty-file", "", [], FILE, "is empty"),
    ("whitespace-only", "  \n\n\t  \n", [], FILE, "is empty"),
    ("binary-file", BINARY, [], FILE, "not UTF-8 text"),
    ("missing-file", None, [], FILE, "does not exist"),
    ("folder", "DIR", [], FILE, "is a folder"),
    ("interpolation-missing", TRAINING + ADAM + "learn_rate = ${system.nope}\n", [],
     "~system.nope", "interpolation"),
    ("circular-section", ADAM + "[a]\nx = ${a}\n", [],
     "a.x", "refers to [a], a section it is inside (a circular ${...} reference)"),
    ("circular-optimizer", ADAM + "learn_rate = ${optimizer}\n", [],
     "optimizer.learn_rate", "circular ${...} reference"),
    # --- Python and configs agree (these three were accepted from Python once)
    ("warmup_linear-total-zero",
     WARMUP.replace("warmup_steps = 250", "warmup_steps = 0").replace(
         "total_steps = 20000", "total_steps = 0"), [],
     "optimizer.learn_rate.total_steps", "must be >= 1, got 0"),
    ("warmup_linear-negative-rate",
     WARMUP.replace("initial_rate = 0.001", "initial_rate = -0.1"), [],
     "optimizer.learn_rate.initial_rate", "must be >= 0, got -0.1"),
    ("cyclic-fractional-period",
     ADAM + '[optimizer.learn_rate]\n@schedules = "cyclic_triangular.v1"\n'
     "min_lr = 0.1\nmax_lr = 1.0\nperiod = 0.5\n", [],
     "optimizer.learn_rate.period", "must be a whole number, got 0.5"),
    # --- rules across arguments, declared with the function
    ("slanted-too-short",
     ADAM + '[optimizer.learn_rate]\n@schedules = "slanted_triangular.v1"\n'
     "max_rate = 0.1\nnum_steps = 5\n", [],
     "optimizer.learn_rate.num_steps", "must be at least 1 / cut_frac"),
    ("blobs-too-few-samples",
     ADAM + '[data]\n@datasets = "blobs.v1"\nn_samples = 2\nn_classes = 3\n', [],
     "data.n_samples", "must be at least n_classes (3)"),
    ("warmup_cosine-after-total",
     ADAM + '[optimizer.learn_rate]\n@schedules = "warmup_cosine.v1"\n'
     "initial_rate = 0.1\nwarmup_steps = 20\ntotal_steps = 10\n", [],
     "optimizer.learn_rate.warmup_steps", "must be <= total_steps (10), got 20"),
    # --- overrides
    ("override-unknown-section", ADAM, ["--nope.x", "1"],
     "nope.x", "not in the config"),
    ("override-unknown-section-typo", ADAM, ["--optimiser.L2", "1"],
     "optimiser.L2", "did you mean 'optimizer'?"),
    ("override-no-value", ADAM, ["--optimizer.learn_rate"],
     "optimizer.learn_rate", "override has no value"),
    ("override-bare-word", ADAM, ["fast"], "~'fast'", "unexpected argument"),
    ("override-no-section", ADAM, ["--learn_rate", "0.1"],
     "learn_rate", "must name a section and a key"),
    ("override-bad-type", ADAM, ["--optimizer.beta1", '"high"'],
     "optimizer.beta1", "must be a number"),
    ("override-out-of-range", ADAM, ["--optimizer.learn_rate=-1"],
     "optimizer.learn_rate", "must be >= 0"),
    ("override-spacy", SPACY.replace("25000", "25"),
     ["--training.optimizer.learn_rate.warmup_steps", "30000"],
     "training.optimizer.learn_rate.warmup_steps", "<= total_steps"),
    # --- spaCy configs
    ("spacy-warmup-after-total", SPACY, [],
     "training.optimizer.learn_rate.warmup_steps", "must be <= total_steps"),
    # --- numbers too large for floats (these crashed once: OverflowError)
    ("huge-int-for-number", ADAM + "learn_rate = 1" + "0" * 400 + "\n", [],
     "optimizer.learn_rate", "finite"),
    ("huge-int-in-list", ADAM + "beta1 = [0.9, -1" + "0" * 400 + "]\n", [],
     "optimizer.beta1", "list item 1 must be a finite number"),
    ("huge-int-for-steps",
     WARMUP.replace("total_steps = 20000", "total_steps = 1" + "0" * 400), [],
     "optimizer.learn_rate.total_steps", "below 2**63"),
    ("huge-max_steps", ADAM + "[training]\nmax_steps = 1" + "0" * 400 + "\n", [],
     "training.max_steps", "9223372036854775807"),
    ("schedule-overflows-before-max_steps",
     "[training]\nmax_steps = 100000\n\n" + ADAM
     + '[optimizer.learn_rate]\n@schedules = "exponential_decay.v1"\n'
     "initial_rate = 0.001\ndecay_rate = 2\ndecay_steps = 10\n", [],
     "optimizer", "a schedule fails at step"),
    # --- training sections
    ("negative-seed", ADAM + "[system]\nseed = -1\n", [], "system.seed", "got -1"),
    ("max_steps-zero", ADAM + "[training]\nmax_steps = 0\n", [],
     "training.max_steps", "got 0"),
    ("unknown-training-key", ADAM + "[training]\nmax_stepz = 10\n", [],
     "training.max_stepz", "did you mean 'max_steps'?"),
    ("training-choice", ADAM + '[training]\nnonfinite = "ignore"\n', [],
     "training.nonfinite", "'refuse' or 'skip'"),
    ("unknown-section", ADAM + "[sytem]\nseed = 1\n", [],
     "sytem", "did you mean 'system'?"),
    ("unknown-model-arg", ADAM + '[model]\n@models = "mlp.v1"\nwidth = 3\n', [],
     "model.width", "unknown argument for mlp.v1"),
    ("model-choice",
     ADAM + '[model]\n@models = "mlp.v1"\nactivation = "gelu"\n', [],
     "model.activation", "'relu', 'tanh'"),
]  # fmt: skip


def write_config(tmp_path: Path, text) -> Path:
    path = tmp_path / "bad.cfg"
    if text is None:
        return tmp_path / "missing.cfg"
    if text == "DIR":
        return tmp_path
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf8")
    return path


def test_catalogue_is_large_and_distinct():
    assert len(BAD) >= 35
    assert len({case[0] for case in BAD}) == len(BAD)
    assert len({(case[1], tuple(case[2])) for case in BAD}) == len(BAD)


@pytest.mark.parametrize(
    ("text", "overrides", "path", "fragment"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD],
)
def test_bad_config(tmp_path, text, overrides, path, fragment):
    config = write_config(tmp_path, text)
    result, output = invoke(["validate", config, *overrides])
    assert result.exit_code == 1, output
    assert_no_crash(result, output)
    assert "✘" in output
    errors = output.splitlines()[1:]
    assert fragment in output, output
    if path == FILE:
        assert config.name in output, output
    elif path.startswith("~"):  # named inside the message
        assert any(path[1:] in line for line in errors), output
    else:  # an error line starts with the dotted path
        assert any(line.startswith(f"  {path}: ") for line in errors), output


def test_every_error_at_once(tmp_path):
    text = (
        "[system]\nseed = -1\n\n[sytem]\n\n[training]\nmax_steps = 0\n"
        "[optimizer]\n"
        '@optimizers = "Adam.v1"\n'
        "learn_rate = -0.1\nbeta1 = 1.0\nbeta2 = -0.1\neps = 0\ngrad_clip = -1\n"
        "L2 = -1\nlern_rate = 0.1\n\n"
        "[optimizer.L2_is_weight_decay]\n"
        '@schedules = "warmup_linear.v1"\n'
    )
    config = write_config(tmp_path, text)
    result, output = invoke(["validate", config])
    assert result.exit_code == 1
    assert_no_crash(result, output)
    expected = [
        "system.seed",
        "sytem",
        "training.max_steps",
        "optimizer.learn_rate",
        "optimizer.beta1",
        "optimizer.beta2",
        "optimizer.eps",
        "optimizer.grad_clip",
        "optimizer.L2",
        "optimizer.lern_rate",
        "optimizer.L2_is_weight_decay.initial_rate",
        "optimizer.L2_is_weight_decay.warmup_steps",
        "optimizer.L2_is_weight_decay.total_steps",
    ]
    lines = [line.strip() for line in output.splitlines()]
    for path in expected:
        assert any(line.startswith(path + ":") for line in lines), (path, output)
    n = int(re.search(r"(\d+) errors", output).group(1))
    assert n >= len(expected)
    listed = [line for line in output.splitlines() if re.match(r"  \S", line)]
    assert n == len(listed)


# --- valid configs -----------------------------------------------------------------


def test_configs_folder_is_populated():
    names = {p.name for p in CONFIGS}
    assert {"adam.cfg", "sgd.cfg", "radam.cfg", "spacy_training.cfg"} <= names
    schedules = {n.split(".")[0] for n in registry.schedules.get_all()}
    covered = {p.stem.removeprefix("schedule-") for p in CONFIGS}
    assert schedules <= covered, schedules - covered
    # every optimizer in the [optimizer] block of an example of its own
    used = {load_config(p).get("optimizer", {}).get("@optimizers") for p in CONFIGS}
    assert set(registry.optimizers.get_all()) <= used


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_example_config_is_valid(path):
    result, output = invoke(["validate", path])
    assert result.exit_code == 0, output
    assert_no_crash(result, output)
    assert "is valid" in output
    assert "sections checked:" in output


def test_optimizer_only_config_is_valid(tmp_path):
    config = write_config(tmp_path, ADAM)
    result, output = invoke(["validate", config])
    assert result.exit_code == 0, output
    assert "Adam.v1" in output
    assert "sections checked: optimizer" in output


def test_spacy_config_says_what_was_not_checked():
    result, output = invoke(["validate", ROOT / "configs" / "spacy_training.cfg"])
    assert result.exit_code == 0, output
    assert "sections checked: training.optimizer" in output
    unchecked = next(line for line in output.splitlines() if "not checked" in line)
    for section in ("nlp", "components", "corpora", "paths"):
        assert section in unchecked
    assert "training (other than training.optimizer)" in unchecked


def _row(output: str, name: str) -> str:
    return next(line for line in output.splitlines() if f" {name} " in line)


def test_override_changes_the_summary(tmp_path):
    config = write_config(tmp_path, ADAM + "learn_rate = 0.001\nbeta1 = 0.9\n")
    result, output = invoke(["validate", config])
    assert result.exit_code == 0
    assert "0.001" in _row(output, "learn_rate")
    result, output = invoke(
        ["validate", config, "--optimizer.learn_rate", "0.01", "--optimizer.beta1=0.5"]
    )
    assert result.exit_code == 0, output
    assert "0.01" in _row(output, "learn_rate")
    assert "0.001" not in _row(output, "learn_rate")
    assert "0.5" in _row(output, "beta1")


def test_override_of_a_schedule_argument(tmp_path):
    config = write_config(tmp_path, WARMUP)
    result, output = invoke(
        ["validate", config, "--optimizer.learn_rate.total_steps", "777"]
    )
    assert result.exit_code == 0, output
    assert "total_steps=777" in output


def test_training_override_when_the_section_exists(tmp_path):
    config = write_config(tmp_path, TRAINING + WARMUP)
    # 20000-step schedule, 1000 max_steps: fine; 500 is fine too.
    result, output = invoke(["validate", config, "--training.max_steps", "500"])
    assert result.exit_code == 0, output
    result, output = invoke(["validate", config, "--training.max_steps", "0"])
    assert result.exit_code == 1
    assert "training.max_steps" in output
    # Without a [training] section the override names a missing section.
    config = write_config(tmp_path, WARMUP)
    result, output = invoke(["validate", config, "--training.max_steps", "500"])
    assert result.exit_code == 1
    assert "training.max_steps: override names a section that is not" in output


def test_warning_for_a_rate_that_dies_early(tmp_path):
    text = "[training]\nmax_steps = 10000\n\n" + WARMUP.replace(
        "total_steps = 20000", "total_steps = 1000"
    )
    config = write_config(tmp_path, text)
    result, output = invoke(["validate", config])
    assert result.exit_code == 0, output
    assert_no_crash(result, output)
    assert "is valid" in output
    warning = next(line for line in output.splitlines() if "warning:" in line)
    assert "optimizer.learn_rate" in warning
    assert "reaches 0 at about step 1000" in warning
    assert "max_steps (10000)" in warning
    # No warning when the schedule lasts as long as training.
    config = write_config(tmp_path, text.replace("10000", "1000"))
    result, output = invoke(["validate", config])
    assert result.exit_code == 0
    assert "warning:" not in output


def test_validate_reads_each_schedule_once_a_sampled_step(monkeypatch):
    # The range check and the dead-rate warning share one reading of the
    # schedule (3000 steps: every step), plus the optimizer's own at step 0.
    calls = collections.Counter()
    call = optsvc.Schedule.__call__

    def counted(self, step, **extra):
        calls[self.name] += 1
        return call(self, step, **extra)

    monkeypatch.setattr(optsvc.Schedule, "__call__", counted)
    config = config_from_str((ROOT / "configs/quickstart.cfg").read_text())
    report = validate_config(config, for_training=True)
    assert report.ok and not report.warnings
    assert config["training"]["max_steps"] == 3000
    assert calls["warmup_cosine"] == 3000 + 1


# --- library level -----------------------------------------------------------------


def error_paths(text: str) -> list[str]:
    return [issue.path for issue in validate_config(config_from_str(text)).errors]


def test_validate_config_error_paths():
    assert error_paths(WARMUP) == []
    assert error_paths(SPACY) == ["training.optimizer.learn_rate.warmup_steps"]
    paths = error_paths(ADAM + "beta1 = 2\neps = -1\n")
    assert sorted(paths) == ["optimizer.beta1", "optimizer.eps"]
    assert error_paths(PLATEAU + "schedule = 1\n") == ["optimizer.learn_rate.schedule"]


def test_validate_config_report():
    report = validate_config(config_from_str(TRAINING + WARMUP))
    assert report.ok and report.optimizer is not None
    assert report.sections.optimizer_path == "optimizer"
    assert set(report.blocks) == {"optimizer", "optimizer.learn_rate"}
    assert report.blocks["optimizer.learn_rate"][0] == "warmup_linear.v1"
    assert report.warnings == []
    report = validate_config(config_from_str(SPACY.replace("25000", "25")))
    assert report.ok and report.sections.is_spacy
    assert report.sections.optimizer_path == "training.optimizer"
    issue = validate_config(config_from_str(ADAM + "beta1 = 2\n")).errors[0]
    assert (issue.path, issue.value, issue.has_value) == ("optimizer.beta1", 2, True)


def test_validate_config_for_training_needs_sections():
    report = validate_config(config_from_str(ADAM), for_training=True)
    assert {i.path for i in report.errors} == {"data", "model", "training"}


# --- one declaration: Python calls and config blocks agree --------------------------

CONSTANT = {"@schedules": "constant.v1", "rate": 0.1}
# A valid config block for every registered function, nested blocks as sections.
VALID = {
    "optimizers": {
        "SGD.v1": {"learn_rate": 0.1},
        "Adam.v1": {"learn_rate": 0.001, "beta1": 0.9},
        "RAdam.v1": {"weight_decay": 0.01},
        "Lion.v1": {"learn_rate": 3e-4, "weight_decay": 0.1},
        "AdEMAMix.v1": {"beta3": 0.999, "alpha": 8.0},
        "ScheduleFreeAdamW.v1": {"warmup_steps": 10, "weight_decay": 0.01},
        "ScheduleFreeSGD.v1": {"momentum": 0.9, "r": 0.5},
    },
    "schedules": {
        "constant.v1": {"rate": 0.1},
        "constant_then.v1": {"rate": 1.0, "steps": 2, "schedule": CONSTANT},
        "decaying.v1": {"base_rate": 0.1, "decay": 0.01, "t": 1.0},
        "compounding.v1": {"start": 1.0, "stop": 10.0, "compound": 1.5},
        "warmup_linear.v1": {"initial_rate": 0.1, "warmup_steps": 2, "total_steps": 3},
        "slanted_triangular.v1": {"max_rate": 0.1, "num_steps": 20},
        "cyclic_triangular.v1": {"min_lr": 0.1, "max_lr": 1.0, "period": 2},
        "plateau.v1": {"max_patience": 2, "scale": 0.5, "schedule": CONSTANT},
        "warmup_cosine.v1": {"initial_rate": 0.1, "warmup_steps": 2, "total_steps": 3},
        "exponential_decay.v1": {"initial_rate": 0.1, "decay_rate": 0.5,
                                 "decay_steps": 2, "staircase": True},
        "step_decay.v1": {"initial_rate": 0.1, "step_size": 2, "gamma": 0.5},
        "piecewise_constant.v1": {"boundaries": [1, 2], "values": [0.5, 1, 2]},
        "linear_warmup.v1": {"warmup_steps": 2, "schedule": CONSTANT},
        "one_cycle.v1": {"max_rate": 0.1, "total_steps": 3, "pct_start": 0.5},
        "ademamix_alpha_warmup.v1": {"alpha": 5.0, "warmup_steps": 100},
        "ademamix_beta3_warmup.v1": {
            "beta1": 0.9,
            "beta3": 0.9999,
            "warmup_steps": 100,
        },
    },
    "datasets": {
        "blobs.v1": {"n_samples": 3, "n_classes": 3, "spread": 0.5},
        "spirals.v1": {"n_samples": 3, "n_classes": 2, "turns": 0.5},
        "regression.v1": {"n_samples": 3, "n_outputs": 2, "nonlinear": False},
    },
    "models": {
        "linear.v1": {},
        "mlp.v1": {"hidden_width": 2, "depth": 1, "activation": "tanh"},
    },
}  # fmt: skip
PROBES = [-1, 0, 1, 2, 3, 0.5, 1.5, -0.5, math.nan, math.inf, True, False, "1",
          None, [], [0.5], [1, 2], [-1], "relu", "gelu"]  # fmt: skip
FUNCTIONS = [(reg, name) for reg, names in VALID.items() for name in names]


def test_every_registered_function_has_a_valid_example():
    assert FUNCTIONS == [
        (reg, name)
        for reg in VALID
        for name in sorted(getattr(registry, reg).get_all(), key=list(VALID[reg]).index)
    ]


def python_call(reg: str, name: str, args: dict):
    """Call the function from Python, nested blocks built from Python too."""
    args = {
        k: python_call("schedules", v["@schedules"], {**v}) if isinstance(v, dict)
        else v
        for k, v in args.items()
        if not k.startswith("@")
    }  # fmt: skip
    return getattr(registry, reg).get(name)(**args)


def outcome(call) -> str | None:
    """None when accepted, else the error message."""
    try:
        call()
    except ValueError as err:
        return str(err)
    return None


@pytest.mark.parametrize(("reg", "name"), FUNCTIONS, ids=[n for _, n in FUNCTIONS])
def test_python_and_config_accept_the_same_values(reg, name):
    """Each argument in turn takes every probe value; the function called from
    Python and the config block built by `build_block` accept or refuse it
    together. The one place they may differ is a rule declared config-only,
    where Python keeps Thinc's looser contract."""
    func = getattr(registry, reg).get(name)
    looser = [r for r in rules_of(func) if not r.python]
    for param in params_of(func):
        for probe in PROBES:
            args = {**VALID[reg][name], param.name: probe}
            block = {f"@{reg}": name, **args}
            in_python = outcome(lambda args=args: python_call(reg, name, args))
            in_config = outcome(lambda block=block: build_block(block, "x"))
            if (in_python is None) != (in_config is None):
                assert in_python is None, (param.name, probe, in_python, in_config)
                assert any(r.problem(args) for r in looser), (param.name, probe)


@pytest.mark.parametrize(
    ("call", "block", "message"),
    [
        (lambda: optsvc.warmup_linear(0.1, 0, 0),
         {"@schedules": "warmup_linear.v1", "initial_rate": 0.1, "warmup_steps": 0,
          "total_steps": 0},
         "'total_steps' must be >= 1, got 0"),
        (lambda: optsvc.warmup_linear(-0.1, 10, 100),
         {"@schedules": "warmup_linear.v1", "initial_rate": -0.1,
          "warmup_steps": 10, "total_steps": 100},
         "'initial_rate' must be >= 0, got -0.1"),
        (lambda: optsvc.cyclic_triangular(0.1, 1.0, 0.5),
         {"@schedules": "cyclic_triangular.v1", "min_lr": 0.1, "max_lr": 1.0,
          "period": 0.5},
         "'period' must be a whole number, got 0.5"),
    ],
    ids=["warmup_linear-total-0", "warmup_linear-negative", "cyclic-period-0.5"],
)  # fmt: skip
def test_refused_from_python_as_in_a_config(call, block, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()
    with pytest.raises(ConfigError) as info:
        build_block(block, "optimizer.learn_rate")
    arg = message.split("'")[1]
    (issue,) = info.value.issues
    assert issue.path == f"optimizer.learn_rate.{arg}"
    assert f"{issue.message}, got {issue.value}" in message


def test_warmup_past_total_stays_a_python_choice():
    # Thinc accepts it from Python, so optsvc does; a config refuses it.
    assert optsvc.warmup_linear(0.1, 200, 100)(100) == pytest.approx(0.05)
    block = {"@schedules": "warmup_linear.v1", "initial_rate": 0.1,
             "warmup_steps": 200, "total_steps": 100}  # fmt: skip
    with pytest.raises(ConfigError, match="must be <= total_steps"):
        build_block(block, "lr")
    with pytest.raises(ValueError, match="'warmup_steps' must be <= total_steps"):
        optsvc.warmup_cosine(0.1, 200, 100)  # a rule for both


def test_every_argument_declares_its_meaning():
    for reg, name in FUNCTIONS:
        func = getattr(registry, reg).get(name)
        for param in params_of(func):
            assert param.arg.desc, (name, param.name)
            assert param.kind != "any", (name, param.name)
        # What a config is told is that declaration: a block that gives
        # none of its arguments gets each required one's meaning.
        issues = []
        check_arguments(func, {}, "x", name, issues)
        missing = {i.path: i.hint for i in issues if "missing" in i.message}
        required = [p for p in params_of(func) if p.required]
        assert missing == {f"x.{p.name}": p.arg.desc for p in required}


# --- one build path ------------------------------------------------------------------

THINC_NAMES = """\
[training]
max_steps = 40

[training.optimizer]
@optimizers = "optsvc.Adam.v1"

[training.optimizer.learn_rate]
@schedules = "optsvc.warmup_cosine.v1"
initial_rate = 0.01
warmup_steps = 10
total_steps = 40
"""


def test_thinc_spelling_of_optsvc_names(tmp_path):
    config = write_config(tmp_path, THINC_NAMES)
    result, output = invoke(["validate", config])
    assert result.exit_code == 0, output
    assert "Adam.v1" in output and "warmup_cosine(initial_rate=0.01" in output
    result, output = invoke(["show-schedule", config, "--format", "json"])
    assert result.exit_code == 0, output
    rates = [row["learn_rate"] for row in json.loads(output)["rows"]]
    expected = optsvc.warmup_cosine(0.01, 10, 40)
    assert rates == [expected(step) for step in range(40)]
    opt = load_optimizer(config)
    assert opt.schedules["learn_rate"].name == "warmup_cosine"
    bad = write_config(tmp_path, THINC_NAMES.replace("optsvc.Adam", "optsvc.Adma"))
    result, output = invoke(["validate", bad])
    assert result.exit_code == 1
    assert "unknown function in registry optimizers" in output
    assert "did you mean 'Adam.v1'?" in output
    listing = runner.invoke(app, ["registry", "optimizers"]).output
    rows = [line.split("│") for line in listing.splitlines() if line[:1] == "│"]
    assert "optsvc." not in listing  # each name is listed once, as registered
    names = [row[1].strip() for row in rows]
    assert sorted(filter(None, names)) == sorted(registry.optimizers.get_all())


def test_load_optimizer_reports_what_validate_reports(tmp_path):
    text = TRAINING + ADAM + "beta1 = 1.5\nlern_rate = 0.1\n"
    config = write_config(tmp_path, text)
    expected = validate_config(config_from_str(text)).errors
    assert [i.path for i in expected] == ["optimizer.beta1", "optimizer.lern_rate"]
    for build in (load_optimizer, optimizer_from_config):
        with pytest.raises(ConfigError) as info:
            build(config)
        assert info.value.issues == expected
    _, output = invoke(["validate", config])
    assert all(f"  {issue}" in output.splitlines() for issue in expected)


def test_load_optimizer_from_a_file_a_dict_and_overrides(tmp_path):
    config = write_config(tmp_path, WARMUP)
    overrides = {"optimizer.learn_rate.total_steps": 500}
    from_file = load_optimizer(config, overrides)
    from_dict = load_optimizer(config_from_str(WARMUP), overrides)
    for opt in (from_file, from_dict):
        assert isinstance(opt, optsvc.Optimizer)
        assert opt.schedules["learn_rate"].attrs["total_steps"] == 500
    with pytest.raises(ConfigError, match="override names a section"):
        load_optimizer(config_from_str(WARMUP), {"nope.x": 1})
    with pytest.raises(ConfigError, match=r"no \[optimizer\] section"):
        load_optimizer(config_from_str(TRAINING))


def test_the_optimizer_is_built_once_and_left_at_step_0(monkeypatch):
    import optsvc.config.validation as validation

    built = []
    real = validation.construct
    monkeypatch.setattr(
        validation, "construct", lambda *a: built.append(a[1]) or real(*a)
    )
    text = "[training]\nmax_steps = 10000\n\n" + WARMUP.replace("20000", "1000")
    report = validate_config(config_from_str(text), for_training=False)
    assert built == ["optimizer"]
    assert [w.path for w in report.warnings] == ["optimizer.learn_rate"]
    assert report.optimizer.step == 0 and report.optimizer.learn_rate == 0.0


def test_sections_validated_once_into_the_report():
    text = "[system]\nseed = 3\n\n[training]\nmax_steps = 20\n\n" + ADAM
    text += '[data]\n@datasets = "blobs.v1"\nn_samples = 30\n\n'
    text += '[model]\n@models = "mlp.v1"\nhidden_width = 4\n'
    report = validate_config(config_from_str(text), for_training=True)
    assert report.ok, report.errors
    assert (report.system.seed, report.system.gpu_id) == (3, -1)
    assert (report.training.max_steps, report.training.batch_size) == (20, 64)
    data = report.build("data")
    assert np.array_equal(data.X_dev, optsvc.toys.blobs(n_samples=30).X_dev)
    assert report.build("model").hidden_widths == (4, 4)
    with pytest.raises(KeyError):
        report.build("nope")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], {}),
        (["--training.max_steps", "500"], {"training.max_steps": 500}),
        (["--optimizer.learn_rate=0.01"], {"optimizer.learn_rate": 0.01}),
        (["--a.b", "adam"], {"a.b": "adam"}),
        (["--a.b", '"1"'], {"a.b": "1"}),
        (["--a.b", "true", "--a.c", "null"], {"a.b": True, "a.c": None}),
        (["--a.b", "[1, 2.5]"], {"a.b": [1, 2.5]}),
        (["--a.b", "-1"], {"a.b": -1}),
        (["--a.b="], {"a.b": ""}),
        (["--a.b=x=y"], {"a.b": "x=y"}),
        (["--a.b", "Infinity"], {"a.b": math.inf}),  # Python's JSON reads it
        (["--a.b", "nan"], {"a.b": "nan"}),  # not JSON: a string
        (["--train-ing.max-steps", "5"], {"train_ing.max_steps": 5}),
        (["--a.b.c", "1", "--a.b.c", "2"], {"a.b.c": 2}),
    ],
)
def test_parse_overrides(args, expected):
    got = parse_overrides(args)
    assert got == expected
    for key, value in expected.items():
        assert type(got[key]) is type(value)


@pytest.mark.parametrize(
    ("args", "paths", "fragment"),
    [
        (["bare"], [""], "unexpected argument 'bare'"),
        (["--"], [""], "unexpected argument '--'"),
        (["-x", "1"], ["", ""], "unexpected argument '-x'"),
        (["--a.b"], ["a.b"], "override has no value"),
        (["--a.b", "--c.d", "1"], ["a.b"], "use --a.b VALUE"),
        (["--max_steps", "1"], ["max_steps"], "must name a section and a key"),
        (["x", "--a.b", "--y", "1"], ["", "a.b", "y"], "unexpected argument 'x'"),
    ],
)
def test_parse_overrides_errors(args, paths, fragment):
    with pytest.raises(ConfigError) as info:
        parse_overrides(args)
    assert [i.path for i in info.value.issues] == paths
    assert fragment in str(info.value)


def test_config_error_formatting():
    issue = ConfigIssue("a.b", "must be >= 0", value=-1.5, has_value=True, hint="h")
    assert str(issue) == "a.b: must be >= 0, got -1.5 (h)"
    assert str(ConfigIssue("", "no file")) == "no file"
    assert (
        str(ConfigIssue("a", "bad", value=None, has_value=True)) == "a: bad, got null"
    )
    assert str(ConfigIssue("a", "bad", value=None)) == "a: bad"
    assert str(ConfigIssue("a", "x", value="s", has_value=True)) == 'a: x, got "s"'
    assert str(ConfigIssue("a", "x", value=[1], has_value=True)) == "a: x, got [1]"
    assert str(ConfigIssue("a", "x", value={"k": 1}, has_value=True)).endswith(
        "got a section"
    )
    long = str(ConfigIssue("a", "x", value="y" * 500, has_value=True))
    assert long.endswith("...") and len(long) < 100
    error = ConfigError("just text")
    assert [i.path for i in error.issues] == [""] and str(error) == "just text"
    error = ConfigError([ConfigIssue("a", "one"), ConfigIssue("b", "two")])
    assert str(error) == "a: one\nb: two"
    assert isinstance(error, ValueError)
    assert ConfigError(ConfigIssue("c", "three")).issues[0].path == "c"


def test_config_from_str_errors():
    with pytest.raises(ConfigError, match="is empty"):
        config_from_str("\n \n")
    with pytest.raises(ConfigError, match="override names a section"):
        config_from_str(ADAM, {"nope.x": 1})
    with pytest.raises(ConfigError, match="not a valid config file"):
        config_from_str("[optimizer\n")
    config = config_from_str(ADAM, {"optimizer.learn_rate": 0.5})
    assert config["optimizer"]["learn_rate"] == 0.5


# --- generated configs -------------------------------------------------------------

ARG_NAMES = {
    param.name
    for reg in ("optimizers", "schedules", "datasets", "models")
    for func in getattr(registry, reg).get_all().values()
    for param in params_of(func)
}
KEYS = sorted(ARG_NAMES) + sorted(
    {k for s in SECTIONS.values() for k in s.model_fields}
)
TYPOS = ["lern_rate", "beta_1", "l2", "warmup", "total_step", "max_step", "Seed"]
NAMES = [
    (reg, name)
    for reg in ("optimizers", "schedules", "datasets", "models")
    for name in getattr(registry, reg).get_all()
]
SECTION_NAMES = ["training", "system", "data", "model", "nlp", "optimiser", "trainig"]

numbers = st.one_of(
    st.integers(min_value=-3, max_value=30_000),
    st.floats(min_value=0, max_value=1),
    st.sampled_from([0, 1, -1, 2, 2**63, 10**400, -(10**400), 1e-300, 5e-324, 1e308]),
    st.sampled_from([-0.0, math.nan, math.inf, -math.inf]),
    st.integers(),
    st.floats(),
)
scalars = st.one_of(
    numbers,
    numbers,
    numbers,
    st.booleans(),
    st.none(),
    st.text(max_size=12),
    st.sampled_from(["Adam.v1", "constant.v1", "é✓\u200b", "", "true", "1e400"]),
)
values = st.one_of(
    *[scalars] * 8,
    st.lists(scalars, max_size=4),
    st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3),
            st.dictionaries(st.sampled_from(["@schedules", "rate", "a", ""]), inner),
        ),
        max_leaves=5,
    ),
)
interpolations = st.sampled_from(["${system.seed}", "${system.nope}", "${x", "$"])
keys = st.one_of(
    st.sampled_from(KEYS),
    st.sampled_from(KEYS),
    st.sampled_from(TYPOS),
    st.text(min_size=1, max_size=8),
)


def render_value(value, raw: bool = False) -> str:
    if raw and isinstance(value, str):
        return value.replace("\n", " ")
    return json.dumps(value, ensure_ascii=False)


@st.composite
def blocks(draw, expected="schedules", depth=0):
    """A section: usually an @-reference, some key = value lines, sub-blocks."""
    block = {}
    pick = draw(st.integers(0, 9))
    if pick < 7:  # a function of the registry the place expects
        name = draw(st.sampled_from([n for r, n in NAMES if r == expected]))
        block["@" + expected] = json.dumps(name)
    elif pick < 9:  # any reference, possibly broken
        reg, name = draw(st.sampled_from(NAMES))
        reg = draw(st.sampled_from([reg, reg, "schedulez", "", "optimizer"]))
        name = draw(st.sampled_from([name, name, name.upper(), name[:-1]]))
        block["@" + reg] = render_value(draw(st.sampled_from([name, 3, None])))
    for key in draw(st.lists(keys, max_size=5, unique=True)):
        pick = draw(st.integers(0, 39))
        if pick == 17:
            block[key] = draw(interpolations)
        else:
            block[key] = render_value(draw(values), raw=pick < 4)
    if depth < 2:
        for key in draw(st.lists(st.sampled_from(KEYS[:16] + ["x"]), max_size=2)):
            block[key] = draw(blocks(depth=depth + 1))
    return block


def render(sections: dict) -> str:
    lines: list[str] = []

    def emit(path: str, block: dict) -> None:
        lines.append(f"[{path}]")
        subs = []
        for key, value in block.items():
            if isinstance(value, dict):
                subs.append((key, value))
            else:
                lines.append(f"{key} = {value}")
        lines.append("")
        for key, value in subs:
            emit(f"{path}.{key}", value)

    for name, block in sections.items():
        emit(name, block)
    return "\n".join(lines)


@st.composite
def structured(draw):
    """Sections with real and made-up names, keys and values of every type."""
    sections = {}
    where = draw(st.sampled_from(["optimizer", "optimizer", "training.optimizer", ""]))
    if where:
        sections[where] = draw(blocks("optimizers"))
    names = st.one_of(st.sampled_from(SECTION_NAMES), st.text(min_size=1, max_size=6))
    for name in draw(st.lists(names, max_size=3, unique=True)):
        expected = {"data": "datasets", "model": "models"}.get(name, "schedules")
        block = draw(blocks(expected))
        if name not in ("data", "model", "nlp") and draw(st.booleans()):
            block = {k: v for k, v in block.items() if not k.startswith("@")}
        sections.setdefault(name, block)
    if "training.optimizer" in sections:  # its parent first
        block = sections.pop("training.optimizer")
        sections = {"training": sections.pop("training", {}), **sections}
        sections["training"]["optimizer"] = block
    return render(sections)


@st.composite
def mutated_examples(draw):
    """A file from configs/ with a few lines replaced, dropped or added."""
    lines = draw(st.sampled_from(CONFIGS)).read_text(encoding="utf8").splitlines()
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        action = draw(st.integers(0, 4))
        key = lines[i].partition("=")[0].strip()
        if action <= 1 and "=" in lines[i]:
            lines[i] = f"{key} = {render_value(draw(values))}"
        elif action == 2:
            del lines[i]
            lines = lines or [""]
        elif action == 3:
            lines.insert(i, f"{draw(keys)} = {render_value(draw(values), True)}")
        else:
            lines[i] = draw(st.sampled_from(["", "[x]", "[training]", lines[i] + "0"]))
    return "\n".join(lines)


override_args = st.one_of(
    st.just([]),
    st.just([]),
    st.lists(
        st.one_of(
            st.tuples(
                st.sampled_from(
                    [
                        "optimizer.learn_rate",
                        "optimizer.beta1",
                        "training.max_steps",
                        "optimizer.learn_rate.total_steps",
                        "system.seed",
                        "nope.x",
                    ]
                ),  # fmt: skip
                values.map(json.dumps),
            ).map(lambda kv: ["--" + kv[0], kv[1]]),
            st.text(max_size=6).map(lambda s: [s]),
        ),
        min_size=1,
        max_size=2,
    ).map(lambda chunks: [arg for chunk in chunks for arg in chunk]),
)

inputs = st.one_of(
    structured(), structured(), structured(), mutated_examples(), mutated_examples(),
    st.text(max_size=200), st.binary(max_size=100),
)  # fmt: skip


@settings(
    max_examples=150,
    deadline=2000,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(content=inputs, args=override_args)
def test_generated_configs_never_crash(tmp_path, content, args):
    path = tmp_path / "generated.cfg"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf8")
    result = runner.invoke(app, ["validate", str(path), *args])
    output = result.output
    assert result.exit_code in (0, 1), output
    assert_no_crash(result, output)
    if result.exit_code == 1:
        assert "✘" in output
    else:
        assert "is valid" in output or "Usage" in output


def test_an_override_inside_a_section_another_override_replaces_is_refused():
    # Found by the config fuzz: the second override used to hit a float.
    cfg = Path(__file__).parents[1] / "configs" / "quickstart.cfg"
    result = CliRunner().invoke(
        app,
        [
            "validate",
            str(cfg),
            "--optimizer.learn_rate",
            "1e+30",
            "--optimizer.learn_rate.base_rate",
            "1",
        ],
    )
    assert result.exit_code == 1
    assert "optimizer.learn_rate.base_rate: sets a value inside" in result.output
    assert "internal error" not in result.output


def test_a_config_of_more_sections_than_optsvc_reads_is_refused_at_once(tmp_path):
    # confection compares every section with every other: 100,000 took minutes
    base = Path(__file__).resolve().parents[1] / "configs" / "quickstart.cfg"
    many = base.read_text() + "".join(
        f"\n[extra{i}]\nx = {i}\n" for i in range(100_000)
    )
    (tmp_path / "many.cfg").write_text(many)
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "many.cfg")])
    assert result.exit_code == 1
    assert "has 100,006 sections, more than the 2,000 optsvc reads" in result.stderr
    # a config under the limit lists the sections it leaves alone in one short line
    some = base.read_text() + "".join(f"\n[extra{i}]\nx = {i}\n" for i in range(100))
    (tmp_path / "some.cfg").write_text(some)
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "some.cfg")])
    [line] = [x for x in result.stdout.splitlines() if x.startswith("not optsvc's")]
    assert line.endswith("and 92 more")  # of 104: [data], [model], ... and 100 extra


def test_a_schedule_inside_another_block_can_be_shown_with_block(tmp_path):
    # spaCy's batch size is a schedule inside its @batchers block
    cfg = tmp_path / "spacy.cfg"
    cfg.write_text(
        "[training]\nmax_steps = 100\n\n[training.batcher]\n"
        '@batchers = "spacy.batch_by_words.v1"\ntolerance = 0.2\n\n'
        '[training.batcher.size]\n@schedules = "compounding.v1"\nstart = 100\n'
        "stop = 1000\ncompound = 1.001\n\n"
        '[training.optimizer]\n@optimizers = "Adam.v1"\n'
    )
    args = ["show-schedule", str(cfg), "--block", "training.batcher.size"]
    result = CliRunner().invoke(app, [*args, "--steps", "3", "--format", "csv"])
    assert result.exit_code == 0, result.output
    sizes = [float(line.split(",")[1]) for line in result.stdout.splitlines()[1:]]
    assert sizes == pytest.approx([100, 100.1, 100.2001])
