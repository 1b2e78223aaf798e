"""Thinc and spaCy configs through `optsvc validate` and `show-schedule`,
the command-line bugs of a new user's trial, and configs that validate but
could not train (schedule ranges, sizes), all from the user's side."""

import subprocess
import sys
from pathlib import Path

import pytest
from optsvc_cli.main import app
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

# As Thinc's examples and docs write them: variables in [hyper_params], a
# [model] of @layers, a [training] with n_iter.
THINC = """\
[hyper_params]
n_hidden = 32
dropout = 0.2
learn_rate = 0.001

[model]
@layers = "chain.v1"

[model.*.relu1]
@layers = "Relu.v1"
nO = ${hyper_params.n_hidden}
dropout = ${hyper_params.dropout}

[model.*.softmax]
@layers = "Softmax.v1"

[optimizer]
@optimizers = "Adam.v1"
learn_rate = ${hyper_params.learn_rate}

[training]
n_iter = 10
batch_size = 128
"""

THINC_SCHEDULE = """\
[training]
n_iter = 10

[optimizer]
@optimizers = "Adam.v1"

[optimizer.learn_rate]
@schedules = "warmup_linear.v1"
initial_rate = 0.01
warmup_steps = 10
total_steps = 200
"""

# A spaCy config with no step limit, a pretraining optimizer and both
# optimizer blocks (spaCy trains from [training.optimizer]).
SPACY = """\
[nlp]
lang = "en"

[training]
max_steps = 0

[training.optimizer]
@optimizers = "Adam.v1"

[training.optimizer.learn_rate]
@schedules = "warmup_linear.v1"
warmup_steps = 250
total_steps = 20000
initial_rate = 0.00005

[pretraining]
max_epochs = 1000

[pretraining.optimizer]
@optimizers = "Adam.v1"
learn_rate = 0.001

[optimizer]
@optimizers = "SGD.v1"
learn_rate = 0.5
"""

LEARN_RATE = """\
[learn_rate]
@schedules = "warmup_linear.v1"
initial_rate = 0.01
warmup_steps = 10
total_steps = 100
"""


def write(tmp_path: Path, text: str, name: str = "c.cfg") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result, result.output


def csv_rows(output: str) -> list[list[str]]:
    lines = [line for line in output.splitlines() if line and line[0].isdigit()]
    return [line.split(",") for line in lines]


# --- Thinc configs -----------------------------------------------------------------


def test_thinc_config_validates_and_names_what_was_not_checked(tmp_path):
    result, output = invoke("validate", write(tmp_path, THINC))
    assert result.exit_code == 0, output
    assert "sections checked: optimizer" in output
    unchecked = next(line for line in output.splitlines() if "not checked" in line)
    for section in ("hyper_params", "model", "training"):
        assert section in unchecked
    assert "0.001" in output  # ${hyper_params.learn_rate} was read


def test_thinc_config_show_schedule(tmp_path):
    config = write(tmp_path, THINC_SCHEDULE)
    result, output = invoke("show-schedule", config, "--format", "csv")
    assert result.exit_code == 0, output
    rows = csv_rows(output)
    assert len(rows) == 200  # the schedule's own length: Thinc has no max_steps
    assert float(rows[10][1]) == pytest.approx(0.01)


def test_thinc_config_errors_in_its_optimizer_are_still_found(tmp_path):
    config = write(tmp_path, THINC.replace("Adam.v1", "Adma.v1"))
    result, output = invoke("validate", config)
    assert result.exit_code == 1
    assert "optimizer.@optimizers" in output and "did you mean 'Adam.v1'" in output


def test_train_refuses_a_thinc_config_with_the_reason(tmp_path):
    result, output = invoke("train", write(tmp_path, THINC), "-o", tmp_path / "r")
    assert result.exit_code == 1
    assert "Thinc-style config" in output and "[hyper_params]" in output
    assert not (tmp_path / "r").exists()


def test_a_hyper_params_section_feeds_the_optimizer(tmp_path):
    text = (
        "[hyper_params]\nlearn_rate = 0.003\n\n[optimizer]\n"
        '@optimizers = "Adam.v1"\nlearn_rate = ${hyper_params.learn_rate}\n'
    )
    result, output = invoke("validate", write(tmp_path, text))
    assert result.exit_code == 0, output
    assert "0.003" in output and "hyper_params" in output


def test_misspelt_optsvc_section_is_still_an_error(tmp_path):
    text = '[optimizer]\n@optimizers = "Adam.v1"\n\n[trainig]\nmax_steps = 5\n'
    result, output = invoke("validate", write(tmp_path, text))
    assert result.exit_code == 1 and "did you mean 'training'?" in output


# --- spaCy configs -----------------------------------------------------------------


def test_spacy_both_blocks_builds_training_optimizer(tmp_path):
    result, output = invoke("validate", write(tmp_path, SPACY))
    assert result.exit_code == 0, output
    assert "[training.optimizer]  Adam.v1" in output
    checked = next(line for line in output.splitlines() if "checked:" in line)
    for block in ("training.optimizer", "pretraining.optimizer", "optimizer"):
        assert block in checked
    assert "pick another with --block" in output


def test_spacy_every_block_is_checked(tmp_path):
    text = SPACY.replace("learn_rate = 0.001", "learn_rate = -1")
    result, output = invoke("validate", write(tmp_path, text))
    assert result.exit_code == 1
    assert "pretraining.optimizer.learn_rate: must be >= 0" in output


def test_pick_a_block(tmp_path):
    config = write(tmp_path, SPACY)
    result, output = invoke("validate", config, "--block", "pretraining.optimizer")
    assert result.exit_code == 0, output
    assert "[pretraining.optimizer]  Adam.v1" in output
    result, output = invoke("validate", config, "--block", "optimizer")
    assert "[optimizer]  SGD.v1" in output
    result, output = invoke("validate", config, "--block", "pretraining.optimiser")
    assert result.exit_code == 1
    assert "did you mean 'pretraining.optimizer'?" in output


def test_show_schedule_on_max_steps_zero(tmp_path):
    config = write(tmp_path, SPACY)
    result = runner.invoke(app, ["show-schedule", str(config), "--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = csv_rows(result.stdout)
    assert len(rows) == 20000  # the schedule's own length
    assert "max_steps is 0" in result.stderr and "20000" in result.stderr
    result, output = invoke("show-schedule", config)  # the chart and table
    assert result.exit_code == 0 and "internal error" not in output
    result, output = invoke(
        "show-schedule", config, "--block", "pretraining.optimizer", "--format", "csv"
    )
    assert result.exit_code == 0 and len(csv_rows(output)) == 1000  # the default


def test_standalone_schedule_block_is_previewed(tmp_path):
    config = write(tmp_path, LEARN_RATE)
    result, output = invoke("validate", config)
    assert result.exit_code == 0, output
    assert "[learn_rate]  warmup_linear.v1" in output
    result, output = invoke("show-schedule", config, "--format", "csv")
    rows = csv_rows(output)
    assert result.exit_code == 0 and len(rows) == 100
    assert float(rows[10][1]) == pytest.approx(0.01)


# --- the bugs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["show-schedule", "configs/adam.cfg", "--format", "csv"],
        ["show-schedule", "configs/adam.cfg"],
        ["registry"],
        ["validate", "configs/adam.cfg"],
    ],
)
def test_a_closed_pipe_is_not_an_error(command):
    script = (
        f"{sys.executable} -m optsvc_cli.main {' '.join(command)} | head -1 "
        "; exit ${PIPESTATUS[0]}"
    )
    out = subprocess.run(
        ["bash", "-c", script], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr == "" and len(out.stdout.splitlines()) == 1


def test_undefined_variable_names_itself_its_line_and_a_fix(tmp_path):
    text = THINC.replace("${hyper_params.learn_rate}", "${hyper_params.learn_rat}")
    result, output = invoke("validate", write(tmp_path, text))
    assert result.exit_code == 1
    assert "${hyper_params.learn_rat}" in output and "line 19" in output
    assert "did you mean 'learn_rate'?" in output
    assert "Bad value substitution" not in output
    text = THINC.replace("${hyper_params.dropout}", "${hyper_param.dropout}")
    result, output = invoke("validate", write(tmp_path, text))
    assert "there is no section [hyper_param]" in output
    assert "did you mean 'hyper_params'?" in output


def test_help_states_the_exit_codes_and_offers_completion():
    output = runner.invoke(app, ["--help"]).output
    assert "Exit codes: 0" in output and "--install-completion" in output


def test_exit_codes_follow_the_rule(tmp_path):
    usage = runner.invoke(app, ["validate"])  # missing argument
    assert usage.exit_code == 2 and "Usage:" in usage.output
    user = runner.invoke(app, ["validate", str(tmp_path / "nope.cfg")])
    assert user.exit_code == 1 and "does not exist" in user.output


def test_override_typo_in_an_unchecked_section_is_refused(tmp_path):
    config = write(tmp_path, SPACY)
    result, output = invoke("validate", config, "--nlp.langg", "de")
    assert result.exit_code == 1
    assert "nlp.langg" in output and "did you mean 'lang'?" in output
    result, output = invoke("validate", config, "--nlp.lang", "de")
    assert result.exit_code == 0, output
    # A new key in a block optsvc checks is fine: the check reads it.
    result, output = invoke("validate", config, "--training.optimizer.L2", "0.1")
    assert result.exit_code == 0, output


def test_layers_registry_gets_no_schedules_hint(tmp_path):
    text = '[optimizer]\n@optimizers = "Adam.v1"\n\n[data]\n@layers = "x.v1"\n'
    result, output = invoke("validate", write(tmp_path, text))
    assert result.exit_code == 0, output
    assert "@schedules" not in output


# --- configs that validated, then crashed in train (issue 15.2) ----------------------

QUICK = (ROOT / "configs" / "quickstart.cfg").read_text()


BETA1_TO_ONE = """\
[optimizer.beta1]
@schedules = "constant_then.v1"
rate = 0.9
steps = 100

[optimizer.beta1.schedule]
@schedules = "constant.v1"
rate = 1.0
"""


@pytest.mark.parametrize("command", ["validate", "train"])
def test_beta1_scheduled_to_one_is_refused(tmp_path, command):
    text = QUICK.replace("beta1 = 0.9\n", "") + BETA1_TO_ONE
    args = ["-o", tmp_path / "r"] if command == "train" else []
    result, output = invoke(command, write(tmp_path, text), *args)
    assert result.exit_code == 1, output
    assert "optimizer.beta1: its schedule reaches 1.0 at step" in output
    assert "must be in [0, 1)" in output and "internal error" not in output
    assert not (tmp_path / "r").exists()


def test_radam_beta2_scheduled_to_one_is_refused(tmp_path):
    text = QUICK.replace("Adam.v1", "RAdam.v1").replace("beta2 = 0.999\n", "")
    text += BETA1_TO_ONE.replace("beta1", "beta2")
    result, output = invoke("train", write(tmp_path, text), "-o", tmp_path / "r")
    assert result.exit_code == 1, output
    assert "optimizer.beta2: its schedule reaches 1.0" in output


def test_growing_plateau_that_overflows_is_refused(tmp_path):
    text = QUICK.replace("max_steps = 3000", "max_steps = 100000").replace(
        "eval_frequency = 250", "eval_frequency = 1"
    )
    text = text.replace(
        '[optimizer.learn_rate]\n@schedules = "warmup_cosine.v1"',
        '[optimizer.learn_rate]\n@schedules = "plateau.v1"\nmax_patience = 1\n'
        "scale = 10\n\n[optimizer.learn_rate.schedule]\n"
        '@schedules = "warmup_cosine.v1"',
    )
    result, output = invoke("validate", write(tmp_path, text))
    assert result.exit_code == 1, output
    assert "optimizer.learn_rate: a plateau with scale 10" in output
    # A shrinking plateau is the usual use: fine.
    result, output = invoke(
        "validate", write(tmp_path, text.replace("= 10\n", "= 0.5\n"))
    )
    assert result.exit_code == 0, output


def test_huge_model_is_refused_before_allocating(tmp_path):
    config = write(tmp_path, QUICK)
    result, output = invoke(
        "train", config, "-o", tmp_path / "r", "--model.hidden_width",
        "9223372036854775807",
    )  # fmt: skip
    assert result.exit_code == 1, output
    assert "model.hidden_width: the job would need about" in output
    assert "make model.hidden_width smaller" in output
    assert not (tmp_path / "r").exists()
    result, output = invoke(
        "train", config, "-o", tmp_path / "r2", "--data.n_samples", str(2**62)
    )
    assert result.exit_code == 1 and "data.n_samples: the job would need" in output
