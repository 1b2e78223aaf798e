"""What optsvc does with files that are not what they should be: special files
(FIFOs, /dev/zero) where a config, a scores log or a checkpoint file belongs,
files larger than they claim, compressed arrays that would inflate, a
``checkpoints/`` that is a file or a symlink loop, an empty output path, a
deleted lock file, damaged metrics lines and checkpoints that pass their
checksums but lie. Each from the user's side where the user meets it: the
CLI in a subprocess, with a timeout, so that a hang fails the test."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from confection import Config
from runs_helpers import OPTSVC, QUICKSTART, quiet, run_cli
from soak import _nan_weights as nan_in_first_weight
from soak import _replace_arrays, final_arrays, rewrite_manifest

from optsvc import Adam
from optsvc.backends import get_ops
from optsvc.config.parse import load_config
from optsvc.config.preview import read_scores
from optsvc.errors import ConfigError, StateError
from optsvc.fileio import read_regular
from optsvc.optim.serialize import decode_optimizer, encode_optimizer
from optsvc.training import checkpoints as ckpt_module
from optsvc.training.checkpoints import (
    load_checkpoint,
    load_latest_checkpoint,
    save_checkpoint,
)
from optsvc.training.loop import train
from optsvc.training.run_folder import RunFolder

# the names of every optimizer's hyperparameters, for decoding saved state
LIKE = Adam().schedules

SMALL = {
    "data.n_samples": 600,
    "model.hidden_width": 16,
    "training.max_steps": 60,
    "training.eval_frequency": 20,
    "training.checkpoint_frequency": 20,
    "training.keep_checkpoints": 3,
    "optimizer.learn_rate.warmup_steps": 10,
}


def make_config(path: Path, settings: dict | None = None) -> Path:
    cfg = Config().from_str(QUICKSTART.read_text(), interpolate=False)
    for dotted, value in {**SMALL, **(settings or {})}.items():
        *sections, key = dotted.split(".")
        node = cfg
        for section in sections:
            node = node[section]
        node[key] = value
    path.write_text(cfg.to_str())
    return path


def one_error_line(result: subprocess.CompletedProcess, *needles: str) -> None:
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    errors = [ln for ln in output.strip().splitlines() if ln.startswith("✘ ")]
    assert len(errors) == 1, output
    for needle in needles:
        assert needle in errors[0], output


def newest(run: Path) -> Path:
    return sorted((run / "checkpoints").glob("step-*"))[-1]


@pytest.fixture
def fifo(tmp_path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """A finished small run (checkpoints at 20, 40, 60) and its config."""
    folder = tmp_path_factory.mktemp("finished")
    cfg = make_config(folder / "job.cfg")
    train(load_config(cfg), folder / "run", console=quiet())
    return cfg, folder / "run"


@pytest.fixture
def run(finished, tmp_path) -> tuple[Path, Path]:
    cfg, reference = finished
    return cfg, Path(shutil.copytree(reference, tmp_path / "run"))


# --- read_regular, the one way optsvc reads a file ------------------------------------


def test_read_regular_refuses_special_missing_and_oversized_files(tmp_path, fifo):
    big = tmp_path / "big"
    big.write_bytes(b"x" * 11)
    for path, needle in [
        (fifo, "not a regular file"),
        ("/dev/zero", "not a regular file"),
        (tmp_path, "is a folder"),
        (tmp_path / "absent", "does not exist"),
        (big, "over the limit of 10"),
    ]:
        with pytest.raises(StateError, match=needle) as err:
            read_regular(path, 10, "test file")
        assert "\n" not in str(err.value)
    assert read_regular(big, 11) == b"x" * 11


def test_load_config_and_read_scores_refuse_special_files(fifo):
    for path in (fifo, Path("/dev/zero")):
        with pytest.raises(ConfigError, match="not a regular file"):
            load_config(path)
        with pytest.raises(ConfigError, match="not a regular file"):
            read_scores(path)


@pytest.mark.slow
@pytest.mark.parametrize("special", ["fifo", "/dev/zero"])
def test_validate_and_show_schedule_on_a_special_file_answer(special, fifo, tmp_path):
    path = fifo if special == "fifo" else Path(special)
    result = run_cli("validate", path, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "is not a regular file" in result.stdout + result.stderr
    cfg = make_config(tmp_path / "job.cfg")
    result = run_cli("show-schedule", cfg, "--scores", path, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "is not a regular file" in result.stdout + result.stderr


# --- checkpoint files that are special, larger than they claim, or inflate ------------


def save(directory: Path, step: int) -> Path:
    return save_checkpoint(
        directory,
        step,
        arrays={"w": np.arange(1000, dtype="float32")},
        optimizer=b"opt",
        state={"step": step},
    )


@pytest.mark.parametrize("special", ["fifo", "dev-zero", "grown"])
def test_a_special_or_grown_checkpoint_file_falls_back_without_reading(
    tmp_path, special
):
    save(tmp_path, 1)
    bad = save(tmp_path, 2)
    target = bad / "arrays.safetensors"
    target.unlink()
    if special == "fifo":
        os.mkfifo(target)
    elif special == "dev-zero":
        target.symlink_to("/dev/zero")
    else:  # a sparse file far larger than the manifest says: never read whole
        with open(target, "wb") as f:
            f.truncate(50 * 2**30)
    warnings: list[str] = []
    checkpoint = load_latest_checkpoint(tmp_path, warn=warnings.append)
    assert checkpoint.step == 1
    assert len(warnings) == 1 and "arrays.safetensors" in warnings[0]


def lying_safetensors(declared: int) -> bytes:
    """Safetensors bytes whose header declares a float32 array of `declared`
    elements, followed by 16 bytes of data."""
    header = {
        "w": {"dtype": "F32", "shape": [declared], "data_offsets": [0, 4 * declared]}
    }
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + bytes(16)


def test_an_array_larger_than_its_file_is_refused_before_reading(tmp_path):
    save(tmp_path, 1)
    bad = save(tmp_path, 2)
    (bad / "arrays.safetensors").write_bytes(lying_safetensors(2**28))  # 1 GiB
    rewrite_manifest(bad)
    with pytest.raises(StateError, match="arrays.safetensors is not readable"):
        load_checkpoint(bad)
    assert load_latest_checkpoint(tmp_path, warn=lambda _: None).step == 1


def test_many_kept_checkpoints_are_not_all_reread_at_each_save(tmp_path, monkeypatch):
    reads = []
    real = ckpt_module.load_checkpoint
    monkeypatch.setattr(
        ckpt_module, "load_checkpoint", lambda p: reads.append(p) or real(p)
    )
    for step in range(1, 41):
        save_checkpoint(tmp_path, step, arrays={}, optimizer=b"", state={}, keep=1000)
    # Fewer checkpoints than kept: nothing to delete, so nothing is read.
    assert reads == []
    # A prune reads each checkpoint once; a damaged one is not kept.
    victim = tmp_path / "step-00000003" / "state.json"
    victim.write_text("{}")
    save_checkpoint(tmp_path, 41, arrays={}, optimizer=b"", state={}, keep=39)
    assert reads == [tmp_path / f"step-{s:08d}" for s in range(40, 1, -1)]
    # the damaged one does not count as kept: 39 good ones are
    assert (tmp_path / "step-00000002").exists()
    assert not (tmp_path / "step-00000001").exists()
    # the next prune reads only the checkpoint saved before it
    reads.clear()
    save_checkpoint(tmp_path, 42, arrays={}, optimizer=b"", state={}, keep=39)
    assert reads == [tmp_path / "step-00000041"]


# --- the run folder: checkpoints/ not a folder, -o '', the lock -----------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["file", "symlink-loop", "dangling"])
@pytest.mark.parametrize("flags", [["--resume"], []])
def test_a_checkpoints_path_that_is_no_folder_is_refused_before_training(
    tmp_path, kind, flags
):
    cfg = make_config(tmp_path / "job.cfg")
    out = tmp_path / "run"
    out.mkdir()
    RunFolder(out).write_mark("started")  # an optsvc run whose checkpoints/ broke
    target = out / "checkpoints"
    if kind == "file":
        target.write_text("not a folder")
    elif kind == "symlink-loop":
        target.symlink_to(target)
    else:
        target.symlink_to(tmp_path / "nowhere" / "at-all")
    result = run_cli("train", cfg, "-o", out, *flags)
    assert result.returncode == 1, result.stdout + result.stderr
    one_error_line(result, "--overwrite")
    assert "step 0" not in result.stdout  # it did not start training
    assert (
        not (out / "final.safetensors").exists()
        and not (out / "metrics.jsonl").exists()
    )


@pytest.mark.slow
def test_an_empty_output_path_is_refused(tmp_path):
    cfg = make_config(tmp_path / "job.cfg")
    work = tmp_path / "cwd"
    work.mkdir()
    result = run_cli("train", cfg, "-o", "", cwd=work)
    assert result.returncode == 1
    one_error_line(result, "output folder is empty", "-o")
    assert os.listdir(work) == []


@pytest.mark.slow
def test_deleting_the_lock_file_does_not_admit_a_second_writer(tmp_path):
    cfg = make_config(
        tmp_path / "job.cfg",
        {"training.max_steps": 10**7, "training.checkpoint_frequency": 10**6},
    )
    out = tmp_path / "run"
    first = subprocess.Popen(
        [*OPTSVC, "train", str(cfg), "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not (out / "metrics.jsonl").exists():  # training has begun
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        (out / ".lock").unlink()
        second = run_cli("train", cfg, "-o", out, "--overwrite")
        assert second.returncode == 1
        one_error_line(second, "another optsvc train")
        assert first.poll() is None  # the first writer is unharmed
        assert (out / "metrics.jsonl").exists()  # and its run was not cleared
    finally:
        first.kill()
        first.wait()


# --- metrics.jsonl damage never blocks a resume ---------------------------------------


@pytest.mark.slow
def test_damaged_metrics_lines_are_dropped_on_resume(run):
    cfg, out = run
    shutil.rmtree(newest(out))  # resume from step 40, redoing 60
    lines = (out / "metrics.jsonl").read_bytes().splitlines()
    lines[0] = bytes([lines[0][0] | 0x80]) + lines[0][1:]  # a flipped high bit
    lines.insert(1, b"[" * 100_000 + b"]" * 100_000)  # deeper than json parses
    lines.insert(2, b'{"step": "x"}')
    (out / "metrics.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    result = run_cli("train", cfg, "-o", out, "--resume")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [40, 60]


# --- checkpoints that pass their checksums but lie ------------------------------------


def _nan_weights(folder: Path) -> str:
    _replace_arrays(folder, nan_in_first_weight)  # a NaN in w:0/W
    return "NaN"


def _other_kind(folder: Path) -> str:
    saved = decode_optimizer(
        (folder / "optimizer.safetensors").read_bytes(), like=LIKE, ops=get_ops("numpy")
    )
    saved = dataclasses.replace(saved, settings={**saved.settings, "use_radam": True})
    (folder / "optimizer.safetensors").write_bytes(encode_optimizer(saved))
    return "RAdam"


def _infinite_moments(folder: Path) -> str:
    saved = decode_optimizer(
        (folder / "optimizer.safetensors").read_bytes(), like=LIKE, ops=get_ops("numpy")
    )
    for slot in saved.state.slots.values():
        slot.state[0][...] = np.inf
    (folder / "optimizer.safetensors").write_bytes(encode_optimizer(saved))
    return "not finite"


def _learn_rate(folder: Path) -> str:
    from optsvc.schedules.base import Schedule

    saved = decode_optimizer(
        (folder / "optimizer.safetensors").read_bytes(), like=LIKE, ops=get_ops("numpy")
    )
    schedules = dict(saved.schedules)
    old = schedules["learn_rate"]
    schedules["learn_rate"] = Schedule(
        old.name, old.function, attrs={**old.attrs, "initial_rate": -1.0}
    )
    saved = dataclasses.replace(saved, schedules=schedules)
    (folder / "optimizer.safetensors").write_bytes(encode_optimizer(saved))
    return "learn_rate"


def _oversized_optimizer(folder: Path) -> str:
    (folder / "optimizer.safetensors").write_bytes(lying_safetensors(2**28))
    return "not a readable optsvc state archive"


def _no_slots(folder: Path) -> str:
    """The optimizer state of a fresh optimizer: a resume would restart the
    moments and the averages from zero."""
    saved = decode_optimizer(
        (folder / "optimizer.safetensors").read_bytes(), like=LIKE, ops=get_ops("numpy")
    )
    saved.state.slots.clear()
    (folder / "optimizer.safetensors").write_bytes(encode_optimizer(saved))
    return "holds no state for parameter"


def _state(field: str, value):
    def lie(folder: Path) -> str:
        state = json.loads((folder / "state.json").read_text())
        state[field] = value
        (folder / "state.json").write_text(json.dumps(state))
        return field if field != "rng" else "random generator"

    return lie


LIES = {
    "nan-weights-at-max-steps": _nan_weights,
    "radam-state-in-adam-run": _other_kind,
    "infinite-moments": _infinite_moments,
    "oversized-optimizer-state": _oversized_optimizer,
    "no-optimizer-slots": _no_slots,
    "negative-learn-rate": _learn_rate,
    "negative-epoch": _state("epoch", -5),
    "huge-cursor": _state("cursor", 10**40),
    "infinite-loss-count": _state("loss_count", 1e999),
    "broken-rng": _state("rng", {"bit_generator": "PCG64", "state": {"state": -1}}),
}


@pytest.mark.slow
@pytest.mark.parametrize("lie", sorted(LIES))
def test_a_lying_checkpoint_is_skipped_with_a_warning(run, finished, lie):
    cfg, out = run
    bad = newest(out)  # the checkpoint at max_steps
    needle = LIES[lie](bad)
    rewrite_manifest(bad)
    load_checkpoint(bad)  # the checksums pass
    (out / "final.safetensors").unlink()
    result = run_cli("train", cfg, "-o", out, "--resume")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    warnings = [ln for ln in output.splitlines() if "skipping a bad checkpoint" in ln]
    assert len(warnings) == 1 and needle in warnings[0], output
    assert "resumed: from step 40" in output
    got, want = final_arrays(out), final_arrays(finished[1])
    for name in want:
        assert np.isfinite(got[name]).all()
        assert got[name].tobytes() == want[name].tobytes(), name


@pytest.mark.slow
def test_a_lying_checkpoint_is_skipped_on_a_resume_from_the_runs_own_config(run):
    """`optsvc train --resume -o DIR` reads the run's filled config.cfg, with
    the defaults written out: it is the same config, so the checkpoint is
    checked against the model as it is with the config given again."""
    _, out = run
    bad = newest(out)
    needle = _infinite_moments(bad)
    rewrite_manifest(bad)
    (out / "final.safetensors").unlink()
    result = run_cli("train", "-o", out, "--resume")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    warnings = [ln for ln in output.splitlines() if "skipping a bad checkpoint" in ln]
    assert len(warnings) == 1 and needle in warnings[0], output
    assert "resumed: from step 40" in output
