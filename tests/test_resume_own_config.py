"""Resuming without retyping: `optsvc train --resume -o DIR` uses the run's
own filled config, the saved config.cfg resumes itself, and overrides given
on resume are compared with the run's config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from optsvc_cli.main import app
from soak import final_arrays
from typer.testing import CliRunner

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.cfg"
SMALL = ["--data.n_samples", "300", "--training.eval_frequency", "20",
         "--training.checkpoint_frequency", "20",
         "--optimizer.learn_rate.warmup_steps", "10"]  # fmt: skip
runner = CliRunner()


def train(*args: str):
    return runner.invoke(app, ["train", *map(str, args)])


def finished(tmp_path: Path, steps: int = 60) -> Path:
    run = tmp_path / "run"
    result = train(QUICKSTART, "-o", run, "--training.max_steps", steps, *SMALL)
    assert result.exit_code == 0, result.output
    return run


def test_the_saved_config_resumes_itself(tmp_path):
    run = finished(tmp_path)
    result = train(run / "config.cfg", "-o", run, "--resume")
    assert result.exit_code == 0, result.output
    assert "already ended at step 60" in result.stdout


def test_resume_without_a_config_uses_the_runs_own(tmp_path):
    run = finished(tmp_path)
    before = final_arrays(run)
    result = train("--resume", "-o", run)
    assert result.exit_code == 0, result.output
    assert "already ended at step 60" in result.stdout
    assert all(np.array_equal(before[k], v) for k, v in final_arrays(run).items())


def test_extending_a_run_from_its_own_config_equals_a_longer_run(tmp_path):
    run = finished(tmp_path)
    # the overrides of the first command are in the run's config: none is
    # repeated, only the new length is given
    result = train("--resume", "-o", run, "--training.max_steps", 80, "--extend")
    assert result.exit_code == 0, result.output
    assert "step 80" in result.stdout
    # the same job in one go, from the run's filled config (its schedule's
    # length written out at 60)
    straight = tmp_path / "straight"
    config = tmp_path / "filled.cfg"
    config.write_text((run / "config.cfg").read_text())
    result = train(config, "-o", straight, "--training.max_steps", 80)
    assert result.exit_code == 0, result.output
    ours, theirs = final_arrays(run), final_arrays(straight)
    assert ours.keys() == theirs.keys()
    assert all(np.array_equal(ours[k], theirs[k]) for k in ours)


def test_an_override_on_resume_is_compared_with_the_runs_config(tmp_path):
    run = finished(tmp_path)
    result = train("--resume", "-o", run, "--optimizer.beta1", 0.8)
    assert result.exit_code == 1
    assert "optimizer.beta1: 0.9 -> 0.8" in result.stderr


def test_no_config_without_resume_is_a_usage_error(tmp_path):
    result = train("-o", tmp_path / "run")
    assert result.exit_code == 2  # as every command-line usage error
    assert "Invalid value for 'CONFIG': missing" in result.stderr
    assert "--resume -o DIR" in result.stderr
    assert not (tmp_path / "run").exists()


def test_resume_of_a_folder_without_a_run_says_how_to_start(tmp_path):
    result = train("--resume", "-o", tmp_path / "nothing")
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert "holds no run to resume" in line and "optsvc train CONFIG -o" in line


def test_a_config_without_a_system_section_resumes_from_its_own(tmp_path):
    """config.cfg writes [system] out with its defaults, which the config the
    checkpoint recorded left out: the same run, so it resumes."""
    text = QUICKSTART.read_text().replace("[system]\nseed = 0\ngpu_id = -1\n", "")
    config = tmp_path / "job.cfg"
    config.write_text(text.replace("seed = ${system.seed}\n", ""))
    run = tmp_path / "run"
    result = train(config, "-o", run, "--training.max_steps", 40, *SMALL)
    assert result.exit_code == 0, result.output
    (run / "final.safetensors").unlink()
    result = train("--resume", "-o", run)
    assert result.exit_code == 0, result.output
    assert "resumed: from step 40" in result.stdout
