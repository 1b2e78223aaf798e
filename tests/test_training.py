"""`optsvc train` (issue 4, DESIGN.md sections 3 and 4): the training loop, its
logging, its run folder, and resuming a run killed at any moment.

All jobs are small versions of configs/quickstart.cfg (600 spirals, a narrow
MLP, a few hundred steps), built by `make_config`. The resume tests run the
real command in subprocesses and kill them with SIGKILL: from outside after a
random delay or when the process says a checkpoint's temporary folder was
made, and from inside
at chosen filesystem calls (mid-checkpoint, just after a commit, while writing
final.safetensors) through `KILL_DRIVER`, so that those points are hit every time.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from confection import Config
from optsvc_cli.main import app
from rich.console import Console
from rich.text import Text
from runs_helpers import QUICKSTART, metrics, quiet, run_cli
from soak import final_arrays
from typer.testing import CliRunner

from optsvc.config.parse import ConfigError, config_from_str, load_config
from optsvc.errors import RunError
from optsvc.training import loop as training
from optsvc.training.checkpoints import (
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from optsvc.training.lock import lock_held
from optsvc.training.loop import config_diff, train
from optsvc.training.run_folder import RunFolder, check_resumable
from optsvc.training.state import TrainState

POSIX = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="SIGKILL and /proc/self/fd"
)
runner = CliRunner()

# The jobs: quickstart.cfg made small. Each optimizer step is well under a
# millisecond; a run of 400 steps takes about half a second in process.
SMALL = {
    "data.n_samples": 600,
    "model.hidden_width": 32,
    "training.max_steps": 400,
    "training.eval_frequency": 50,
    "training.checkpoint_frequency": 40,  # not a multiple of eval_frequency
}
SMALL_RATE = {  # quickstart's warmup_cosine, faster
    "optimizer.learn_rate.initial_rate": 0.03,
    "optimizer.learn_rate.warmup_steps": 50,
}


def make_config(
    path: Path, settings: dict | None = None, *, base: Path = QUICKSTART, **blocks
) -> Path:
    """`base` (quickstart.cfg) with SMALL and `settings` (dotted) applied, and
    whole blocks replaced (`learn_rate={...}` for [optimizer.learn_rate]);
    written uninterpolated, so `total_steps = ${training.max_steps}` stays a
    reference. Another example config keeps its own learning rate."""
    cfg = Config().from_str(base.read_text(), interpolate=False)
    for block, value in blocks.items():
        cfg["optimizer"][block] = value
    own_rate = "learn_rate" in blocks or base != QUICKSTART
    small = SMALL if own_rate else {**SMALL, **SMALL_RATE}
    for dotted, value in {**small, **(settings or {})}.items():
        *sections, key = dotted.split(".")
        node = cfg
        for section in sections:
            node = node[section]
        if value is None:
            node.pop(key, None)
        else:
            node[key] = value
    path.write_text(cfg.to_str())
    return path


def invoke(*args):
    """`optsvc ARGS` in process (Typer's CliRunner: not a terminal)."""
    return runner.invoke(app, [str(a) for a in args])


def computed(rows: list[dict]) -> list[dict]:
    """The rows without their timing: what must repeat exactly."""
    return [{k: v for k, v in row.items() if k != "steps_per_sec"} for row in rows]


def assert_same_run(run: Path, reference: Path, context: str = "") -> None:
    """final.safetensors holds the same arrays, bit for bit, and metrics.jsonl the same
    rows (timings aside)."""
    got, want = final_arrays(run), final_arrays(reference)
    assert sorted(got) == sorted(want), context
    for name in want:
        assert got[name].dtype == want[name].dtype, (name, context)
        assert got[name].shape == want[name].shape, (name, context)
        assert got[name].tobytes() == want[name].tobytes(), (
            f"{name} differs from the uninterrupted run's; {context}"
        )
    assert computed(metrics(run)) == computed(metrics(reference)), context


def assert_one_sentence_error(output: str, *needles: str) -> None:
    # Warnings ("⚠ ...") may come first; the error itself is one line.
    text = "\n".join(
        line for line in output.strip().splitlines() if not line.startswith("⚠ ")
    )
    assert "Traceback" not in output, output
    assert text.startswith("✘ ") and "\n" not in text, output
    for needle in needles:
        assert needle in text, output


def step_folders(run: Path) -> list[str]:
    return [p.name for p in list_checkpoints(run / "checkpoints")]


def hidden_folders(run: Path, prefix: str) -> list[str]:
    ckpt = run / "checkpoints"
    return sorted(n for n in os.listdir(ckpt) if n.startswith(prefix))


# --- shared runs ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> Path:
    """The resume tests' job: a 2x64 MLP (each checkpoint ~70 kB, so writing one
    takes long enough to be caught), Adam with averages, and plateau.v1 around
    warmup_cosine, so that the schedule carries state through checkpoints."""
    folder = tmp_path_factory.mktemp("job")
    return make_config(
        folder / "job.cfg",
        {"model.hidden_width": 64},
        learn_rate={
            "@schedules": "plateau.v1",
            "max_patience": 1,
            "scale": 0.5,
            "schedule": {
                "@schedules": "warmup_cosine.v1",
                "initial_rate": 0.03,
                "warmup_steps": 50,
                "total_steps": "${training.max_steps}",
                "final_rate": 0.0001,
            },
        },
    )


@pytest.fixture(scope="module")
def reference(job, tmp_path_factory) -> Path:
    """The uninterrupted run of `job`, in process."""
    out = tmp_path_factory.mktemp("reference") / "run"
    result = train(load_config(job), out, console=quiet())
    assert result.step == 400
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(50, 401, 50))
    # the plateau fired at least once, so its state matters on resume
    assert min(r["learn_rate"] for r in rows[:-1]) < 0.03 * 0.5
    return out


# The optimizers beyond Thinc's, each as its example config made small.
BEYOND_THINC = ["lion", "ademamix", "schedulefree_adamw", "schedulefree_sgd"]


@pytest.fixture(scope="module", params=["adam-plateau", *BEYOND_THINC])
def resumable(request, tmp_path_factory) -> tuple[Path, Path]:
    """(a job, its uninterrupted run): `job` and `reference` above, or the
    example config of an optimizer beyond Thinc's with the same sizes."""
    if request.param == "adam-plateau":
        return request.getfixturevalue("job"), request.getfixturevalue("reference")
    folder = tmp_path_factory.mktemp(request.param)
    base = QUICKSTART.parent / f"{request.param}.cfg"
    job = make_config(folder / "job.cfg", {"model.hidden_width": 64}, base=base)
    out = folder / "reference"
    assert train(load_config(job), out, console=quiet()).step == 400
    return job, out


@pytest.fixture
def finished(reference, tmp_path) -> Path:
    """A copy of the finished reference run to modify."""
    return Path(shutil.copytree(reference, tmp_path / "run"))


# --- 1. each optimizer learns ---------------------------------------------------------

# Dev accuracy (3 classes: chance is 0.33) after 400 steps, with the averaged
# weights, on 600 spirals with a 2x32 MLP. Observed with seeds 0, 1, 2:
#   SGD.v1 at 2.0: 0.917 / 0.908 / 0.867; Adam.v1 at 0.03: 0.950 / 0.992 / 0.975;
#   RAdam.v1 at 0.1: 0.933 / 1.000 / 0.967 (RAdam's rectification keeps its
#   early steps small, so it wants a larger rate). The tests use seed 0.
LEARNS = [
    pytest.param("SGD.v1", 2.0, 0.80, id="SGD"),
    pytest.param("Adam.v1", 0.03, 0.90, id="Adam"),
    pytest.param("RAdam.v1", 0.1, 0.88, id="RAdam"),
]


@pytest.mark.parametrize("name, rate, threshold", LEARNS)
def test_each_optimizer_learns_the_quickstart_task(tmp_path, name, rate, threshold):
    settings = {
        "optimizer.@optimizers": name,
        "optimizer.learn_rate.initial_rate": rate,
    }
    if name == "SGD.v1":  # SGD takes no betas
        settings |= {"optimizer.beta1": None, "optimizer.beta2": None}
    cfg = make_config(tmp_path / "job.cfg", settings)
    result = train(load_config(cfg), tmp_path / "run", console=quiet())
    rows = metrics(tmp_path / "run")
    assert result.step == 400 and rows[-1]["step"] == 400
    assert result.score >= threshold, f"{name}: {[r['score'] for r in rows]}"
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert result.score > rows[0]["score"]


# --- 2. resume after SIGKILL, bit for bit ---------------------------------------------

KILL_DRIVER = r'''
"""`optsvc ARGS` that SIGKILLs itself at a chosen filesystem call. KILL_AT is
"fsync:TEXT:N": just before the N-th os.fsync of a path containing TEXT (the
data is written but not yet durable, the folder not yet renamed), or
"rename:TEXT:N": just after the N-th os.rename whose source contains TEXT.
Or it lets the test kill it from outside: "mkdir:TEXT:FD" writes a byte to
file descriptor FD just after each os.mkdir of a path containing TEXT."""
import os, signal, sys

kind, text, nth = os.environ["KILL_AT"].split(":")
seen = 0


def hit(path):
    global seen
    if text in path:
        seen += 1
        if seen == int(nth):
            os.kill(os.getpid(), signal.SIGKILL)


if kind == "fsync":
    real_fsync = os.fsync

    def fsync(fd):
        hit(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    os.fsync = fsync
elif kind == "mkdir":
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kw):
        real_mkdir(path, *args, **kw)
        if text in os.fspath(path):
            os.write(int(nth), b"!")

    os.mkdir = mkdir
else:
    real_rename = os.rename

    def rename(src, dst, **kw):
        real_rename(src, dst, **kw)
        hit(os.fspath(src))

    os.rename = rename

from optsvc_cli.main import main

sys.argv[0] = "optsvc"
main()
'''


def killed_at(driver: Path, point: str, *args) -> subprocess.CompletedProcess:
    """Run `optsvc ARGS` and let it SIGKILL itself at `point` (see KILL_DRIVER)."""
    return subprocess.run(
        [sys.executable, str(driver), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "KILL_AT": point},
    )


def killed_from_outside(driver: Path, args, *, delay: float | None) -> str:
    """Start `optsvc ARGS` and SIGKILL it: with no `delay`, as soon as it
    tells (through KILL_DRIVER, on a pipe) that it has made a checkpoint's
    temporary folder, so the kill lands while that checkpoint is written;
    else `delay` seconds after it prints its first evaluation row (so the
    kill lands at a random step however long the start takes). Returns what
    happened, for messages."""
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, str(driver), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "KILL_AT": f"mkdir:.tmp-step-:{write_end}"},
        pass_fds=(write_end,),
    )
    os.close(write_end)  # the child's copy stays open until it exits: then EOF
    try:
        what = "ran to the end before the kill"
        if delay is None:
            ready, _, _ = select.select([read_end], [], [], 60)
            if ready and os.read(read_end, 1):
                proc.send_signal(signal.SIGKILL)
                what = "killed while a checkpoint folder was being written"
        else:
            last = ""
            for line in proc.stdout:
                if line.startswith("step "):
                    last = line.split()[1]
                    break
            time.sleep(delay)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                what = f"killed {delay:.3f} s after the step {last} row"
        rest = proc.stdout.read()
        code = proc.wait(timeout=60)
    finally:
        os.close(read_end)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code in (0, -signal.SIGKILL), rest
    return what


@pytest.mark.slow
@POSIX
def test_resume_after_sigkill_at_many_points_is_bit_identical(resumable, tmp_path):
    job, reference = resumable
    driver = tmp_path / "kill_driver.py"
    driver.write_text(KILL_DRIVER)
    run = tmp_path / "run"
    ckpt = run / "checkpoints"
    train_args = ["train", job, "-o", run]
    log: list[str] = []

    # (a) a fresh run dies writing its first checkpoint: no checkpoint yet.
    done = killed_at(driver, "fsync:.tmp-step-00000040:1", *train_args)
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr
    assert step_folders(run) == []
    assert len(hidden_folders(run, ".tmp-step-00000040-")) == 1
    log.append("killed while writing step-00000040")

    # (b) so --resume starts from scratch, and dies in the middle of writing
    # checkpoint 80: arrays.safetensors is in its temporary folder,
    # optimizer.safetensors written but not fsynced.
    done = killed_at(driver, "fsync:.tmp-step-00000080:2", *train_args, "--resume")
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr
    assert "no checkpoint yet; starting at step 0" in done.stdout
    assert step_folders(run) == ["step-00000040"]
    assert len(hidden_folders(run, ".tmp-step-00000080-")) == 1
    assert [r["step"] for r in metrics(run)] == [50]
    log.append("killed while writing step-00000080")

    # (c) resumed from 40, dies right after committing checkpoint 160 (renamed
    # into place, before the folder fsync and the pruning).
    done = killed_at(driver, "rename:.tmp-step-00000160:1", *train_args, "--resume")
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr
    assert "from step 40" in done.stdout
    assert "step-00000160" in step_folders(run)
    assert not hidden_folders(run, ".tmp-step-00000080-")  # the dead writer's
    log.append("killed just after committing step-00000160")

    # (d, e, f) killed from outside: when a checkpoint folder is being written,
    # then twice after a random delay (seeded; training takes ~0.5 s here).
    rng = random.Random(20240613)
    for delay in (None, rng.uniform(0.0, 0.08), rng.uniform(0.0, 0.08)):
        what = killed_from_outside(driver, [*train_args, "--resume"], delay=delay)
        log.append(f"{what} (newest checkpoint {step_folders(run)[-1]})")

    # (g) dies while writing final.safetensors. (Should an earlier run have got
    # that far, its final.safetensors goes: a finished run with it in place has
    # nothing left to write, see test_resuming_a_finished_run_changes_nothing.)
    (run / "final.safetensors").unlink(missing_ok=True)
    done = killed_at(driver, "fsync:.final.safetensors.tmp-:1", *train_args, "--resume")
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr
    assert step_folders(run)[-1] == "step-00000400"
    log.append("killed while writing final.safetensors")

    # (h) resumed to the end: the same weights and rows as never stopping.
    done = run_cli(*train_args, "--resume")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert_same_run(run, reference, "; ".join(log))
    assert step_folders(run) == [f"step-{s:08d}" for s in (320, 360, 400)]
    assert not hidden_folders(run, ".")  # no temporary folder left behind

    # (i) resuming a finished run is safe: nothing is trained or changed.
    before = sorted(os.listdir(ckpt))
    done = run_cli(*train_args, "--resume")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resumed: from step 400" in done.stdout
    assert "step 400" in done.stdout and "score" in done.stdout
    assert sorted(os.listdir(ckpt)) == before
    assert_same_run(run, reference, "resuming the finished run changed it")


def test_resume_on_an_empty_folder_says_there_is_nothing_to_resume(job, tmp_path):
    # Issue 11: it used to start from step 0 without a word.
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder in (empty, tmp_path / "mistyped"):
        result = invoke("train", job, "-o", folder, "--resume")
        assert result.exit_code == 1
        assert_one_sentence_error(result.stderr, "holds no run to resume")
    assert os.listdir(empty) == []
    assert not (tmp_path / "mistyped").exists()


def test_a_run_killed_before_its_first_checkpoint_resumes_from_scratch(
    job, reference, tmp_path
):
    run = tmp_path / "run"
    run.mkdir()
    RunFolder(run).write_mark("started")  # all a killed run left: its mark
    (run / "config.cfg").write_text(Path(job).read_text())  # and its config
    result = invoke("train", job, "-o", run, "--resume")
    assert result.exit_code == 0, result.output
    assert "no checkpoint yet; starting at step 0" in result.output
    assert_same_run(run, reference)


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--resume", "--overwrite"], "give one of them"),
        (["--extend"], "--extend lengthens a run that is resumed"),
    ],
)
def test_flags_that_contradict_are_refused_before_anything_is_written(
    job, tmp_path, flags, words
):
    run = tmp_path / "run"
    result = invoke("train", job, "-o", run, *flags)
    assert result.exit_code == 1
    assert_one_sentence_error(result.stderr, words)
    assert not run.exists()


# --- 2b. early stopping is part of the saved state ------------------------------------

# Issue 15, item 1: with patience, a run killed at any moment (also after its
# last checkpoint, while final.safetensors is written) and resumed stops where an
# uninterrupted run stops, and a finished run stays finished.
PATIENT = {
    "training.patience": 2,
    "training.eval_frequency": 10,
    "training.checkpoint_frequency": 7,
}


@pytest.fixture(scope="module")
def patient_job(tmp_path_factory) -> Path:
    return make_config(tmp_path_factory.mktemp("patient") / "job.cfg", PATIENT)


@pytest.fixture(scope="module")
def patient_reference(patient_job, tmp_path_factory) -> Path:
    """The uninterrupted run of `patient_job`: it stops early, at an
    evaluation that is not a checkpoint step."""
    out = tmp_path_factory.mktemp("patient-reference") / "run"
    result = train(load_config(patient_job), out, console=quiet())
    assert result.stopped_early and result.step < 400
    assert result.step % 10 == 0 and result.step % 7 != 0
    assert [r["step"] for r in metrics(out)][-1] == result.step
    assert step_folders(out)[-1] == f"step-{result.step:08d}"
    return out


def stop_step(run: Path) -> int:
    return metrics(run)[-1]["step"]


@pytest.fixture(scope="module")
def max_steps_reference(tmp_path_factory) -> Path:
    """A run that ends at training.max_steps (80 steps); its job is job.cfg
    beside it."""
    folder = tmp_path_factory.mktemp("short")
    job = make_config(folder / "job.cfg", {"training.max_steps": 80})
    train(load_config(job), folder / "run", console=quiet())
    return folder / "run"


@pytest.mark.slow
@POSIX
@pytest.mark.parametrize(
    "where",
    ["last periodic checkpoint", "after the last checkpoint", "final.safetensors"],
)
def test_an_early_stopped_run_killed_anywhere_resumes_bit_identical(
    patient_job, patient_reference, tmp_path, where
):
    stop = stop_step(patient_reference)
    point = {
        # mid-write of the checkpoint before the stop: resumed from the one
        # before it, the run reaches the stop again
        "last periodic checkpoint": f"fsync:.tmp-step-{stop // 7 * 7:08d}:2",
        # the stop's checkpoint committed, final.safetensors not yet written
        "after the last checkpoint": f"rename:.tmp-step-{stop:08d}:1",
        "final.safetensors": "fsync:.final.safetensors.tmp-:1",
    }[where]
    driver = tmp_path / "kill_driver.py"
    driver.write_text(KILL_DRIVER)
    run = tmp_path / "run"
    done = killed_at(driver, point, "train", patient_job, "-o", run)
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr
    assert not (run / "final.safetensors").exists()

    done = run_cli("train", patient_job, "-o", run, "--resume")
    assert done.returncode == 0, done.stdout + done.stderr
    assert_same_run(run, patient_reference, f"killed at {where}")
    assert "final score" in done.stdout and f"at step {stop} " in done.stdout
    if where == "last periodic checkpoint":
        assert "no improvement in 2 evaluations" in done.stdout
    else:  # nothing left to train: it says so and only writes final.safetensors
        assert f"resumed: from step {stop}" in done.stdout
        assert (
            f"the run had already ended at step {stop}: it stopped early, "
            "no improvement in 2 evaluations; nothing to train"
        ) in done.stdout
    assert step_folders(run)[-1] == step_folders(patient_reference)[-1]


def file_identity(path: Path) -> tuple:
    """What changes when a file is rewritten, even with the same bytes."""
    info = path.stat()
    return info.st_ino, info.st_mtime_ns, path.read_bytes()


@pytest.mark.parametrize("ended", ["early stop", "max_steps"])
def test_resuming_a_finished_run_changes_nothing(
    patient_job, patient_reference, max_steps_reference, tmp_path, ended
):
    """--resume on a run that has ended: exit 0 and one clear line; no
    training, and final.safetensors, metrics.jsonl, config.cfg and the checkpoints
    are left exactly as they were (not even rewritten)."""
    source = patient_reference if ended == "early stop" else max_steps_reference
    job = patient_job if ended == "early stop" else source.parent / "job.cfg"
    run = Path(shutil.copytree(source, tmp_path / "run"))
    kept = ["final.safetensors", "metrics.jsonl", "config.cfg"]
    before = {name: file_identity(run / name) for name in kept}
    checkpoints = sorted(os.listdir(run / "checkpoints"))

    result = invoke("train", job, "-o", run, "--resume")
    assert result.exit_code == 0, result.output
    step = stop_step(source)
    assert f"resumed: from step {step}" in result.stdout
    why = (
        "it stopped early, no improvement in 2 evaluations"
        if ended == "early stop"
        else "training.max_steps (80) is reached; nothing to train (to go on, add "
        "--extend with a larger --training.max_steps)"
    )
    assert f"the run had already ended at step {step}: {why}" in result.stdout
    assert re.search(rf"final score \d\.\d{{4}} at step {step} ", result.stdout)
    assert not [line for line in result.stdout.splitlines() if line.startswith("step ")]
    assert {name: file_identity(run / name) for name in kept} == before
    assert sorted(os.listdir(run / "checkpoints")) == checkpoints


def test_a_finished_run_with_a_torn_final_npz_gets_it_rewritten(
    patient_job, patient_reference, tmp_path
):
    run = Path(shutil.copytree(patient_reference, tmp_path / "run"))
    data = (run / "final.safetensors").read_bytes()
    (run / "final.safetensors").write_bytes(data[: len(data) // 2])
    rows = (run / "metrics.jsonl").read_bytes()
    result = invoke("train", patient_job, "-o", run, "--resume")
    assert result.exit_code == 0, result.output
    assert "nothing to train" in result.stdout
    assert_same_run(run, patient_reference)
    assert (run / "metrics.jsonl").read_bytes() == rows


def test_a_checkpoint_from_before_the_stop_reason_was_saved_stays_stopped(
    patient_job, patient_reference, tmp_path
):
    """Checkpoints written before state.json recorded why a run ended: an
    early-stopped one is still recognised (its evaluations since the best
    reached the patience), so resuming it trains nothing."""
    run = Path(shutil.copytree(patient_reference, tmp_path / "run"))
    newest = list_checkpoints(run / "checkpoints")[-1]
    old = load_checkpoint(newest)
    del old.state["stopped"]
    save_checkpoint(
        run / "checkpoints", old.step, arrays=old.arrays,
        optimizer=old.optimizer, state=old.state, keep=None,
    )  # fmt: skip
    (run / "final.safetensors").unlink()
    result = invoke("train", patient_job, "-o", run, "--resume")
    assert result.exit_code == 0, result.output
    assert f"already ended at step {old.step}: it stopped early" in result.stdout
    assert_same_run(run, patient_reference)


# --- 3. a corrupt checkpoint is skipped for the previous good one ---------------------


def corrupt(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:  # flip one bit in the middle
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))


@pytest.mark.slow
@POSIX
def test_truncated_newest_checkpoint_is_skipped_with_a_warning(
    job, reference, finished
):
    ckpt = finished / "checkpoints"
    assert step_folders(finished) == ["step-00000320", "step-00000360", "step-00000400"]
    corrupt(ckpt / "step-00000400" / "arrays.safetensors", "truncate")
    (finished / "final.safetensors").unlink()
    done = run_cli("train", job, "-o", finished, "--resume")
    assert done.returncode == 0, done.stdout + done.stderr
    warnings = [
        line for line in (done.stdout + done.stderr).splitlines() if "skipping" in line
    ]
    assert len(warnings) == 1, done.stdout
    assert "step-00000400" in warnings[0] and "arrays.safetensors" in warnings[0]
    assert "resumed: from step 360" in done.stdout
    assert_same_run(finished, reference)
    # the bad checkpoint was replaced by a good one of the same step
    assert step_folders(finished)[-1] == "step-00000400"
    assert not hidden_folders(finished, ".")


def test_two_corrupt_checkpoints_fall_back_two(job, reference, finished):
    # a folder name that looks like rich markup is printed as it is
    run = finished.rename(finished.parent / "run[v1]")
    ckpt = run / "checkpoints"
    corrupt(ckpt / "step-00000400" / "optimizer.safetensors", "flip")
    corrupt(ckpt / "step-00000360" / "state.json", "flip")
    console = quiet()
    result = train(load_config(job), run, resume=True, console=console)
    assert result.resumed_from == 320
    out = console.file.getvalue()
    warnings = [
        line for line in out.splitlines() if "skipping a bad checkpoint" in line
    ]
    assert len(warnings) == 2, out
    assert str(ckpt / "step-00000400") in warnings[0], out
    assert str(ckpt / "step-00000360") in warnings[1], out
    assert f"weights in {run / 'final.safetensors'}" in out
    assert_same_run(run, reference)


def test_no_valid_checkpoint_is_a_clear_error(job, finished):
    for folder in (finished / "checkpoints").iterdir():
        corrupt(folder / "manifest.json", "flip")
    result = invoke("train", job, "-o", finished, "--resume")
    assert result.exit_code == 1, result.output
    assert_one_sentence_error(result.stderr, "cannot resume", "--overwrite")
    assert "step-00000400" in result.stderr  # what is wrong with the newest


def test_a_checkpoint_whose_state_does_not_read_back_is_skipped(
    job, reference, finished
):
    """A state.json that passes its checksum but holds what no run writes
    (here a negative data position) is skipped like a corrupt checkpoint:
    a warning, then the previous good one."""
    newest = list_checkpoints(finished / "checkpoints")[-1]
    bad = load_checkpoint(newest)
    bad.state["cursor"] = -1
    save_checkpoint(
        finished / "checkpoints", bad.step, arrays=bad.arrays,
        optimizer=bad.optimizer, state=bad.state, keep=None,
    )  # fmt: skip
    (finished / "final.safetensors").unlink()
    result = invoke("train", job, "-o", finished, "--resume")
    assert result.exit_code == 0, result.output
    [warning] = result.stderr.splitlines()
    assert warning.startswith("⚠ skipping a bad checkpoint: ")
    assert "step-00000400: state.json has 'cursor' = -1 out of range" in warning
    assert "resumed: from step 360" in result.stdout
    assert_same_run(finished, reference)


# --- 4. a run is never overwritten by accident ----------------------------------------


def test_refuses_to_overwrite_a_run_without_resume_or_overwrite(
    job, reference, finished
):
    before = final_arrays(finished)
    result = invoke("train", job, "-o", finished)
    assert result.exit_code == 1
    assert_one_sentence_error(
        result.stderr, "already holds a run", "--resume", "--overwrite"
    )
    assert result.stdout == ""  # refused before anything was printed or written
    after = final_arrays(finished)
    assert all(after[k].tobytes() == before[k].tobytes() for k in before)

    # --overwrite starts again (here a shorter job): nothing of the old run stays
    result = invoke(
        "train", job, "-o", finished, "--overwrite", "--training.max_steps", "80"
    )
    assert result.exit_code == 0, result.output
    assert "resumed" not in result.output
    assert [r["step"] for r in metrics(finished)] == [50, 80]
    assert step_folders(finished) == ["step-00000040", "step-00000080"]
    assert sorted(os.listdir(finished / "checkpoints")) == step_folders(finished)
    assert final_arrays(finished)["w:0/W"].tobytes() != before["w:0/W"].tobytes()


def test_refuses_a_folder_with_only_a_partial_run(job, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    RunFolder(run).write_mark("started")
    (run / "metrics.jsonl").write_text('{"step": 50}\n')
    result = invoke("train", job, "-o", run)
    assert result.exit_code == 1
    assert_one_sentence_error(result.stderr, "--resume", "--overwrite")


# --- 5. resuming with a changed config ------------------------------------------------


@pytest.mark.parametrize(
    "override, line",
    [
        (["--optimizer.beta1", "0.8"], "optimizer.beta1: 0.9 -> 0.8"),
        (["--data.seed", "3"], "data.seed: 0 -> 3"),
        (["--model.hidden_width", "16"], "model.hidden_width: 64 -> 16"),
    ],
    ids=["beta1", "data-seed", "model"],
)
def test_resume_with_a_changed_config_is_refused_with_a_diff(
    job, finished, override, line
):
    before = sorted(os.listdir(finished / "checkpoints"))
    result = invoke("train", job, "-o", finished, "--resume", *override)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert line in result.stderr, result.stderr
    assert result.stderr.startswith("✘ the config changed since the checkpoint")
    assert sorted(os.listdir(finished / "checkpoints")) == before


def test_resume_allows_recording_settings_and_max_steps_only_with_extend(
    job, tmp_path, finished
):
    # how often and how many checkpoints are kept: not training-relevant
    result = invoke(
        "train", job, "-o", finished, "--resume",
        "--training.checkpoint_frequency", "7", "--training.keep_checkpoints", "5",
    )  # fmt: skip
    assert result.exit_code == 0, result.output

    # max_steps: here the schedule's total_steps follows it (an interpolation),
    # so a longer run is a different schedule, and that diff is shown
    result = invoke(
        "train", job, "-o", finished, "--resume", "--training.max_steps", "450"
    )
    assert result.exit_code == 1
    assert "total_steps: 400 -> 450" in result.stderr, result.stderr

    # with total_steps pinned, max_steps alone needs --extend ...
    pinned = ["--optimizer.learn_rate.schedule.total_steps", "400"]
    longer = ["--training.max_steps", "450", *pinned]
    result = invoke("train", job, "-o", finished, "--resume", *longer)
    assert result.exit_code == 1
    assert_one_sentence_error(result.stderr, "400", "450", "--extend")

    # ... and then continues the run, exactly as a 450-step run from the start
    result = invoke("train", job, "-o", finished, "--resume", "--extend", *longer)
    assert result.exit_code == 0, result.output
    assert "resumed: from step 400" in result.output
    assert [r["step"] for r in metrics(finished)][-2:] == [400, 450]
    straight = tmp_path / "straight"
    cfg = load_config(job, {"training.max_steps": 450, pinned[0][2:]: 400})
    train(cfg, straight, console=quiet())
    assert_same_run(finished, straight)


def test_config_diff_lists_dotted_paths():
    old = {"a": {"b": 1, "c": {"d": "x"}}, "gone": 1}
    new = {"a": {"b": 2, "c": {"d": "x"}, "e": True}}
    assert config_diff(old, new) == [
        "a.b: 1 -> 2",
        "a.e: (absent) -> True",
        "gone: 1 -> (removed)",
    ]
    assert config_diff(old, old) == []


# --- 6. plateau.v1 lowers the rate when the score stops improving ---------------------


def test_plateau_lowers_the_learning_rate_end_to_end(tmp_path):
    # a rate so small that the dev score does not move: every evaluation after
    # the first fails to improve, so with max_patience 2 the rate halves every
    # second evaluation.
    cfg = make_config(
        tmp_path / "job.cfg",
        {"training.max_steps": 300, "training.eval_frequency": 25},
        learn_rate={
            "@schedules": "plateau.v1",
            "max_patience": 2,
            "scale": 0.5,
            "schedule": {"@schedules": "constant.v1", "rate": 1e-7},
        },
    )
    train(load_config(cfg), tmp_path / "run", console=quiet())
    rows = metrics(tmp_path / "run")
    scores = [r["score"] for r in rows]
    rates = [r["learn_rate"] for r in rows]
    assert len(set(scores)) == 1, scores  # a flat score
    # Evaluation 1 sets the best score; 2 and 3 fail to beat it, so the rate
    # halves, and the row of evaluation 3 already shows the rate the next steps
    # use; then again after each further two. 12 evaluations: 5 halvings.
    expected = [1e-7 * 0.5 ** (i // 2) for i in range(12)]
    assert rates == pytest.approx(expected, rel=1e-9), rates


# --- 7. --gpu without cupy ------------------------------------------------------------


def test_gpu_without_cupy_is_one_sentence_and_leaves_nothing(job, tmp_path):
    from optsvc.backends.cupy_ops import has_cupy

    if has_cupy():
        pytest.skip("cupy is installed here")
    run = tmp_path / "run"
    result = invoke("train", job, "-o", run, "--gpu", "0")
    assert result.exit_code == 1
    assert_one_sentence_error(result.stderr, "pip install 'optsvc[cuda13]'")
    assert result.stdout == ""
    assert not run.exists()


# --- 8. a bad config creates nothing --------------------------------------------------


@pytest.mark.parametrize(
    "edit, args, expected",
    [
        (None, ["--training.batch_size", "0"], "training.batch_size"),
        (("spirals.v1", "spirals.v9"), [], "spirals.v9"),
        (("hidden_width = 32", "hidden_width = wide"), [], "model.hidden_width"),
        (("[model]", "[model"), [], ""),
        ("missing", [], "does not exist"),
    ],
    ids=["schema", "unknown-dataset", "bad-value", "syntax", "missing-file"],
)
def test_config_errors_exit_1_and_create_no_folder(tmp_path, edit, args, expected):
    cfg = make_config(tmp_path / "job.cfg")
    if edit == "missing":
        cfg = tmp_path / "nope.cfg"
    elif edit is not None:
        cfg.write_text(cfg.read_text().replace(*edit))
    run = tmp_path / "out" / "run"
    result = invoke("train", cfg, "-o", run, *args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    assert result.stderr.startswith("✘ ") and expected in result.stderr
    assert not (tmp_path / "out").exists()


def test_config_error_in_process_raises_before_touching_the_folder(tmp_path):
    cfg = config_from_str(
        make_config(tmp_path / "job.cfg").read_text(), {"training.max_steps": 0}
    )
    with pytest.raises(ConfigError, match="training.max_steps"):
        train(cfg, tmp_path / "run", console=quiet())
    assert not (tmp_path / "run").exists()
    with pytest.raises(RunError, match="is a file"):
        (tmp_path / "file").write_text("")
        train(load_config(tmp_path / "job.cfg"), tmp_path / "file", console=quiet())


# --- 9. logging and the run folder ----------------------------------------------------

LOGGED = ["step", "epoch", "loss", "score", "learn_rate", "L2", "steps_per_sec"]


def logging_config(path: Path) -> Path:
    # L2 on a schedule too: every scheduled hyperparameter is logged
    return make_config(
        path,
        {"training.max_steps": 200},
        L2={"@schedules": "decaying.v1", "base_rate": 1e-4, "decay": 0.01},
    )


def test_plain_log_lines_metrics_and_run_folder(tmp_path):
    cfg = logging_config(tmp_path / "job.cfg")
    run = tmp_path / "run"
    result = invoke("train", cfg, "-o", run, "--training.batch_size", "32")
    assert result.exit_code == 0, result.output
    out = result.stdout

    # not a terminal: plain lines, one per evaluation, no escape codes or bars
    assert "\x1b" not in out and "━" not in out
    for key in ("config", "device", "model", "optimizer", "output"):
        assert re.search(rf"^\s*{key}: ", out, re.M), out
    assert f"output: {run}" in out and "cpu (numpy)" in out
    lines = [line for line in out.splitlines() if line.startswith("step ")]
    rows = metrics(run)
    assert len(lines) == len(rows) == 4
    for line, row in zip(lines, rows):
        words = line.split()
        assert words[0::2] == LOGGED, line
        assert int(words[1]) == row["step"] and int(words[3]) == row["epoch"]
        assert float(words[5]) == pytest.approx(row["loss"], abs=5e-5)
        assert float(words[7]) == pytest.approx(row["score"], abs=5e-5)
    assert re.search(r"final score \d\.\d{4} at step 200", out), out

    # metrics.jsonl: one JSON object per evaluation, the same fields
    assert [r["step"] for r in rows] == [50, 100, 150, 200]
    for row in rows:
        assert list(row) == LOGGED
        assert isinstance(row["loss"], float) and 0 <= row["score"] <= 1
        assert row["steps_per_sec"] > 0
    assert rows[-1]["L2"] < rows[0]["L2"] < 1e-4  # decaying

    # the run folder
    assert sorted(os.listdir(run)) == [
        ".lock", "best.safetensors", "checkpoints", "config.cfg",
        "final.safetensors", "metrics.jsonl", "run.json",
    ]  # fmt: skip
    assert step_folders(run) == ["step-00000120", "step-00000160", "step-00000200"]
    filled = Config().from_str((run / "config.cfg").read_text())
    assert filled["training"]["batch_size"] == 32  # the override
    assert filled["training"]["nonfinite"] == "refuse"  # a default, written out
    assert filled["system"]["gpu_id"] == -1
    assert filled["optimizer"]["learn_rate"]["total_steps"] == 200
    weights = final_arrays(run)
    assert {k.split(":")[0] for k in weights} == {"w", "avg", "step", "score"}
    assert all(np.isfinite(a).all() for a in weights.values())
    # the filled config reproduces the run
    again = tmp_path / "again"
    train(load_config(run / "config.cfg"), again, console=quiet())
    assert_same_run(again, run)


def test_plain_lines_are_not_wrapped_on_a_narrow_console(tmp_path):
    cfg = logging_config(tmp_path / "job.cfg")
    console = Console(file=io.StringIO(), width=40)
    train(load_config(cfg), tmp_path / "run", console=console)
    lines = [x for x in console.file.getvalue().splitlines() if x.startswith("step")]
    assert len(lines) == 4 and all(
        line.split()[-2] == "steps_per_sec" for line in lines
    )


def test_terminal_shows_header_progress_and_a_table(tmp_path):
    cfg = logging_config(tmp_path / "job.cfg")
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    train(load_config(cfg), tmp_path / "run", console=console, config_source="job.cfg")
    raw = console.file.getvalue()
    assert "\x1b[" in raw  # styled
    text = Text.from_ansi(raw).plain
    assert "config: job.cfg" in text and "device: cpu (numpy)" in text
    assert "parameters" in text and f"output: {tmp_path / 'run'}" in text
    assert "training" in text and "eta" in text  # the progress bar
    header = next(line for line in text.splitlines() if "steps_per_sec" in line)
    assert header.split() == LOGGED
    rows = [
        line.split() for line in text.splitlines() if re.match(r"\s+\d+\s+\d+", line)
    ]
    assert [int(r[0]) for r in rows] == [50, 100, 150, 200]
    assert all(len(r) == len(LOGGED) for r in rows)
    assert "final score" in text


# --- 10. the GPU code path, with the CUDA kernels in simulation -----------------------


def simulated_gpu(monkeypatch, sim, launches: list[int]):
    """A function that sends train() (`--gpu 0`) and the optimizer's cupy
    backend to `sim`, counting the multi-tensor kernel's launches."""
    from optsvc.backends import cuda_multi
    from optsvc.optim import optimizer as optimizers

    real_multi, real_get_ops = cuda_multi.multi_update, optimizers.get_ops

    def counted(*args, **kwargs):
        launches.append(1)
        return real_multi(*args, **kwargs)

    def on_the_simulator():
        monkeypatch.setattr(training, "ops_for_device", lambda gpu_id: sim)
        monkeypatch.setattr(
            optimizers,
            "get_ops",
            lambda name, **kw: sim if name == "cupy" else real_get_ops(name, **kw),
        )
        monkeypatch.setattr(cuda_multi, "multi_update", counted)

    return on_the_simulator


def test_gpu_code_path_under_the_cuda_simulator(tmp_path, monkeypatch):
    """train() with the GPU branches taken (--gpu 0) and the optimizer's update
    running the numba.cuda kernels under the simulator (numpy arrays). The
    simulator is slow (~0.3 s a step), so the job is tiny: 10 steps, then 5
    more resuming a CPU checkpoint on the "GPU"."""
    pytest.importorskip("numba")
    if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        pytest.skip("a real GPU is here; the simulator is off")
    from conftest import SimulatedGpuOps

    cfg = make_config(
        tmp_path / "tiny.cfg",
        {
            "data.n_samples": 120,
            "model.hidden_width": 8,
            "model.depth": 1,
            "training.batch_size": 16,
            "training.max_steps": 10,
            "training.eval_frequency": 5,
            "training.checkpoint_frequency": 5,
            "optimizer.learn_rate.warmup_steps": 2,
        },
    )
    on_cpu = tmp_path / "cpu"
    train(load_config(cfg), on_cpu, console=quiet())

    launches: list[int] = []
    on_the_simulator = simulated_gpu(monkeypatch, SimulatedGpuOps(), launches)
    on_the_simulator()

    # --resume into a folder that a killed run left without a checkpoint: it
    # starts from scratch, and the stale metrics go
    on_gpu = tmp_path / "gpu"
    on_gpu.mkdir()
    RunFolder(on_gpu).write_mark("started")
    (on_gpu / "metrics.jsonl").write_text('{"step": 999}\n')
    result = train(load_config(cfg), on_gpu, gpu_id=0, resume=True, console=quiet())
    assert result.step == 10 and len(launches) == 10  # every update on the kernels
    assert [r["step"] for r in metrics(on_gpu)] == [5, 10]

    # The same numbers as numpy: the simulator runs the kernels in float32
    # like the CPU; only the clipping norm's summation order differs, so the
    # tolerance is a few float32 ulps (observed: equal).
    got, want = final_arrays(on_gpu), final_arrays(on_cpu)
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)
    for row, cpu_row in zip(metrics(on_gpu), metrics(on_cpu), strict=True):
        assert computed([row]) == [pytest.approx(computed([cpu_row])[0])]

    # A GPU checkpoint resumes on the CPU, and ends where the GPU run did ...
    monkeypatch.undo()
    gpu_to_cpu = Path(shutil.copytree(on_gpu, tmp_path / "gpu_to_cpu"))
    shutil.rmtree(gpu_to_cpu / "checkpoints" / "step-00000010")
    resumed = train(load_config(cfg), gpu_to_cpu, resume=True, console=quiet())
    assert resumed.resumed_from == 5
    for name, array in final_arrays(gpu_to_cpu).items():
        np.testing.assert_allclose(array, got[name], rtol=1e-5, atol=1e-6)

    # ... and a CPU checkpoint on the GPU, ending where the CPU run did.
    on_the_simulator()
    launches.clear()
    cpu_to_gpu = Path(shutil.copytree(on_cpu, tmp_path / "cpu_to_gpu"))
    shutil.rmtree(cpu_to_gpu / "checkpoints" / "step-00000010")
    resumed = train(
        load_config(cfg), cpu_to_gpu, resume=True, gpu_id=0, console=quiet()
    )
    assert resumed.resumed_from == 5 and len(launches) == 5
    for name, array in final_arrays(cpu_to_gpu).items():
        np.testing.assert_allclose(array, want[name], rtol=1e-5, atol=1e-6)


# --- one process per run folder ---


@pytest.mark.slow
def test_a_second_train_on_the_same_folder_is_refused_while_the_first_runs(
    job, tmp_path
):
    run = tmp_path / "run"
    run.mkdir()
    from optsvc.training.lock import RunLock

    # The lock a live `optsvc train` holds is an flock on RUN/.lock.
    holder = RunLock(run)
    try:
        result = run_cli("train", str(job), "-o", str(run), "--resume")
    finally:
        holder.release()
    assert result.returncode == 1
    assert_one_sentence_error(result.stderr, "another optsvc train", str(os.getpid()))
    assert not (run / "checkpoints").exists()


@pytest.mark.slow
def test_a_lock_left_by_a_killed_run_is_recovered(job, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    code = (
        "import sys, time\n"
        "from optsvc.training.lock import RunLock\n"
        f"RunLock({str(run)!r})\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"locked"
        refused = run_cli("train", str(job), "-o", str(run))
        assert refused.returncode == 1 and "another optsvc train" in refused.stderr
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (run / ".final.safetensors.tmp-999999").write_bytes(
        b"torn"
    )  # a killed writer's leftover
    done = run_cli("train", str(job), "-o", str(run), "--resume")
    assert done.returncode == 0, done.stderr
    assert not list(run.glob(".*.tmp-*"))


# --- 11. the run folder's rules, without training -------------------------------------


def no_warnings(message: str) -> None:
    raise AssertionError(f"unexpected warning: {message}")


def state_checkpoint(directory: Path, step: int, **changes) -> Path:
    """A checkpoint holding only a TrainState at `step` (and `changes` to
    its state.json), as a run of 5 examples writes it."""
    state = TrainState.start(n_train=5, seed=0)
    state.step = step
    record, arrays = state.to_checkpoint()
    return save_checkpoint(
        directory, step, arrays=arrays, optimizer=b"", state={**record, **changes}
    )


def begin(folder, *, resume, overwrite=False, warn=no_warnings):
    """`folder.begin`, reading the checkpoint's TrainState alone."""
    return folder.begin(
        resume=resume, overwrite=overwrite, warn=warn, read=TrainState.from_checkpoint
    )


def test_a_lock_probe_does_not_make_a_starting_run_fail(tmp_path):
    # `optsvc runs` tests the lock with a shared flock on RUN/.lock, held for
    # an instant; a run starting at that instant waits for it.
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text("")
    fd = os.open(run / ".lock", os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)
    probe_ends = threading.Timer(0.2, os.close, [fd])
    probe_ends.start()
    try:
        with RunFolder(run) as folder:
            assert lock_held(folder.path) is True
    finally:
        probe_ends.join()
    assert lock_held(run) is False


def test_a_run_folder_of_optsvc_0_1_is_refused_naming_its_format(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "step-00000010").mkdir(parents=True)
    manifest = {"format": "optsvc.checkpoint", "version": 1, "step": 10}
    (run / "checkpoints" / "step-00000010" / "manifest.json").write_text(
        json.dumps(manifest)
    )
    (run / "final.npz").write_bytes(b"PK")
    with RunFolder(run) as folder:
        with pytest.raises(RunError, match=r"format 1, .* again with --overwrite"):
            begin(folder, resume=True)


def test_one_process_at_a_time_holds_a_run_folder(tmp_path):
    first = RunFolder(tmp_path / "run").lock()
    try:
        with pytest.raises(
            RunError, match=rf"another optsvc train \(pid {os.getpid()}"
        ):
            RunFolder(tmp_path / "run").lock()
    finally:
        first.release()
    with RunFolder(tmp_path / "run") as again:
        assert again.path.is_dir() and not again.holds_run()
    (tmp_path / "file").write_text("")
    with pytest.raises(RunError, match="'.*file' is a file; give a folder with -o"):
        RunFolder(tmp_path / "file").lock()


def test_a_run_already_there_is_refused_resumed_or_cleared(tmp_path):
    run = tmp_path / "run"
    with RunFolder(run) as folder:
        assert begin(folder, resume=False) is None
        (run / "metrics.jsonl").write_text('{"step": 5}\n')
        (run / "notes.txt").write_text("the user's own file")
        assert folder.holds_run()
        with pytest.raises(RunError, match="already holds a run; add --resume"):
            begin(folder, resume=False)
        # --resume without a checkpoint: start at step 0, nothing removed yet
        assert begin(folder, resume=True) is None
        assert (run / "metrics.jsonl").exists()
        state_checkpoint(run / "checkpoints", 3)
        (run / "final.safetensors").write_bytes(b"old")
        # --overwrite: the run's files go, nothing else
        begin(folder, resume=False, overwrite=True)
        assert sorted(os.listdir(run)) == [".lock", "notes.txt", "run.json"]


def test_what_killed_writers_left_is_removed_when_the_lock_is_taken(tmp_path):
    run, dead = tmp_path / "run", 2**22 + 1
    (run / "checkpoints" / f".tmp-step-00000007-{dead}").mkdir(parents=True)
    (run / "checkpoints" / f".del-step-00000001-{dead}").mkdir()
    # a step folder set aside mid-replace may be the only copy: it stays
    (run / "checkpoints" / f".old-step-00000003-{dead}").mkdir()
    (run / f".final.safetensors.tmp-{dead}").write_bytes(b"torn")
    with RunFolder(run):
        assert sorted(os.listdir(run)) == [".lock", "checkpoints"]
        assert os.listdir(run / "checkpoints") == [f".old-step-00000003-{dead}"]


def test_resume_takes_the_newest_checkpoint_whose_state_reads_back(tmp_path):
    run = tmp_path / "run"
    state_checkpoint(run / "checkpoints", 3)
    state_checkpoint(run / "checkpoints", 6, stopped="tired")
    warnings: list[str] = []
    with RunFolder(run) as folder:
        state = begin(folder, resume=True, warn=warnings.append)
    assert state.step == 3
    [warning] = warnings
    assert "step-00000006: state.json has a bad 'stopped' ('tired')" in warning
    # none left: a refusal that names the newest problem and the fix
    state_checkpoint(run / "checkpoints", 3, cursor=9)
    with RunFolder(run) as folder:
        with pytest.raises(
            RunError, match="cannot resume, .*none of its 2 .*--overwrite"
        ):
            begin(folder, resume=True, warn=warnings.append)


def test_resume_checks_the_config_and_max_steps(tmp_path):
    config = {"optimizer": {"beta1": 0.9}, "training": {"patience": 0}}
    state = TrainState.start(n_train=5, seed=0)
    state.step, state.config, state.max_steps = 50, config, 100
    check_resumable(state, config, 100, allow_extend=False)
    changed = {"optimizer": {"beta1": 0.8}, "training": {"patience": 0}}
    with pytest.raises(RunError, match="optimizer.beta1: 0.9 -> 0.8"):
        check_resumable(state, changed, 100, allow_extend=False)
    with pytest.raises(RunError, match="from 100 to 200; add --extend"):
        check_resumable(state, config, 200, allow_extend=False)
    check_resumable(state, config, 200, allow_extend=True)
    with pytest.raises(RunError, match="at step 50, past training.max_steps \\(40\\)"):
        check_resumable(state, config, 40, allow_extend=True)
    state.config = state.max_steps = None  # saved before either was recorded
    check_resumable(state, changed, 200, allow_extend=False)


def test_metrics_are_cut_back_to_the_checkpoint_and_damage_dropped(tmp_path):
    with RunFolder(tmp_path / "run") as folder:
        folder.truncate_metrics(10)  # none yet: nothing to do
        assert not folder.metrics.exists()
        lines = [
            b'{"step": 10, "score": 0.5}',
            b'{"step": 20}',
            b'\xff\xfe{"step": 5}',  # not UTF-8
            b'{"step": 3',  # torn by a kill
            b"[1]",
            b"[" * 100_000,  # too deep to read
            b'{"step": 30}',
            b'{"step": 15}',
        ]
        folder.metrics.write_bytes(b"\n".join(lines) + b"\n")
        folder.truncate_metrics(20)
        assert folder.metrics.read_bytes().splitlines() == [
            b'{"step": 10, "score": 0.5}',
            b'{"step": 20}',
            b'{"step": 15}',
        ]


@pytest.mark.parametrize("name", ["final", "best"])
def test_a_weights_file_is_recognised_only_when_it_holds_exactly_them(tmp_path, name):
    weights = {"w:0/W": np.arange(6, dtype=np.float32).reshape(2, 3)}
    with RunFolder(tmp_path / "run") as folder:
        path = getattr(folder, name)
        assert not folder.holds(path, weights)  # missing
        folder.write_weights(path, weights)
        assert folder.holds(path, weights)
        assert not folder.holds(path, {"w:0/W": weights["w:0/W"] + 1})
        assert not folder.holds(path, {"w:0/W": weights["w:0/W"].astype(np.float64)})
        assert not folder.holds(path, {**weights, "avg:0/W": weights["w:0/W"]})
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        assert not folder.holds(path, weights)
        path.unlink()
        os.mkfifo(path)  # would block a reader: not even opened
        assert not folder.holds(path, weights)
