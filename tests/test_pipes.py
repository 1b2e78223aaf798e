"""A closed pipe is not an error: `optsvc ... | head -1` exits 0 and says
nothing on stderr (the reader has all it wants), and a training run goes on
to its end. And what the command line makes of a misspelt option."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from optsvc_cli.main import app
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [
    ["registry"],
    ["registry", "schedules"],
    ["show-schedule", "configs/adam.cfg", "--format", "csv"],
    ["show-schedule", "configs/adam.cfg"],
    ["validate", "configs/adam.cfg"],
]


@pytest.mark.slow
@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_a_reader_that_stops_reading_is_not_an_error(args):
    proc = subprocess.Popen(
        [sys.executable, "-m", "optsvc_cli.main", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    proc.stdout.close()  # the reader is gone before the first line: EPIPE
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert err == ""


@pytest.mark.slow
def test_a_training_run_outlives_the_reader_of_its_output(tmp_path):
    # `optsvc train ... | head -3`: the run goes on to its end, quietly.
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "optsvc_cli.main", "train", "configs/quickstart.cfg",
         "-o", str(run), "--training.max_steps", "600", "--data.n_samples", "600",
         "--training.eval_frequency", "100", "--training.checkpoint_frequency",
         "200"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    for _ in range(3):
        proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert (run / "final.safetensors").is_file()
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").open()]
    assert steps == [100, 200, 300, 400, 500, 600]


def test_a_misspelt_option_is_a_usage_error_that_names_the_option(tmp_path):
    # An override has a dot; --resum, close to --resume, is a typo (exit 2).
    runner = CliRunner()
    for command, typo, meant in [
        (["train", "configs/quickstart.cfg", "-o", str(tmp_path)], "--resum",
         "--resume"),
        (["train", "configs/quickstart.cfg"], "--ouput", "--output"),
        (["validate", "configs/quickstart.cfg"], "--blok", "--block"),
    ]:  # fmt: skip
        result = runner.invoke(app, [*command, typo, *(["x"] * (typo == "--ouput"))])
        assert result.exit_code == 2, result.output
        assert f"No such option: {typo} (did you mean {meant}?)" in result.output
        assert "Usage:" in result.output
    result = runner.invoke(app, ["validate", "configs/quickstart.cfg", "--trainin"])
    assert result.exit_code == 1  # far from every option: an override, reported
