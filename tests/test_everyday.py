"""Everyday use (issue 11): what a new user tripped over, each from the
user's side."""

from __future__ import annotations

import errno
from pathlib import Path

from optsvc_cli.main import app
from typer.testing import CliRunner

from optsvc.training import lock

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.cfg"
SMALL = ["--data.n_samples", "300", "--training.max_steps", "60",
         "--training.eval_frequency", "20", "--training.checkpoint_frequency", "20",
         "--optimizer.learn_rate.warmup_steps", "10"]  # fmt: skip
runner = CliRunner()


def train(*args) -> object:
    return runner.invoke(app, ["train", *map(str, args)])


def test_after_a_nan_stop_the_folder_takes_a_new_run(tmp_path):
    run = tmp_path / "run"
    blown = train(QUICKSTART, "-o", run, *SMALL,
                  "--optimizer.learn_rate.initial_rate", "1e30")  # fmt: skip
    assert blown.exit_code == 1 and "not saved" in blown.stderr
    again = train(QUICKSTART, "-o", run, *SMALL)
    assert again.exit_code == 0, again.output
    assert "replacing the run in" in again.stderr
    assert "which failed and saved nothing" in again.stderr
    assert (run / "final.safetensors").is_file()


def test_train_warns_like_validate_about_a_learning_rate_that_dies_early(tmp_path):
    dying = [*SMALL, "--optimizer.learn_rate.total_steps", "20",
             "--optimizer.learn_rate.final_rate", "0"]  # fmt: skip
    checked = runner.invoke(app, ["validate", str(QUICKSTART), *dying])
    trained = train(QUICKSTART, "-o", tmp_path / "run", *dying)
    assert trained.exit_code == 0, trained.output
    warning = "optimizer.learn_rate: reaches 0 at about step"
    assert warning in checked.stderr and warning in trained.stderr


def test_a_folder_that_cannot_be_written_is_named_in_one_sentence(
    tmp_path, monkeypatch
):
    # root may write anywhere: the refusal a read-only folder gives, at the
    # first write into it (the lock file)
    run = tmp_path / "readonly"
    real = lock.os.open

    def refused(path, *args, **kwargs):
        if str(path).startswith(str(run)):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(lock.os, "open", refused)
    result = train(QUICKSTART, "-o", run, *SMALL)
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert line == (
        f"✘ cannot write in '{run}' (Permission denied); give a folder you can "
        "write with -o"
    )


def test_a_thinc_registry_is_not_suggested_as_one_of_optsvcs(tmp_path):
    cfg = tmp_path / "job.cfg"
    cfg.write_text(
        '[optimizer]\n@optimizers = "Adam.v1"\n\n[optimizer.learn_rate]\n'
        '@layers = "constant.v1"\nrate = 0.1\n'
    )
    result = runner.invoke(app, ["validate", str(cfg)])
    assert result.exit_code == 1
    assert "@layers is a Thinc/spaCy registry" in result.stderr
    assert "a function from @schedules" in result.stderr
    assert "did you mean" not in result.stderr
    cfg.write_text('[optimizer]\n@optimizer = "Adam.v1"\n')
    typo = runner.invoke(app, ["validate", str(cfg)])
    assert "did you mean 'optimizers'?" in typo.stderr


def test_validate_shows_only_the_hyperparameters_sgd_uses():
    result = runner.invoke(app, ["validate", str(ROOT / "configs" / "sgd.cfg")])
    assert result.exit_code == 0, result.output
    shown = [line.split("│")[1].strip() for line in result.stdout.splitlines()
             if line.startswith("│")]  # fmt: skip
    assert "learn_rate" in shown and "grad_clip" in shown
    assert not {"beta1", "beta2", "eps"} & set(shown)


def test_cyclic_triangular_upside_down_is_a_warning():
    cfg = ROOT / "configs" / "schedule-cyclic_triangular.cfg"
    result = runner.invoke(
        app, ["validate", str(cfg), "--optimizer.learn_rate.min_lr", "0.1",
              "--optimizer.learn_rate.max_lr", "0.01"]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "optimizer.learn_rate.min_lr: is above max_lr (0.01)" in result.stderr
