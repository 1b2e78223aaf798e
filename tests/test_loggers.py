"""[training.logger]: the console, TensorBoard and MLflow loggers and their
chain, read back with TensorBoard's own event reader and the MLflow client,
after a clean run, after SIGKILL and --resume, and against a real MLflow
tracking server on loopback."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import soak
from optsvc_cli.main import app
from runs_helpers import QUICKSTART, free_port, metrics
from typer.testing import CliRunner

runner = CliRunner()

CHAIN = """
[training.logger]
@loggers = "optsvc.ChainLogger.v1"

[training.logger.logger1]
@loggers = "optsvc.ConsoleLogger.v1"
progress_bar = false

[training.logger.logger2]
@loggers = "optsvc.TensorBoardLogger.v1"

[training.logger.logger3]
@loggers = "optsvc.MLflowLogger.v1"
experiment_name = "logger-tests"
tags = {"purpose": "test"}
"""
SMALL = ["--data.n_samples", "300", "--training.eval_frequency", "20",
         "--training.checkpoint_frequency", "50",
         "--optimizer.learn_rate.warmup_steps", "10"]  # fmt: skip
ROWS = ("epoch", "loss", "score", "learn_rate", "steps_per_sec")


def config_with(tmp_path: Path, logger_block: str) -> Path:
    path = tmp_path / "job.cfg"
    path.write_text(QUICKSTART.read_text() + "\n" + logger_block)
    return path


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import (
        EventAccumulator,
    )

    reader = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    reader.Reload()
    return {
        tag: [(e.step, e.value) for e in reader.Scalars(tag)]
        for tag in reader.Tags()["scalars"]
    }


def mlflow_run(run: Path):
    from mlflow.tracking import MlflowClient

    saved = json.loads((run / "mlflow.json").read_text())
    client = MlflowClient(saved["tracking_uri"])
    return client, client.get_run(saved["run_id"])


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def expected(run: Path, key: str) -> list[tuple[int, float]]:
    return [(row["step"], row[key]) for row in metrics(run) if row[key] is not None]


def assert_same(got: list[tuple[int, float]], want: list[tuple[int, float]]):
    assert [step for step, _ in got] == [step for step, _ in want]
    for (_, a), (_, b) in zip(got, want):
        assert a == pytest.approx(b, rel=1e-6)  # TensorBoard keeps float32


# --- TensorBoard and MLflow after a clean run ------------------------------------


def test_every_scalar_at_every_step_in_tensorboard_and_mlflow(tmp_path):
    run = tmp_path / "run"
    cfg = config_with(tmp_path, CHAIN)
    result = runner.invoke(
        app, ["train", str(cfg), "-o", str(run), "--training.max_steps", "100", *SMALL]
    )
    assert result.exit_code == 0, result.output
    assert "step 100" in result.stdout  # the console logger in the chain
    scalars = tensorboard_scalars(run / "tensorboard")
    client, mlrun = mlflow_run(run)
    for key in ROWS:
        assert_same(scalars[key], expected(run, key))
        assert_same(history(client, mlrun.info.run_id, key), expected(run, key))
    assert mlrun.info.status == "FINISHED"
    assert mlrun.info.run_name == "run"
    assert mlrun.data.tags["purpose"] == "test"
    assert mlrun.data.params["optimizer.optimizers"] == "Adam.v1"
    assert mlrun.data.params["training.max_steps"] == "100"
    artifacts = {a.path for a in client.list_artifacts(mlrun.info.run_id)}
    assert artifacts == {"config.cfg", "best.safetensors", "final.safetensors"}


def test_the_default_mlflow_store_works_with_a_relative_output_folder(tmp_path):
    block = '[training.logger]\n@loggers = "optsvc.MLflowLogger.v1"\n'
    cfg = config_with(tmp_path, block)
    done = subprocess.run(
        [sys.executable, "-m", "optsvc_cli", "train", str(cfg), "-o", "relrun",
         "--training.max_steps", "40", *SMALL],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    store = f"sqlite:///{tmp_path / 'relrun' / 'mlflow' / 'mlflow.db'}"
    assert f"MLflow: mlflow ui --backend-store-uri {store}" in done.stdout
    client, mlrun = mlflow_run(tmp_path / "relrun")
    assert_same(history(client, mlrun.info.run_id, "loss"),
                expected(tmp_path / "relrun", "loss"))  # fmt: skip


def test_a_stale_mlflow_json_starts_a_new_mlflow_run_with_a_warning(tmp_path):
    block = '[training.logger]\n@loggers = "optsvc.MLflowLogger.v1"\n'
    cfg, run = config_with(tmp_path, block), tmp_path / "run"
    args = ["train", str(cfg), "-o", str(run), "--training.max_steps", "60", *SMALL]
    assert runner.invoke(app, args).exit_code == 0
    (run / "final.safetensors").unlink()  # as if killed after the checkpoint at 50
    shutil.rmtree(run / "checkpoints" / "step-00000060", ignore_errors=True)
    saved = json.loads((run / "mlflow.json").read_text())
    (run / "mlflow.json").write_text(json.dumps({**saved, "run_id": "0" * 32}))
    result = runner.invoke(app, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    assert f"names MLflow run {'0' * 32}, which" in result.stderr
    client, mlrun = mlflow_run(run)  # the new run that mlflow.json now names
    assert mlrun.info.run_id != saved["run_id"] and mlrun.info.status == "FINISHED"


def test_a_tensorboard_log_dir_can_be_given(tmp_path):
    board = tmp_path / "board"
    cfg = config_with(
        tmp_path,
        f'[training.logger]\n@loggers = "optsvc.TensorBoardLogger.v1"\n'
        f'log_dir = "{board}"\n',
    )
    run = tmp_path / "run"
    result = runner.invoke(
        app, ["train", str(cfg), "-o", str(run), "--training.max_steps", "40", *SMALL]
    )
    assert result.exit_code == 0, result.output
    assert "step 40" not in result.stdout  # no console logger configured
    assert_same(tensorboard_scalars(board)["loss"], expected(run, "loss"))
    assert not (run / "tensorboard").exists()


# --- SIGKILL, then --resume: the same TensorBoard and MLflow run ---------------


@pytest.mark.slow
def test_a_killed_and_resumed_run_logs_every_step_once(tmp_path):
    run = tmp_path / "run"
    cfg = config_with(tmp_path, CHAIN)
    command = [sys.executable, "-m", "optsvc_cli.main", "train", str(cfg), "-o",
               str(run), "--training.max_steps", "300", *SMALL]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    for line in proc.stdout:
        # after the row of step 120: checkpoints at 50 and 100, so the resume
        # logs steps 120 and on a second time
        if line.startswith("step 120 "):
            proc.kill()
            break
    proc.wait()
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "final.safetensors").exists()
    _, before = mlflow_run(run)
    result = subprocess.run(
        [*command, "--resume"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    client, after = mlflow_run(run)
    assert after.info.run_id == before.info.run_id  # the same MLflow run
    assert after.info.status == "FINISHED"
    scalars = tensorboard_scalars(run / "tensorboard")
    steps = list(range(20, 301, 20))
    for key in ROWS:
        want = expected(run, key)
        assert [s for s, _ in want] == steps  # metrics.jsonl itself: no gap
        assert_same(scalars[key], want)
        assert_same(history(client, after.info.run_id, key), want)


# --- a real MLflow tracking server on loopback ------------------------------------


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:  # wait for the server to answer (it takes seconds to start)
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as reply:
                if reply.status == 200:
                    break
        except OSError:
            pass
        assert server.poll() is None, "the MLflow server exited"
        assert time.monotonic() < deadline, "the MLflow server did not answer"
        time.sleep(0.5)
    yield SimpleNamespace(uri=uri, process=server)
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


@pytest.mark.slow
def test_a_real_mlflow_tracking_server(tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    cfg = config_with(
        tmp_path,
        '[training.logger]\n@loggers = "optsvc.MLflowLogger.v1"\n'
        f'tracking_uri = "{mlflow_server.uri}"\nexperiment_name = "served"\n'
        'run_name = "on-the-server"\n',
    )
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "optsvc_cli.main", "train", str(cfg), "-o", str(run),
         "--training.max_steps", "60", *SMALL],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    client = MlflowClient(mlflow_server.uri)
    [found] = client.search_runs(
        [client.get_experiment_by_name("served").experiment_id]
    )
    assert found.info.run_name == "on-the-server"
    assert found.info.status == "FINISHED"
    assert_same(history(client, found.info.run_id, "loss"), expected(run, "loss"))
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert artifacts == {"config.cfg", "best.safetensors", "final.safetensors"}


@pytest.mark.slow
def test_a_tracking_server_that_dies_mid_run_costs_the_run_nothing(
    tmp_path, mlflow_server
):
    block = '[training.logger]\n@loggers = "optsvc.MLflowLogger.v1"\n'
    cfg = config_with(tmp_path, block + f'tracking_uri = "{mlflow_server.uri}"\n')
    run = tmp_path / "run"
    # The training process kills the server itself as it writes its second
    # metrics row (step 40), so that the moment is exact.
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(soak.KILL_SERVER_AT_ROW)
    env = {**os.environ, "PYTHONPATH": str(hooks), "KILL_AT_ROW": "2",
           "KILL_GROUP": str(mlflow_server.process.pid)}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "optsvc_cli", "train", str(cfg), "-o", str(run),
         "--training.max_steps", "300", *SMALL],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    err = proc.stderr
    assert proc.returncode == 0, err
    assert f"MLflow at {mlflow_server.uri} stopped answering" in err
    assert [row["step"] for row in metrics(run)] == list(range(20, 301, 20))
    assert (run / "final.safetensors").exists()


def test_nothing_listening_at_the_tracking_uri_fails_at_once(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    block = '[training.logger]\n@loggers = "optsvc.MLflowLogger.v1"\n'
    cfg = config_with(tmp_path, block + f'tracking_uri = "{uri}"\n')
    done = subprocess.run(
        [sys.executable, "-m", "optsvc_cli", "train", str(cfg), "-o",
         str(tmp_path / "run"), "--training.max_steps", "40", *SMALL],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert f"nothing answers at the MLflow tracking URI {uri}" in done.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


# --- validation and missing extras ------------------------------------------------


def test_a_misspelt_logger_argument_is_refused_with_a_suggestion(tmp_path):
    cfg = config_with(
        tmp_path,
        '[training.logger]\n@loggers = "optsvc.TensorBoardLogger.v1"\nlogdir = "x"\n',
    )
    result = runner.invoke(app, ["validate", str(cfg)])
    assert result.exit_code == 1
    assert "training.logger.logdir: unknown argument" in result.stderr
    assert "did you mean 'log_dir'" in result.stderr


def test_an_unknown_logger_is_refused_with_the_known_ones(tmp_path):
    cfg = config_with(
        tmp_path, '[training.logger]\n@loggers = "optsvc.TensorboardLogger.v1"\n'
    )
    result = runner.invoke(app, ["validate", str(cfg)])
    assert result.exit_code == 1
    assert "training.logger.@loggers: unknown function" in result.stderr
    assert "optsvc.TensorBoardLogger.v1" in result.stderr


def test_a_chain_member_must_be_a_logger(tmp_path):
    cfg = config_with(
        tmp_path,
        '[training.logger]\n@loggers = "optsvc.ChainLogger.v1"\n\n'
        '[training.logger.logger1]\n@schedules = "constant.v1"\nrate = 1.0\n',
    )
    result = runner.invoke(app, ["validate", str(cfg)])
    assert result.exit_code == 1
    assert "training.logger.logger1" in result.stderr


@pytest.mark.parametrize(
    "logger, extra", [("TensorBoardLogger", "tensorboard"), ("MLflowLogger", "mlflow")]
)
def test_a_missing_extra_is_one_sentence_and_writes_nothing(
    tmp_path, monkeypatch, logger, extra
):
    real = importlib.util.find_spec
    missing = extra  # the module is named as the extra
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == missing else real(name, *a),
    )
    cfg = config_with(tmp_path, f'[training.logger]\n@loggers = "optsvc.{logger}.v1"\n')
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", str(cfg), "-o", str(run)])
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert f"pip install 'optsvc[{extra}]'" in line
    assert not run.exists()


def test_changing_the_logger_does_not_block_a_resume(tmp_path):
    run = tmp_path / "run"
    # the schedule's length fixed, so that --extend may lengthen the run
    args = ["-o", str(run), "--training.max_steps", "40", *SMALL,
            "--optimizer.learn_rate.total_steps", "100"]  # fmt: skip
    first = runner.invoke(app, ["train", str(QUICKSTART), *args])
    assert first.exit_code == 0, first.output
    cfg = config_with(tmp_path, CHAIN)
    again = runner.invoke(
        app, ["train", str(cfg), *args, "--resume", "--training.max_steps", "60",
              "--extend"]
    )  # fmt: skip
    assert again.exit_code == 0, again.output
    assert [s for s, _ in tensorboard_scalars(run / "tensorboard")["loss"]] == [60]
