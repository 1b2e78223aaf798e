"""`optsvc runs`: every run under a folder with its status and figures, read
from real run folders (and, marked slow, real processes)."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from optsvc_cli.main import app
from runs_helpers import QUICKSTART, make_run, metrics, run_cli
from typer.testing import CliRunner

from optsvc.analysis import find_runs, list_runs
from optsvc.errors import OptsvcError
from optsvc.training.lock import RunLock, lock_held
from optsvc.training.run_folder import RunFolder

runner = CliRunner()
EXPLODE = {"optimizer.learn_rate.warmup_steps": 1,
           "optimizer.learn_rate.initial_rate": 1e300}  # fmt: skip


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A finished, an interrupted, a failed and a (soon) running run, and a
    sweep of two trials that differ in their initial learning rate."""
    root = tmp_path_factory.mktemp("runs")
    make_run(root / "finished")
    make_run(root / "interrupted")
    (root / "interrupted" / "final.safetensors").unlink()  # as if killed at the end
    with pytest.raises(OptsvcError, match="NaN or inf"):
        make_run(root / "failed", **EXPLODE)
    make_run(root / "running")
    (root / "running" / "final.safetensors").unlink()
    for name, rate in (("0-lr0.01", 0.01), ("1-lr0.003", 0.003)):
        make_run(
            root / "sweep" / "trials" / name,
            **{"optimizer.learn_rate.initial_rate": rate},
        )
    return root


@pytest.fixture
def held(root):
    """The running run's lock, held by this process as `optsvc train` does."""
    lock = RunLock(root / "running")
    yield lock
    lock.release()


def listed(root: Path, *args: str) -> dict[str, dict]:
    result = runner.invoke(app, ["runs", str(root), "--format", "json", *args])
    assert result.exit_code == 0, result.output
    return {row["name"]: row for row in json.loads(result.output)}


def test_json_lists_each_status_with_its_figures(root, held):
    rows = listed(root)
    assert set(rows) == {"finished", "interrupted", "failed", "running",
                         "sweep/trials/0-lr0.01", "sweep/trials/1-lr0.003"}  # fmt: skip
    assert {n: r["status"] for n, r in rows.items() if "/" not in n} == {
        "finished": "finished",
        "interrupted": "interrupted",
        "failed": "failed",
        "running": "running",
    }
    for name in ("finished", "interrupted", "running"):
        row, logged = rows[name], metrics(root / name)
        assert (row["steps"], row["max_steps"]) == (40, 40)
        assert row["best_score"] == max(r["score"] for r in logged)
        assert row["last_score"] == logged[-1]["score"]
        assert row["final_loss"] == logged[-1]["loss"]
        assert row["config"] == "spirals.v1, mlp.v1"
        assert row["optimizer"] == "Adam.v1 / warmup_cosine.v1"
        assert row["wall_time_from"] == "metrics" and row["wall_time_s"] > 0
        assert row["path"] == str(root / name)
    assert rows["running"]["note"] == f"pid {os.getpid()}"
    failed = rows["failed"]
    assert failed["steps"] is None and failed["max_steps"] == 40
    assert failed["best_score"] is None and failed["final_loss"] is None
    # the run recorded why it failed: its error is the note
    assert "NaN or inf" in failed["note"] and "not saved" in failed["note"]


def test_a_sweep_shows_the_values_that_differ(root):
    rows = listed(root)
    assert rows["sweep/trials/0-lr0.01"]["values"] == {
        "optimizer.learn_rate.initial_rate": 0.01
    }
    assert rows["sweep/trials/1-lr0.003"]["values"] == {
        "optimizer.learn_rate.initial_rate": 0.003
    }
    assert rows["finished"]["values"] == {}
    assert set(listed(root / "sweep")) == {"trials/0-lr0.01", "trials/1-lr0.003"}


def test_the_lock_is_only_tested(root, tmp_path):
    """Listing neither creates a lock file nor keeps one: a training process
    can take the lock right after."""
    bare = tmp_path / "bare"
    shutil.copytree(root / "interrupted", bare)
    (bare / ".lock").unlink()
    assert lock_held(bare) is False
    assert not (bare / ".lock").exists()
    assert listed(tmp_path)["bare"]["status"] == "interrupted"
    assert not (bare / ".lock").exists()
    RunLock(root / "finished").release()  # free after a listing
    with RunLock(bare):
        assert lock_held(bare) is True
    assert lock_held(bare) is False


def test_the_table_is_plain_text_in_a_pipe(root, held):
    result = runner.invoke(app, ["runs", str(root)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:2] == ["name", "config"]
    assert "values" in lines[0] and "note" in lines[0]
    assert "\x1b[" not in result.output  # no colours, no box drawing
    by_name = {line.split()[0]: line for line in lines[1:]}
    assert len(by_name) == 6
    for name in ("finished", "interrupted", "failed", "running"):
        assert f"  {name}  " in by_name[name]  # the status column
    assert "40/40" in by_name["finished"] and "-/40" in by_name["failed"]
    assert "initial_rate=0.003" in by_name["sweep/trials/1-lr0.003"]


def test_csv_has_one_row_per_run(root):
    result = runner.invoke(app, ["runs", str(root), "--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert [r["name"] for r in rows] == sorted(listed(root))
    by_name = {r["name"]: r for r in rows}
    assert by_name["finished"]["status"] == "finished"
    assert by_name["finished"]["steps"] == "40"
    assert by_name["failed"]["best_score"] == ""
    assert by_name["sweep/trials/0-lr0.01"]["values"] == (
        "optimizer.learn_rate.initial_rate=0.01"
    )


def test_sort_by_a_column_with_missing_values_last(root):
    for desc in ([], ["--desc"]):
        result = runner.invoke(
            app, ["runs", str(root), "--format", "json", "--sort", "best", *desc]
        )
        assert result.exit_code == 0, result.output
        best = [row["best_score"] for row in json.loads(result.output)]
        assert best[-1] is None and None not in best[:-1]
        assert best[:-1] == sorted(best[:-1], reverse=bool(desc))
    result = runner.invoke(app, ["runs", str(root), "--sort", "size"])
    assert result.exit_code == 2 and "size" in result.output


def test_nested_folders_are_searched_but_not_checkpoints(root):
    runs = find_runs(root)
    assert root / "sweep" / "trials" / "0-lr0.01" in runs
    assert not any("checkpoints" in run.parts for run in runs)
    assert [s.path for s in list_runs(root / "finished")] == [root / "finished"]


def test_no_runs_and_no_folder(tmp_path):
    result = runner.invoke(app, ["runs", str(tmp_path)])
    assert result.exit_code == 0 and "no runs under" in result.output
    result = runner.invoke(app, ["runs", str(tmp_path), "--format", "json"])
    assert json.loads(result.output) == []
    result = runner.invoke(app, ["runs", str(tmp_path / "missing")])
    assert result.exit_code == 1
    assert "there is no folder" in result.output and "Traceback" not in result.output


def test_runs_help_states_the_status_rules():
    words = " ".join(runner.invoke(app, ["runs", "--help"]).output.split())
    for status in ("running", "finished", "interrupted", "failed", "--resume"):
        assert status in words


# --- real processes --------------------------------------------------------------

CLI = [sys.executable, "-m", "optsvc_cli.main"]
SMALL = ["--data.n_samples", "200", "--training.eval_frequency", "20",
         "--training.checkpoint_frequency", "20",
         "--optimizer.learn_rate.warmup_steps", "10"]  # fmt: skip


def cli_runs(root: Path) -> dict[str, dict]:
    out = subprocess.run(
        [*CLI, "runs", str(root), "--format", "json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return {row["name"]: row for row in json.loads(out.stdout)}


@pytest.mark.slow
def test_statuses_of_real_training_processes(tmp_path):
    """A finished, a failed, a live and a SIGKILLed `optsvc train`."""
    train = [*CLI, "train", str(QUICKSTART), *SMALL]
    subprocess.run([*train, "-o", str(tmp_path / "done"), "--training.max_steps",
                    "40"], check=True, capture_output=True)  # fmt: skip
    explode = [f"--{k}={v}" for k, v in EXPLODE.items()]
    failed = subprocess.run(
        [*train, "-o", str(tmp_path / "blown"), *explode], capture_output=True
    )
    assert failed.returncode == 1 and b"NaN or inf" in failed.stderr
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    live = subprocess.Popen(
        [*train, "-o", str(tmp_path / "live"), "--training.max_steps", "10000000"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    try:
        # The evaluation at step 40 is logged after the checkpoint of step 20
        # was saved, so from here on the run can be resumed.
        for line in live.stdout:
            if line.startswith("step 40 "):
                break
        else:
            pytest.fail("the training process ended before step 40")
        rows = cli_runs(tmp_path)
        assert rows["live"]["status"] == "running"
        assert rows["live"]["note"] == f"pid {live.pid}"
        assert rows["live"]["steps"] >= 20
        live.send_signal(signal.SIGKILL)
        live.wait()
    finally:
        live.kill()
        live.wait()
        live.stdout.close()
    rows = cli_runs(tmp_path)
    assert {name: row["status"] for name, row in rows.items()} == {
        "done": "finished",
        "blown": "failed",
        "live": "interrupted",
    }
    assert rows["live"]["steps"] >= 20 and rows["live"]["max_steps"] == 10000000
    assert rows["done"]["steps"] == 40 and rows["done"]["best_score"] is not None


@pytest.mark.slow
def test_a_closed_pipe_is_not_an_error(root):
    """`optsvc runs | head -1`: the reader goes away before the table is
    written; the command ends quietly with exit 0."""
    for fmt in ("table", "csv", "json"):
        proc = subprocess.Popen(
            [*CLI, "runs", str(root), "--format", fmt],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        proc.stdout.close()  # nobody reads: every write meets a closed pipe
        err = proc.stderr.read().decode()
        proc.stderr.close()
        assert proc.wait() == 0, err
        assert err == ""


# --- what the folder may hold besides -------------------------------------------


def copy_run(root: Path, name: str, dest: Path) -> Path:
    shutil.copytree(root / name, dest)
    return dest


def test_wall_time_from_file_times_without_steps_per_sec(root, tmp_path):
    run = copy_run(root, "finished", tmp_path / "old")
    rows = metrics(run)
    for row in rows:
        del row["steps_per_sec"]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name, when in (("config.cfg", 1000), ("metrics.jsonl", 1100),
                       ("checkpoints", 1120), ("final.safetensors", 1130)):  # fmt: skip
        os.utime(run / name, (when, when))
    row = listed(tmp_path)["old"]
    assert (row["wall_time_s"], row["wall_time_from"]) == (130.0, "files")
    result = runner.invoke(app, ["runs", str(tmp_path)])
    assert "2m 10s (files)" in result.output


def test_torn_lines_and_new_metrics_are_tolerated(root, tmp_path):
    run = copy_run(root, "interrupted", tmp_path / "torn")
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 50, "loss": 0.1, "new_metric": 2.5}\n{"step": 6')
    row = listed(tmp_path)["torn"]
    assert row["status"] == "interrupted"
    assert row["steps"] == 50 and row["final_loss"] == 0.1


def test_numbers_out_of_range_in_metrics_are_held(root, tmp_path):
    # A 400-digit step (no float holds it) and a speed that makes the wall
    # time infinite: runs and plot go on, and the JSON stays JSON (no NaN).
    run = copy_run(root, "finished", tmp_path / "odd")
    rows = metrics(run)
    rows[-1]["steps_per_sec"] = 5e-324
    lines = [json.dumps(r) for r in rows] + ['{"step": 1' + "0" * 400 + "}"]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    result = run_cli("runs", tmp_path, "--format", "json")
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout, parse_constant=pytest.fail)[0]
    assert row["steps"] == rows[-1]["step"] and row["wall_time_s"] is None
    drawn = run_cli("plot", run)
    assert drawn.returncode == 0 and "internal error" not in drawn.stderr


def test_a_recorded_failure_or_early_stop_is_shown(root, tmp_path):
    failed = copy_run(root, "interrupted", tmp_path / "failed")
    RunFolder(failed).record_failure("out of memory")
    # A learning rate of 0: the second evaluation does not improve on the
    # first, and with patience 1 the run stops there.
    make_run(tmp_path / "stopped", {"learn_rate": 0.0}, **{"training.patience": 1})
    rows = listed(tmp_path)
    assert (rows["failed"]["status"], rows["failed"]["note"]) == (
        "failed",
        "out of memory",
    )
    assert rows["stopped"]["steps"] == 20
    assert (rows["stopped"]["status"], rows["stopped"]["note"]) == (
        "finished",
        "stopped early",
    )
