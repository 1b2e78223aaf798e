"""`optsvc sweep`: planning and validation in-process; real sweeps of tiny
`optsvc train` trials as subprocesses, serially, on a private local Ray
instance and on a Ray cluster the test starts on loopback.

Every sweep subprocess runs with HOME set to a folder of its own: the tests
check that nothing is written there, and that no process carrying that HOME
(Ray's, or a trial's) is left when a test ends.
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from optsvc_cli.main import app
from runs_helpers import free_port
from soak import final_arrays
from typer.testing import CliRunner

from optsvc.config import ConfigError
from optsvc.sweep import (
    parse_grid,
    parse_sample,
    plan_sweep,
    ray_available,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "quickstart.cfg")
# Tiny trials: 60 steps on 600 examples, a row and a checkpoint every 20.
TINY = ["--training.max_steps", "60", "--training.eval_frequency", "20",
        "--training.checkpoint_frequency", "20", "--data.n_samples", "600",
        "--optimizer.learn_rate.warmup_steps", "5"]  # fmt: skip
GRID = ["--grid", "optimizer.beta1=0.8,0.9",
        "--grid", "optimizer.learn_rate.initial_rate=0.003,0.01"]  # fmt: skip
NAMES = ["0-beta1=0.8-initial_rate=0.003", "1-beta1=0.8-initial_rate=0.01",
         "2-beta1=0.9-initial_rate=0.003", "3-beta1=0.9-initial_rate=0.01"]  # fmt: skip
RUN_FILES = (
    "config.cfg",
    "metrics.jsonl",
    "checkpoints",
    "best.safetensors",
    "final.safetensors",
)

needs_ray = pytest.mark.skipif(
    not ray_available(), reason="Ray Tune is not installed (pip install 'optsvc[ray]')"
)

# Installed through PYTHONPATH into every Python process of a sweep (trials,
# and Ray's own processes, which ignore it): when OPTSVC_TEST_FAULT is
# "crash|hang:<trial name>:<n>:<marker file>", the trial's training process
# crashes (or hangs) as it appends its n-th metrics row, once: the marker
# file records that it happened.
FAULT = """\
import os, sys, time
_spec = os.environ.get("OPTSVC_TEST_FAULT", "")
if _spec:
    _action, _name, _n, _marker = _spec.split(":", 3)
    _count = [0]

    def _hook(event, args):
        if event != "open" or not isinstance(args[0], (str, bytes, os.PathLike)):
            return
        path = os.fsdecode(args[0])
        if not path.endswith(os.sep + "metrics.jsonl") or "a" not in str(args[1]):
            return
        if _name not in path or os.path.exists(_marker):
            return
        _count[0] += 1
        if _count[0] == int(_n):
            with open(_marker, "w") as f:
                f.write(path)
            if _action == "crash":
                os._exit(3)
            time.sleep(600)

    sys.addaudithook(_hook)
"""


# --- helpers ------------------------------------------------------------------


@pytest.fixture(scope="session")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("home")


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), COLUMNS="200", **extra)
    return env


def _ours(home: Path) -> list[int]:
    """Live processes whose environment has HOME=home."""
    needle = f"HOME={home}".encode() + b"\0"
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes() + b"\0"
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in environ and state != "Z":
            pids.append(int(entry.name))
    return pids


@pytest.fixture(autouse=True)
def no_process_left(home):
    """Fail a test that leaves a Ray or trial process running (and end them)."""
    yield
    deadline = time.monotonic() + 20
    while _ours(home) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = {pid: _command(pid) for pid in _ours(home)}
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left running: {left}"


def _command(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        return raw.replace(b"\0", b" ")[:200].decode(errors="replace")
    except OSError:
        return "?"


def sweep(out: Path, home: Path, *args: str, env=None, check=None):
    command = [sys.executable, "-m", "optsvc_cli.main", "sweep", CONFIG, "-o", str(out)]
    result = subprocess.run(
        [*command, *args, *TINY],
        capture_output=True,
        text=True,
        env=env or _env(home),
        timeout=300,
        cwd=out.parent,
    )
    if check is not None:
        assert result.returncode == check, result.stdout + result.stderr
    return result


def results(out: Path) -> list[dict[str, str]]:
    with (out / "results.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def metrics(row: dict[str, str]) -> tuple:
    """What two runs of the same trial must agree on."""
    keys = ("trial", "status", "step", "score", "loss", "best_score", "folder")
    return tuple(row[k] for k in keys)


def fault_env(home: Path, tmp: Path, spec: str) -> dict[str, str]:
    hooks = tmp / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(FAULT)
    path = os.pathsep.join(filter(None, [str(hooks), os.environ.get("PYTHONPATH")]))
    return _env(home, PYTHONPATH=path, OPTSVC_TEST_FAULT=spec)


# --- planning (no trial runs) ---------------------------------------------------


def test_grid_values_read_as_overrides():
    assert parse_grid("training.batch_size=32,64") == ("training.batch_size", [32, 64])
    assert parse_grid('a.b=adam,[1,2],"x,y"') == ("a.b", ["adam", [1, 2], "x,y"])
    path, dist = parse_sample("optimizer.L2=loguniform(1e-6,1e-2)")
    assert path == "optimizer.L2" and (dist.kind, dist.args) == (
        "loguniform",
        (1e-6, 1e-2),
    )


@pytest.mark.parametrize(
    "bad, words",
    [
        (["--grid", "beta1=0.8,0.9"], "is not PATH=VALUES"),
        (["--grid", "optimizer.beta1=0.8,,0.9"], "empty value"),
        (["--grid", "optimizer.beta1=0.8,0.8"], "lists a value twice"),
        (["--sample", "optimizer.L2=normal(0,1)"], "must be one of"),
        (["--sample", "optimizer.L2=loguniform(0,1)"], "LOW > 0"),
        (["--sample", "optimizer.L2=uniform(1,0)"], "LOW < HIGH"),
        (["--sample", "optimizer.L2=uniform(-1e308,1e308)"], "must lie within"),
        (["--sample", "training.seed=randint(0,10**30)"], "needs two numbers"),
    ],
)
def test_bad_sweep_arguments_are_refused(bad, words):
    grid = [v for k, v in zip(bad, bad[1:]) if k == "--grid"]
    sample = [v for k, v in zip(bad, bad[1:]) if k == "--sample"]
    with pytest.raises(ConfigError, match=words):
        plan_sweep(CONFIG, grid=grid, sample=sample)


def test_plan_names_values_and_seeds():
    plan = plan_sweep(
        CONFIG,
        grid=["optimizer.beta1=0.8,0.9"],
        sample=["optimizer.L2=loguniform(1e-6,1e-2)"],
        samples=2,
    )
    assert plan.paths == ["optimizer.beta1", "optimizer.L2", "system.seed"]
    assert [t.values["system.seed"] for t in plan.trials] == [0, 0, 1, 1]
    assert all(1e-6 <= t.values["optimizer.L2"] <= 1e-2 for t in plan.trials)
    assert plan.trials[3].name.startswith("3-beta1=0.9-L2=")
    again = plan_sweep(
        CONFIG,
        grid=["optimizer.beta1=0.8,0.9"],
        sample=["optimizer.L2=loguniform(1e-6,1e-2)"],
        samples=2,
    )
    assert [t.values for t in again.trials] == [t.values for t in plan.trials]
    # Each trial's config is filled, as `optsvc train` writes it, seed included.
    assert "seed = 1" in plan.trials[2].config
    assert 'nonfinite = "refuse"' in plan.trials[2].config


def test_planning_reports_each_trial_checked():
    seen = []
    plan_sweep(CONFIG, grid=["optimizer.beta1=0.8,0.9"], samples=3,
               on_trial=lambda done, total: seen.append((done, total)))  # fmt: skip
    assert seen == [(i, 6) for i in range(1, 7)]


def test_samples_warn_of_values_that_follow_the_seed():
    # the quickstart's data.seed = ${system.seed}: each sample also gets other data
    plan = plan_sweep(CONFIG, grid=["optimizer.beta1=0.8,0.9"], samples=2)
    assert plan.warnings == [
        "data.seed follows ${system.seed}: each of --samples changes it too; "
        "add --data.seed N to keep it fixed"
    ]
    fixed = plan_sweep(CONFIG, grid=["optimizer.beta1=0.8,0.9"], samples=2,
                       overrides={"data.seed": 0})  # fmt: skip
    assert fixed.warnings == []
    assert {t.values.get("system.seed") for t in fixed.trials} == {0, 1}


def test_invalid_point_is_refused_with_its_path():
    with pytest.raises(ConfigError) as info:
        plan_sweep(CONFIG, grid=["optimizer.beta1=0.9,1.5", "optimizer.L2=0,0.1"])
    (issue,) = info.value.issues
    assert issue.path == "optimizer.beta1"
    assert "got 1.5" in str(issue) and "trials 2, 3 of 4" in str(issue)


def test_invalid_point_refused_before_any_trial_runs(tmp_path):
    out = tmp_path / "sweep"
    result = CliRunner().invoke(
        app,
        ["sweep", CONFIG, "-o", str(out), "--grid", "optimizer.beta1=0.9,1.5", *TINY],
    )
    assert result.exit_code == 1
    assert "optimizer.beta1: must be in [0, 1), got 1.5" in result.output
    assert not out.exists()


def test_sweep_help():
    result = CliRunner().invoke(app, ["sweep", "--help"])
    assert result.exit_code == 0
    options = ("--grid", "--sample", "--samples", "--early-stop", "--retries",
               "--address", "--resume", "--workers", "--gpus-per-trial")  # fmt: skip
    for option in options:
        assert option in result.output


# --- real sweeps ------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_grid(tmp_path_factory, home):
    """The 2x2 grid on a private local Ray instance, run once for the module."""
    if not ray_available():
        pytest.skip("Ray Tune is not installed (pip install 'optsvc[ray]')")
    out = tmp_path_factory.mktemp("ray-grid") / "sweep"
    result = sweep(out, home, *GRID, "--engine", "ray")
    return out, result


@needs_ray
@pytest.mark.slow
def test_ray_grid_folders_results_and_best(ray_grid, home, tmp_path):
    out, result = ray_grid
    assert result.returncode == 0, result.stdout + result.stderr
    assert "on a local Ray instance" in result.stdout
    rows = results(out)
    assert [r["trial"] for r in rows] == NAMES
    assert {r["status"] for r in rows} == {"finished"}
    assert {r["step"] for r in rows} == {"60"}
    for name in NAMES:
        assert all((out / "trials" / name / f).exists() for f in RUN_FILES)
    assert not (out / "tune").exists()  # Tune's pickled state is kept out
    document = json.loads((out / "results.json").read_text())
    best = max(rows, key=lambda r: float(r["best_score"]))  # what best.cfg gives
    assert document["best"] == best["trial"]
    assert (out / "best.cfg").read_text() == (
        out / "trials" / best["trial"] / "config.cfg"
    ).read_text()
    # best.cfg runs as is, to the same score.
    run = subprocess.run(
        [sys.executable, "-m", "optsvc_cli.main", "train", str(out / "best.cfg"),
         "-o", str(tmp_path / "best")],
        capture_output=True, text=True, env=_env(home), timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    last = json.loads(
        (tmp_path / "best" / "metrics.jsonl").read_text().splitlines()[-1]
    )
    assert last["score"] == float(best["score"])
    assert f"best: trial {best['trial']}, best score" in result.stdout
    assert list(home.iterdir()) == []  # nothing written to the home folder


@pytest.mark.slow
def test_serial_runner_gives_the_same_results(ray_grid, home, tmp_path):
    out = tmp_path / "sweep"
    result = sweep(out, home, *GRID, "--engine", "serial", check=0)
    assert "one trial at a time" in result.stdout
    assert [metrics(r) for r in results(out)] == [
        metrics(r) for r in results(ray_grid[0])
    ]
    assert (out / "best.cfg").read_text() == (ray_grid[0] / "best.cfg").read_text()


@pytest.mark.slow
def test_without_ray_the_serial_runner_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr("optsvc.sweep.run.ray_available", lambda: False)
    out = tmp_path / "sweep"
    args = ["sweep", CONFIG, "-o", str(out), "--grid", "optimizer.beta1=0.9", *TINY]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "pip install 'optsvc[ray]' runs trials in parallel" in result.output
    assert results(out)[0]["status"] == "finished"


@needs_ray
@pytest.mark.slow
def test_retries_resume_a_failed_trial_and_report_one_that_always_fails(
    ray_grid, home, tmp_path
):
    # Trial 0 crashes once, at its second row (after the checkpoint at step
    # 20); trial 1's learning rate makes every attempt fail.
    marker = tmp_path / "crashed"
    env = fault_env(home, tmp_path, f"crash:0-initial_rate=0.003:2:{marker}")
    out = tmp_path / "sweep"
    grid = ["--grid", "optimizer.learn_rate.initial_rate=0.003,1e30"]
    result = sweep(out, home, *grid, "--retries", "1", env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert marker.exists()
    ok, bad = results(out)
    assert (ok["status"], ok["step"], ok["attempts"]) == ("finished", "60", "2")
    log = (out / ok["folder"] / "train.log").read_text()
    assert "resumed: from step 20" in log
    # Resumed bit for bit: the same weights as the uninterrupted trial.
    same = final_arrays(ray_grid[0] / "trials" / NAMES[2])
    resumed = final_arrays(out / ok["folder"])
    assert all(np.array_equal(same[k], resumed[k]) for k in same)
    assert (bad["status"], bad["attempts"]) == ("failed", "2")
    assert "the learning rate" in bad["error"] and "too large" in bad["error"]
    assert "1 of 2 trials failed" in result.stderr and "--resume" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ray", "serial"])
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(
    engine, ray_grid, home, tmp_path
):
    if engine == "ray" and not ray_available():
        pytest.skip("Ray Tune is not installed")
    # Trial 1 hangs at its second row (step 40, after the checkpoint at 20);
    # the sweep is interrupted there, as Ctrl-C would.
    marker = tmp_path / "hung"
    env = fault_env(home, tmp_path, f"hang:{NAMES[1]}:2:{marker}")
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "optsvc_cli.main", "sweep", CONFIG, "-o", str(out),
               *GRID, "--engine", engine, "--workers", "1", *TINY]  # fmt: skip
    driver = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and driver.poll() is None:
            assert time.monotonic() < deadline, "the trial never reached step 40"
            time.sleep(0.1)
        driver.send_signal(signal.SIGINT)
        stdout, stderr = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130, stdout + stderr
    assert "interrupted" in stderr and "--resume" in stderr
    first = out / "trials" / NAMES[0]
    done = {
        p: p.stat().st_mtime_ns
        for p in (first / "final.safetensors", first / "train.log")
    }
    statuses = [r["status"] for r in results(out)]
    assert statuses[0] == "finished" and "finished" not in statuses[1:]
    assert not (out / "best.cfg").exists()  # no winner from partial results

    # the command it printed, run as is, continues the sweep
    [said] = [x for x in stderr.splitlines() if "continue it with " in x]
    printed = shlex.split(said.split("continue it with ", 1)[1])
    assert printed[:2] == ["optsvc", "sweep"] and printed[-1] == "--resume"
    again = subprocess.run(
        [sys.executable, "-m", "optsvc_cli", *printed[1:]], capture_output=True,
        text=True, env=_env(home), timeout=300, cwd=out.parent,
    )  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    assert [r["status"] for r in results(out)] == ["finished"] * 4
    assert {p: p.stat().st_mtime_ns for p in done} == done  # not run again
    assert (
        "resumed: from step 20" in (out / "trials" / NAMES[1] / "train.log").read_text()
    )
    assert [metrics(r) for r in results(out)] == [
        metrics(r) for r in results(ray_grid[0])
    ]
    assert "4 trials" in again.stdout


@pytest.mark.slow
def test_resume_takes_each_trials_status_from_its_own_folder(home, tmp_path):
    # results.json is a cache: on --resume each trial's folder says what it is.
    out = tmp_path / "sweep"
    grid = ["--grid", "optimizer.beta1=0.7,0.8,0.9", "--engine", "serial"]
    sweep(out, home, *grid, check=0)
    before = results(out)
    trials = [out / row["folder"] for row in before]
    # Trial 0: its metrics.jsonl replaced by garbage (it finished all the same).
    (trials[0] / "metrics.jsonl").write_bytes(b"\x00garbage\n{]")
    kept = (trials[0] / "final.safetensors").stat().st_mtime_ns
    # Trial 1: results.json says "stopped", but its folder ended at step 40.
    shutil.rmtree(trials[1] / "checkpoints" / "step-00000060")
    (trials[1] / "final.safetensors").unlink()
    document = json.loads((out / "results.json").read_text())
    document["trials"][1]["status"] = "stopped"
    (out / "results.json").write_text(json.dumps(document))
    # Trial 2: never started, its config.cfg edited meanwhile.
    planned = (trials[2] / "config.cfg").read_text()
    shutil.rmtree(trials[2])
    trials[2].mkdir()
    (trials[2] / "run.json").write_text(
        json.dumps({"written_by": "optsvc", "format": 2, "state": "planned"})
    )
    (trials[2] / "config.cfg").write_text(
        planned.replace("max_steps = 60", "max_steps = 7")
    )

    sweep(out, home, *grid, "--resume", check=0)
    after = results(out)
    assert [r["status"] for r in after] == ["finished"] * 3
    assert (trials[0] / "final.safetensors").stat().st_mtime_ns == kept  # not redone
    assert (
        after[0]["step"] == "60" and after[0]["best_score"] == before[0]["best_score"]
    )
    assert "resumed: from step 40" in (trials[1] / "train.log").read_text()
    assert (trials[2] / "config.cfg").read_text() == planned  # the plan ran
    assert [metrics(r) for r in after[1:]] == [metrics(r) for r in before[1:]]


@pytest.mark.slow
def test_resume_refuses_another_sweep(home, tmp_path):
    out = tmp_path / "sweep"
    sweep(out, home, "--grid", "optimizer.beta1=0.9", "--engine", "serial", check=0)
    other = sweep(out, home, "--grid", "optimizer.beta1=0.8", "--resume", check=1)
    assert "was started with another config or other --grid" in other.stderr
    fresh = sweep(out, home, "--grid", "optimizer.beta1=0.9", check=1)
    assert "already holds a sweep; add --resume" in fresh.stderr


@needs_ray
@pytest.mark.slow
def test_same_sweep_on_an_existing_cluster(ray_grid, home, tmp_path_factory):
    # A one-node cluster on loopback only, started and stopped by the test.
    port = free_port()
    env = _env(home, RAY_AUTH_MODE="disabled", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               RAY_USAGE_STATS_ENABLED="0")  # fmt: skip
    temp = Path(f"/tmp/optsvc-test-{os.getpid()}")
    ray = Path(sys.executable).parent / "ray"
    head = subprocess.Popen(
        [str(ray), "start", "--head", "--block", "--port", str(port),
         "--node-ip-address", "127.0.0.1", "--num-cpus", "2",
         "--include-dashboard", "false", "--temp-dir", str(temp)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    out = tmp_path_factory.mktemp("cluster") / "sweep"
    try:
        deadline = time.monotonic() + 60
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert head.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        result = sweep(out, home, *GRID, "--address", f"127.0.0.1:{port}", env=env)
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops its node
        head.wait(timeout=60)
        subprocess.run(["rm", "-rf", str(temp)], check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Ray at 127.0.0.1:{port}" in result.stdout
    assert [metrics(r) for r in results(out)] == [
        metrics(r) for r in results(ray_grid[0])
    ]


@needs_ray
def test_an_address_where_no_cluster_listens_fails_at_once(home, tmp_path):
    out = tmp_path / "sweep"
    address = f"127.0.0.1:{free_port()}"
    result = sweep(out, home, *GRID, "--address", address, check=1)
    assert f"nothing answers at the Ray address {address}" in result.stderr
    assert "ray start --head" in result.stderr and not out.exists()


CTRL_C_AS_RAY_STARTS = """\
import os, signal, sys


def _hook(event, args):
    if event == "subprocess.Popen" and "gcs_server" in str(args):
        os.kill(os.getpid(), signal.SIGINT)


if os.environ.get("CTRL_C_AS_RAY_STARTS"):
    sys.addaudithook(_hook)
"""


@pytest.mark.slow
@needs_ray
def test_ctrl_c_while_ray_starts_exits_130_and_leaves_nothing(home, tmp_path):
    # Ctrl-C as the private Ray instance starts its first process (GCS).
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(CTRL_C_AS_RAY_STARTS)
    env = _env(home, PYTHONPATH=str(hooks), CTRL_C_AS_RAY_STARTS="1")
    before = set(Path("/tmp").glob("optsvc-ray-*"))
    out = tmp_path / "sweep"
    result = sweep(out, home, *GRID, "--engine", "ray", env=env, check=130)
    assert "interrupted" in result.stderr and "--resume" in result.stderr
    assert "Traceback" not in result.stderr
    assert set(Path("/tmp").glob("optsvc-ray-*")) == before
    assert {r["status"] for r in results(out)} == {"pending"}


@pytest.mark.slow
@needs_ray
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_ray_driver_leaves_no_process_and_no_folder(signum, home, tmp_path):
    # SIGKILL to the driver while its first trial trains: the watchdog ends
    # the private Ray instance (no_process_left checks every process); SIGTERM
    # ends the sweep as Ctrl-C does, with no C++ stack from Ray's own handler.
    marker = tmp_path / "hung"
    env = fault_env(home, tmp_path, f"hang:{NAMES[0]}:1:{marker}")
    before = set(Path("/tmp").glob("optsvc-*"))
    command = [sys.executable, "-m", "optsvc_cli", "sweep", CONFIG, "-o",
               str(tmp_path / "sweep"), *GRID, "--engine", "ray", "--workers", "1",
               *TINY]  # fmt: skip
    driver = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert driver.poll() is None, "the sweep ended before its trial trained"
        assert time.monotonic() < deadline, "the trial never reached its first row"
        time.sleep(0.1)
    driver.send_signal(signum)
    said, _ = driver.communicate(timeout=120)
    if signum == signal.SIGTERM:
        assert driver.returncode == 130, said
        assert "interrupted" in said and "SIGTERM received" not in said
    deadline = time.monotonic() + 30
    while set(Path("/tmp").glob("optsvc-*")) != before:
        assert time.monotonic() < deadline, "the Ray instance's folder is left"
        time.sleep(0.2)


KILL_GCS = """\
import os, signal, sys, threading, time


def _kill_gcs_soon():
    time.sleep(1.0)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().split(b"\\0")[0].endswith(b"gcs_server"):
                    os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass


def _hook(event, args):
    if event == "subprocess.Popen" and "gcs_server" in str(args):
        threading.Thread(target=_kill_gcs_soon, daemon=True).start()


if os.environ.get("KILL_GCS"):
    sys.addaudithook(_hook)
"""


@pytest.mark.slow
@needs_ray
def test_a_ray_instance_whose_gcs_dies_is_one_sentence_and_leaves_nothing(
    home, tmp_path
):
    # The private instance's GCS is killed a second after it starts.
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(KILL_GCS)
    env = _env(home, PYTHONPATH=str(hooks), KILL_GCS="1")
    before = set(Path("/tmp").glob("optsvc-*"))
    result = sweep(tmp_path / "sweep", home, *GRID, "--engine", "ray", env=env, check=1)
    [said] = [line for line in result.stderr.splitlines() if line.startswith("✘")]
    assert said.startswith("✘ Ray did not start (") and "--resume" in said
    assert "Traceback" not in result.stderr and "internal error" not in said
    assert set(Path("/tmp").glob("optsvc-*")) == before


def test_early_stop_needs_ray(tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", CONFIG, "-o", str(out), "--grid", "optimizer.beta1=0.8,0.9"]
    result = CliRunner().invoke(app, [*args, "--engine", "serial", "--early-stop"])
    assert result.exit_code == 1
    assert "--early-stop needs Ray Tune; pip install 'optsvc[ray]'" in result.output
    assert not out.exists()
