"""The command line through Typer's CliRunner and one real subprocess."""

import csv
import inspect
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from confection import Config
from optsvc_cli import render
from optsvc_cli.main import app, user_errors
from rich.console import Console
from typer.testing import CliRunner

import optsvc
from optsvc.config import ConfigError, ConfigIssue
from optsvc.config.registry import registry
from optsvc.errors import OptsvcError
from optsvc.spec import params_of

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"optsvc {optsvc.__version__}"


def test_help_explains():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "Thinc-compatible" in result.output and "registry" in result.output


def test_registry_help_and_listing():
    assert "Example" in runner.invoke(app, ["registry", "--help"]).output
    result = runner.invoke(app, ["registry"])
    assert result.exit_code == 0
    assert "Adam.v1" in result.output and "warmup_cosine.v1" in result.output


def test_console_script_runs():
    out = subprocess.run(
        [sys.executable, "-m", "optsvc_cli.main", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.startswith("optsvc ")


# --- user errors are told apart by type --------------------------------------------


@pytest.mark.parametrize(
    ("error", "code", "lines"),
    [
        (ConfigError([ConfigIssue("a.b", "one"), ConfigIssue("c", "two")]), 1,
         ["✘ 2 errors", "  a.b: one", "  c: two"]),
        (OptsvcError("the run folder is locked; wait for it"), 1,
         ["✘ the run folder is locked; wait for it"]),
        # No message is read for its words: a plain ValueError is a bug.
        (ValueError("Circular reference detected"), 2,
         ["✘ internal error: ValueError: Circular reference detected (please "
          "report this with the command you ran)"]),
    ],
    ids=["config-error", "optsvc-error", "other"],
)  # fmt: skip
def test_user_errors_by_type(error, code, lines):
    demo = typer.Typer()

    @demo.command()
    @user_errors
    def fail() -> None:
        raise error

    result = runner.invoke(demo, [])
    assert result.exit_code == code
    assert result.output.splitlines() == lines


# --- every command's help ------------------------------------------------------------


def command_names() -> list[str]:
    names = [
        c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands
    ]
    names += [g.name or g.typer_instance.info.name for g in app.registered_groups]
    return names


def test_known_commands_are_registered():
    assert {"validate", "show-schedule", "registry"} <= set(command_names())


@pytest.mark.parametrize("name", command_names())
def test_every_command_help_shows_an_example(name):
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    assert "Example" in result.output
    words = " ".join(result.output.split())
    assert f"optsvc {name}" in words  # the example runs this command


def test_root_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "Example" in result.output and "--version" in result.output
    for name in command_names():
        assert name in result.output


def test_no_arguments_shows_help():
    result = runner.invoke(app, [])
    assert "Usage" in result.output
    assert "Traceback" not in result.output


# --- registry ----------------------------------------------------------------------


@pytest.fixture
def wide(monkeypatch):
    """Render tables wide enough that no cell wraps."""
    monkeypatch.setattr(render, "out", Console(highlight=False, width=400))


def test_registry_schedules_lists_every_schedule(wide):
    result = runner.invoke(app, ["registry", "schedules"])
    assert result.exit_code == 0, result.output
    assert "@schedules" in result.output and "@optimizers" not in result.output
    lines = result.output.splitlines()
    for name, func in registry.schedules.get_all().items():
        row = next((line for line in lines if f" {name} " in line), None)
        assert row is not None, name
        for param in params_of(func):
            assert param.name in row, (name, param.name)
            if param.default is not inspect.Parameter.empty:
                assert f"{param.name}={param.default!r}" in row
        doc = inspect.getdoc(func).split("\n\n")[0].replace("\n", " ")
        assert doc and doc in row, (name, doc)  # as written: "[i]" kept


@pytest.mark.parametrize("name", ["optimizers", "datasets", "models"])
def test_registry_each(wide, name):
    result = runner.invoke(app, ["registry", name])
    assert result.exit_code == 0
    for func in getattr(registry, name).get_all():
        assert func in result.output


def test_registry_unknown_name():
    result = runner.invoke(app, ["registry", "schedulez"])
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert "schedules" in result.output


# --- show-schedule -----------------------------------------------------------------

CONFIGS = Path(__file__).parent.parent / "configs"
SCHEDULED = sorted(p for p in CONFIGS.glob("*.cfg") if "learn_rate]" in p.read_text())


def build(block: dict):
    """A config block built straight from the registry, nested blocks first."""
    ref = next(k for k in block if k.startswith("@"))
    kwargs = {
        k: build(v) if isinstance(v, dict) else v
        for k, v in block.items()
        if not k.startswith("@")
    }
    return getattr(registry, ref[1:]).get(block[ref])(**kwargs)


def optimizer_block(config: dict) -> dict:
    if "optimizer" in config:
        return config["optimizer"]
    return config["training"]["optimizer"]


def expected_values(path: Path, steps: int, param: str = "learn_rate") -> list[float]:
    block = optimizer_block(Config().from_disk(path))[param]
    schedule = build(block)
    return [float(schedule(step, key=None, last_score=None)) for step in range(steps)]


def show(*args):
    result = runner.invoke(app, ["show-schedule", *map(str, args)])
    assert "Traceback" not in result.output
    return result


def as_json(*args) -> dict:
    result = show(*args, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def as_csv(*args) -> list[dict]:
    result = show(*args, "--format", "csv")
    assert result.exit_code == 0, result.output
    return list(csv.DictReader(io.StringIO(result.output)))


def test_every_schedule_family_has_an_example():
    assert len(SCHEDULED) >= 14


@pytest.mark.parametrize("path", SCHEDULED, ids=[p.name for p in SCHEDULED])
def test_json_equals_the_schedule_at_every_step(path):
    data = as_json(path)
    n = data["steps"]
    assert data["params"] == ["learn_rate"]
    assert [row["step"] for row in data["rows"]] == list(range(n))
    got = [row["learn_rate"] for row in data["rows"]]
    assert got == expected_values(path, n)  # exactly, every step


@pytest.mark.parametrize("path", SCHEDULED, ids=[p.name for p in SCHEDULED])
def test_csv_equals_the_schedule_at_every_step(path):
    rows = as_csv(path, "--steps", 3000)
    assert [int(r["step"]) for r in rows] == list(range(3000))
    assert [float(r["learn_rate"]) for r in rows] == expected_values(path, 3000)


def test_several_scheduled_params(tmp_path):
    config = tmp_path / "two.cfg"
    config.write_text(
        '[optimizer]\n@optimizers = "Adam.v1"\n\n'
        '[optimizer.learn_rate]\n@schedules = "warmup_cosine.v1"\n'
        "initial_rate = 0.01\nwarmup_steps = 20\ntotal_steps = 200\n\n"
        '[optimizer.beta1]\n@schedules = "cyclic_triangular.v1"\n'
        "min_lr = 0.85\nmax_lr = 0.95\nperiod = 25\n\n"
        '[optimizer.grad_clip]\n@schedules = "piecewise_constant.v1"\n'
        "boundaries = [50, 150]\nvalues = [1.0, 0.5, 0.25]\n"
    )
    data = as_json(config)
    assert data["params"] == ["learn_rate", "beta1", "grad_clip"]
    assert data["steps"] == 200  # warmup_cosine's total_steps
    for param in data["params"]:
        got = [row[param] for row in data["rows"]]
        assert got == expected_values(config, 200, param), param
    rows = as_csv(config, "--param", "grad_clip", "--param", "beta1", "--steps", 60)
    assert list(rows[0]) == ["step", "grad_clip", "beta1"]
    assert [float(r["beta1"]) for r in rows] == expected_values(config, 60, "beta1")
    # A constant hyperparameter can be asked for too.
    data = as_json(config, "--param", "eps", "--steps", 5)
    assert [row["eps"] for row in data["rows"]] == [1e-8] * 5


def test_unknown_param_lists_the_choices():
    result = show(CONFIGS / "adam.cfg", "--param", "momentum", "--steps", 5)
    assert result.exit_code == 1
    assert "'momentum'" in result.output
    for name in ("learn_rate", "L2", "beta1", "beta2", "eps", "grad_clip"):
        assert name in result.output


def test_show_schedule_user_errors(tmp_path):
    result = show(tmp_path / "missing.cfg")
    assert result.exit_code == 1 and "does not exist" in result.output
    bad = tmp_path / "bad.cfg"
    bad.write_text('[optimizer]\n@optimizers = "Adam.v1"\nbeta1 = 2\n')
    result = show(bad)
    assert result.exit_code == 1 and "optimizer.beta1" in result.output
    result = show(CONFIGS / "adam.cfg", "--steps", 0)
    assert result.exit_code == 2 and "--steps" in result.output  # Typer's check
    result = show(CONFIGS / "adam.cfg", "--format", "svg")
    assert result.exit_code == 2 and "svg" in result.output


def test_schedule_that_overflows_is_a_user_error(tmp_path):
    path = tmp_path / "grows.cfg"
    path.write_text(
        '[optimizer]\n@optimizers = "SGD.v1"\nlearn_rate = 0.1\n\n'
        '[optimizer.L2]\n@schedules = "exponential_decay.v1"\n'
        "initial_rate = 1\ndecay_rate = 2\ndecay_steps = 1\n"
    )
    assert runner.invoke(app, ["validate", str(path)]).exit_code == 0
    result = show(path, "--steps", 2000, "--format", "csv")
    assert "internal error" not in result.output
    assert result.exit_code == 1 and "L2" in result.output


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.cfg"
    path.write_text(text)
    return path


WARMUP = (
    '[optimizer]\n@optimizers = "Adam.v1"\n\n'
    '[optimizer.learn_rate]\n@schedules = "warmup_linear.v1"\n'
    "initial_rate = 0.001\nwarmup_steps = 30\ntotal_steps = 300\n"
)


def test_steps_default_is_training_max_steps(tmp_path):
    path = write(tmp_path, "[training]\nmax_steps = 123\n\n" + WARMUP)
    assert as_json(path)["steps"] == 123
    assert as_json(path, "--training.max_steps", 77)["steps"] == 77
    assert as_json(path, "--steps", 5)["steps"] == 5
    assert len(as_json(path, "--steps", 5)["rows"]) == 5
    assert as_json(CONFIGS / "spacy_training.cfg", "--steps", 3)["steps"] == 3


def test_steps_default_is_the_schedule_horizon(tmp_path):
    path = write(tmp_path, WARMUP)
    data = as_json(path)
    assert data["steps"] == 300 and len(data["rows"]) == 300
    assert data["rows"][-1]["learn_rate"] == expected_values(path, 300)[-1]
    # The override reaches the schedule's own horizon.
    assert as_json(path, "--optimizer.learn_rate.total_steps", 50)["steps"] == 50


def test_steps_default_is_1000_without_a_horizon(tmp_path):
    assert as_json(CONFIGS / "schedule-decaying.cfg")["steps"] == 1000
    data = as_json(CONFIGS / "radam.cfg")  # nothing scheduled: learn_rate
    assert data["steps"] == 1000 and data["params"] == ["learn_rate"]
    assert {row["learn_rate"] for row in data["rows"]} == {0.001}


PLATEAU = (
    '[optimizer]\n@optimizers = "Adam.v1"\n\n'
    '[optimizer.learn_rate]\n@schedules = "plateau.v1"\nmax_patience = 2\n'
    'scale = 0.5\n\n[optimizer.learn_rate.schedule]\n@schedules = "constant.v1"\n'
    "rate = 0.01\n"
)


def test_plateau_replays_scores(tmp_path):
    path = write(tmp_path, PLATEAU)
    metrics = tmp_path / "metrics.jsonl"
    scores = [0.5, 0.6, 0.6, 0.55, 0.5, 0.5, 0.7, 0.7]
    metrics.write_text(
        "".join(
            json.dumps({"step": 10 * i, "epoch": 0, "loss": 1.0, "score": s}) + "\n"
            for i, s in enumerate(scores)
        )
        + "\n"
    )
    data = as_json(path, "--scores", metrics, "--steps", 80)
    got = [row["learn_rate"] for row in data["rows"]]
    # No improvement at steps 20 and 30: the first plateau; 40, 50: the second.
    assert got[:30] == [0.01] * 30
    assert got[30:50] == [0.005] * 20
    assert got[50:] == [0.0025] * 30
    result = show(path, "--scores", metrics, "--steps", 80, "--format", "table")
    assert result.exit_code == 0
    assert "no plateau is assumed" not in result.output
    assert "0.0025" in result.output


def test_plateau_without_scores_says_so(tmp_path):
    path = write(tmp_path, PLATEAU)
    data = as_json(path, "--steps", 80)
    assert {row["learn_rate"] for row in data["rows"]} == {0.01}
    for fmt in ("table", "chart"):
        result = show(path, "--steps", 80, "--format", fmt)
        assert result.exit_code == 0
        assert "no plateau is assumed" in result.output
        assert "--scores" in result.output


def test_bad_scores_file(tmp_path):
    path = write(tmp_path, PLATEAU)
    result = show(path, "--scores", tmp_path / "nope.jsonl")
    assert result.exit_code == 1 and "nope.jsonl" in result.output
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 0, "score": 0.5}\nnot json\n')
    result = show(path, "--scores", metrics)
    assert result.exit_code == 1 and "line 2" in result.output


def test_chart_prints_a_chart_and_the_table(tmp_path):
    result = show(write(tmp_path, WARMUP))  # chart is the default
    assert result.exit_code == 0, result.output
    out = result.output
    assert "learn_rate" in out
    assert "│" in out and "└" in out and "•" in out and "(step)" in out
    assert "0.001" in out  # the peak labels the top of the axis
    assert "299" in out  # the last step labels the end of the axis
    # then the table of sampled steps, first and last step included
    table = out[out.index("┏") :]
    assert "step" in table and " 0 " in table and " 299 " in table
    assert "0.001" in table
    chart_lines = [line for line in out.splitlines() if "│" in line][:10]
    assert len(chart_lines) == 10


def test_table_format_samples_steps(tmp_path):
    result = show(write(tmp_path, WARMUP), "--format", "table")
    assert result.exit_code == 0
    assert "•" not in result.output
    steps = [
        int(line.split("│")[1])
        for line in result.output.splitlines()
        if line.startswith("│")
    ]
    assert steps[0] == 0 and steps[-1] == 299 and len(steps) == 11
    assert steps == sorted(steps)


# --- the installed script, in a real process ---------------------------------------


def script() -> list[str]:
    exe = Path(sys.executable).parent / "optsvc"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "optsvc_cli.main"]


def test_script_validates_a_config():
    out = subprocess.run(
        [*script(), "validate", str(CONFIGS / "adam.cfg"), "--optimizer.L2", "0.01"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "is valid" in out.stdout
    assert "Adam.v1" in out.stdout
    assert out.stderr == ""


def test_script_user_error_is_one_clear_message(tmp_path):
    bad = tmp_path / "bad.cfg"
    bad.write_text('[optimizer]\n@optimizers = "Adam.v1"\nbeta1 = 1.5\n')
    out = subprocess.run(
        [*script(), "validate", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "Traceback" not in out.stderr + out.stdout
    assert "optimizer.beta1: must be in [0, 1), got 1.5" in out.stderr
    assert out.stdout == ""  # errors go to stderr


@pytest.mark.parametrize(
    "args",
    [["validate", "CFG"], ["show-schedule", "CFG"], ["train", "CFG", "-o", "RUN"],
     ["sweep", "CFG", "-o", "SWEEP", "--grid", "optimizer.beta1=0.8,0.9"],
     ["bench", "CFG"], ["runs", "DIR"], ["evaluate", "DIR"], ["plot", "DIR"]],
)  # fmt: skip
def test_an_unreadable_path_is_optsvcs_error_not_a_usage_error(
    args, tmp_path, monkeypatch
):
    # Click would refuse a path os.access calls unreadable as a usage error
    # (exit 2); optsvc reads it itself and says what is wrong (exit 1).
    cfg, folder = tmp_path / "job.cfg", tmp_path / "runs"
    cfg.write_text("[optimizer]\n")
    folder.mkdir()
    real = os.access
    denied = {str(cfg), str(folder)}
    monkeypatch.setattr(
        os, "access", lambda p, mode, *a, **k: str(p) not in denied and real(p, mode)
    )
    words = {"CFG": str(cfg), "DIR": str(folder), "RUN": str(tmp_path / "r"),
             "SWEEP": str(tmp_path / "s")}  # fmt: skip
    result = CliRunner().invoke(app, [words.get(a, a) for a in args])
    assert result.exit_code == 1, result.output
    assert "is not readable" not in result.output
