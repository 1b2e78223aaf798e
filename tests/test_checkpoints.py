"""Checkpoints (DESIGN.md section 4): a folder per step, written atomically,
verified on load; a torn or corrupt one is skipped for the previous good one.

The crash tests make each filesystem step of a save fail in turn and look at
the folder as the crash left it; one test kills a real writer with SIGKILL.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from optsvc.errors import StateError
from optsvc.training import checkpoints
from optsvc.training.checkpoints import (
    ARRAYS,
    FILES,
    MANIFEST,
    OPTIMIZER,
    STATE,
    list_checkpoints,
    load_checkpoint,
    load_latest_checkpoint,
    save_checkpoint,
    step_name,
)
from optsvc.training.state import EARLY_STOP, MAX_STEPS, TrainState, config_hash

# The data of a checkpoint is a function of (step, version), so that what is
# loaded can be checked against what that step wrote; the SIGKILL test's writer
# runs the same source.
PAYLOAD_SRC = """
import numpy as np

def payload(step, version=0, size=16):
    rng = np.random.default_rng([step, version])
    arrays = {
        "W": rng.standard_normal((size, 4)).astype(np.float32),
        "b": rng.standard_normal(size),
        "ids": rng.integers(-2**40, 2**40, size),
        "mask": rng.integers(0, 256, size, dtype=np.uint8),
        "empty": np.zeros((0, 3), np.float32),
        "step": np.asarray(step, np.int64),
    }
    optimizer = rng.bytes(64) + b"\\x00" + bytes(str(step), "ascii")
    state = {
        "step": step,
        "version": version,
        "rng": {"seed": [step, version], "big": 2**80 + step},
        "loss": float(rng.standard_normal()),
        "data": {"epoch": 0, "position": step * 32, "order": None},
        "config_hash": "0" * 64,
    }
    return arrays, optimizer, state
"""
_namespace: dict = {}
exec(PAYLOAD_SRC, _namespace)
payload = _namespace["payload"]

DEAD = 2**22 + 1  # above any Linux pid_max: a writer that is surely not running


def save(directory, step, version=0, *, keep=3):
    arrays, optimizer, state = payload(step, version)
    return save_checkpoint(
        directory, step, arrays=arrays, optimizer=optimizer, state=state, keep=keep
    )


def assert_arrays_equal(got: dict, expected: dict) -> None:
    # safetensors keeps arrays by name, in little-endian order
    assert sorted(got) == sorted(expected)
    for name, array in expected.items():
        array = array.astype(array.dtype.newbyteorder("<"))
        assert got[name].dtype == array.dtype, name
        assert got[name].shape == array.shape, name
        assert got[name].tobytes() == array.tobytes(), name


def assert_checkpoint(ck, step, version=0) -> None:
    assert ck is not None
    arrays, optimizer, state = payload(step, version)
    assert ck.step == step
    assert ck.state == state
    assert ck.optimizer == optimizer
    assert_arrays_equal(ck.arrays, arrays)


def steps(directory) -> list[int]:
    return [int(p.name[5:]) for p in list_checkpoints(directory)]


def hidden(directory) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.startswith("."))


def load_latest_quietly(directory):
    """load_latest_checkpoint, failing the test on any warning."""
    warnings: list[str] = []
    ck = load_latest_checkpoint(directory, warn=warnings.append)
    assert warnings == []
    return ck


def test_dead_pid_is_not_running():
    assert not checkpoints._is_running(DEAD)
    assert checkpoints._is_running(os.getpid())


# --- round trip, ordering, pruning --------------------------------------------------


def test_round_trip(tmp_path):
    path = save(tmp_path, 7)
    assert path == tmp_path / "step-00000007"
    assert sorted(os.listdir(path)) == sorted([*FILES, MANIFEST])
    assert_checkpoint(load_checkpoint(path), 7)
    assert_checkpoint(load_latest_quietly(tmp_path), 7)
    assert hidden(tmp_path) == []


def test_files_are_plain_formats(tmp_path):
    path = save(tmp_path, 3)
    arrays, optimizer, state = payload(3)
    assert_arrays_equal(safetensors.numpy.load((path / ARRAYS).read_bytes()), arrays)
    assert (path / OPTIMIZER).read_bytes() == optimizer
    assert json.loads((path / STATE).read_text()) == state
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["format"] == "optsvc.checkpoint"
    assert manifest["version"] == 2
    assert manifest["step"] == 3
    assert set(manifest["files"]) == set(FILES)
    for name, entry in manifest["files"].items():
        assert entry["size"] == (path / name).stat().st_size


def test_equal_inputs_give_equal_bytes(tmp_path):
    a, b = save(tmp_path / "a", 5), save(tmp_path / "b", 5)
    for name in [*FILES, MANIFEST]:
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_optimizer_state_round_trips_through_a_checkpoint(tmp_path):
    import optsvc

    opt = optsvc.Adam(0.01)
    w, g = np.ones(4, np.float32), np.full(4, 0.5, np.float32)
    opt((0, "W"), w, g)
    save_checkpoint(tmp_path, 1, arrays={"W": w}, optimizer=opt.to_bytes(), state={})
    ck = load_latest_checkpoint(tmp_path)
    restored = optsvc.Adam(0.01)
    restored.from_bytes(ck.optimizer)
    assert restored.to_bytes() == opt.to_bytes()


def test_steps_are_ordered_numerically_and_other_names_ignored(tmp_path):
    for step in (100, 9, 10_000_000, 123_456_789):  # the last is 9 digits wide
        save(tmp_path, step, keep=None)
    for name in ("step-1", "step-abc", "notes", ".tmp-step-00000005-1", "step-"):
        (tmp_path / name).mkdir()
    assert steps(tmp_path) == [9, 100, 10_000_000, 123_456_789]
    assert_checkpoint(load_latest_quietly(tmp_path), 123_456_789)


def test_no_checkpoints(tmp_path):
    assert list_checkpoints(tmp_path / "missing") == []
    assert load_latest_checkpoint(tmp_path / "missing") is None
    assert load_latest_checkpoint(tmp_path) is None
    (tmp_path / "file").write_text("x")
    with pytest.raises(StateError, match="not a folder"):
        load_latest_checkpoint(tmp_path / "file")
    with pytest.raises(StateError, match="not a folder"):
        save(tmp_path / "file", 1)


@pytest.mark.parametrize("keep", [1, 2, 3, None])
def test_pruning_keeps_the_newest(tmp_path, keep):
    for step in range(1, 7):
        save(tmp_path, step, keep=keep)
    expected = list(range(1, 7))[-keep:] if keep else list(range(1, 7))
    assert steps(tmp_path) == expected
    assert hidden(tmp_path) == []


def test_pruning_counts_only_checkpoints_that_verify(tmp_path):
    for step in range(1, 5):
        save(tmp_path, step, keep=None)
    flip_bit(tmp_path / step_name(4) / OPTIMIZER, 3)
    save(tmp_path, 5, keep=2)
    # 5 and 3 verify; the corrupt 4 between them is not counted (nor deleted).
    assert steps(tmp_path) == [3, 4, 5]
    flip_bit(tmp_path / step_name(5) / ARRAYS, 100)
    warnings: list[str] = []
    assert_checkpoint(load_latest_checkpoint(tmp_path, warn=warnings.append), 3)
    assert len(warnings) == 2


def test_pruning_never_deletes_the_new_checkpoint(tmp_path):
    for step in (10, 11, 12):
        save(tmp_path, step, keep=2)
    save(tmp_path, 5, keep=2)  # e.g. a run resumed from an older checkpoint
    assert steps(tmp_path) == [5, 11, 12]


@pytest.mark.parametrize("keep", [0, -1, True])
def test_keep_must_be_positive(tmp_path, keep):
    with pytest.raises(ValueError, match="keep"):
        save(tmp_path, 1, keep=keep)


def test_saving_a_step_again_replaces_it(tmp_path):
    save(tmp_path, 2)
    save(tmp_path, 3)
    save(tmp_path, 3, version=1)
    assert steps(tmp_path) == [2, 3]
    assert_checkpoint(load_latest_quietly(tmp_path), 3, version=1)
    assert hidden(tmp_path) == []
    # a leftover empty folder of that name is replaced too
    (tmp_path / step_name(4)).mkdir()
    save(tmp_path, 4)
    assert_checkpoint(load_latest_quietly(tmp_path), 4)


BAD_INPUTS = {
    "negative step": (dict(step=-1), "step must be >= 0"),
    "float step": (dict(step=1.0), "step must be an int"),
    "bool step": (dict(step=True), "step must be an int"),
    "arrays list": (dict(arrays=[np.zeros(2)]), "arrays must be a dict"),
    "list array": (dict(arrays={"W": [1.0, 2.0]}), r"arrays\['W'\]: expected a numpy"),
    "object array": (
        dict(arrays={"W": np.array([{}], dtype=object)}),
        r"arrays\['W'\] has dtype object",
    ),
    "complex array": (dict(arrays={"W": np.zeros(2, "c16")}), "complex numbers"),
    "string array": (dict(arrays={"W": np.array(["a"])}), "has dtype <U1"),
    "record array": (dict(arrays={"W": np.zeros(2, "i4,f4")}), "no objects"),
    "empty name": (dict(arrays={"": np.zeros(2)}), "non-empty strings"),
    "int name": (dict(arrays={1: np.zeros(2)}), "non-empty strings"),
    "optimizer str": (dict(optimizer="abc"), "optimizer must be bytes"),
    "optimizer object": (dict(optimizer=object()), "Optimizer.to_bytes"),
    "state list": (dict(state=[1]), "state must be a dict"),
    "state tuple": (dict(state={"rng": {"pos": (1, 2)}}), "state.rng.pos: a tuple"),
    "numpy scalar": (dict(state={"step": np.int64(3)}), "state.step: a int64"),
    "int key": (dict(state={"order": {1: 2}}), "state.order: key 1"),
    "list item": (dict(state={"a": [1, {2}]}), r"state.a\[1\]: a set"),
}


@pytest.mark.parametrize("change,match", BAD_INPUTS.values(), ids=BAD_INPUTS)
def test_bad_inputs_are_clear_errors_and_write_nothing(tmp_path, change, match):
    arrays, optimizer, state = payload(1)
    args = dict(step=1, arrays=arrays, optimizer=optimizer, state=state) | change
    step = args.pop("step")
    with pytest.raises(StateError, match=match):
        save_checkpoint(tmp_path / "ckpt", step, **args)
    assert not (tmp_path / "ckpt").exists()


def test_config_hash():
    a = {"training": {"lr": 0.001, "steps": [1, 2]}, "seed": 0}
    b = {"seed": 0, "training": {"steps": [1, 2], "lr": 0.001}}
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash({**a, "seed": 1})
    assert config_hash(a) == config_hash(a)  # stable: no salt, no id()
    text = "[training]\nseed = 0\n"
    assert config_hash(text) == config_hash(text.encode())
    assert config_hash("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert len(config_hash(a)) == 64
    with pytest.raises(StateError, match="not JSON data"):
        config_hash({"x": object()})
    with pytest.raises(TypeError):
        config_hash(3)


# --- crashes at every step of a save ------------------------------------------------

OPS = ("_mkdir", "_write_file", "_fsync_dir", "_rename", "_remove_tree")


class Crash(Exception):
    pass


class Faults:
    """Wraps the filesystem steps of a save; at call `crash_at` it copies the
    folder as it then is (what a kill -9 there would leave) and raises."""

    def __init__(self, monkeypatch, directory, *, crash_at=None, mode="before"):
        self.directory, self.crash_at, self.mode = directory, crash_at, mode
        self.snapshot = directory.with_name(directory.name + "-at-crash")
        self.calls: list[tuple[str, tuple]] = []
        for name in OPS:
            monkeypatch.setattr(checkpoints, name, self._wrap(name))

    def _wrap(self, name):
        real = getattr(checkpoints, name)

        def op(*args):
            self.calls.append((name, args))
            if len(self.calls) == self.crash_at:
                if self.mode == "during":
                    self._half_done(name, args)
                shutil.copytree(self.directory, self.snapshot, symlinks=True)
                raise Crash(f"crash at {name}{args}")
            return real(*args)

        return op

    @staticmethod
    def _half_done(name, args):
        if name == "_write_file":
            path, data = args
            path.write_bytes(data[: len(data) // 2])
        elif name == "_remove_tree" and args[0].is_dir():
            for path in sorted(args[0].iterdir())[:1]:
                path.unlink()

    def committed(self, final: Path) -> bool:
        """Whether the rename that publishes `final` ran before the crash."""
        done = self.calls[: self.crash_at - 1] if self.crash_at else self.calls
        return any(
            name == "_rename" and args[1] == final and args[0].name.startswith(".tmp-")
            for name, args in done
        )


def copy_as(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst)


def scenario_new(d: Path, scratch: Path):
    """Steps 1-3, plus leftovers of dead writers; save step 4 (prunes step 1)."""
    for step in (1, 2, 3):
        save(d, step)
    partial = d / f".tmp-step-00000004-{DEAD + 1}"
    partial.mkdir()
    (partial / ARRAYS).write_bytes(b"PK\x03")
    copy_as(d / step_name(2), d / f".old-step-00000002-{DEAD + 2}")
    copy_as(d / step_name(1), d / f".del-step-00000001-{DEAD + 3}")
    return 4, 0, (3, 0), (4, 0), [2, 3, 4]


def scenario_replace(d: Path, scratch: Path):
    """Steps 1-3; save step 3 again with other data."""
    for step in (1, 2, 3):
        save(d, step)
    return 3, 1, (3, 0), (3, 1), [1, 2, 3]


def scenario_restore(d: Path, scratch: Path):
    """A writer died mid-replace of step 3 (no step-3 folder, an .old- one);
    save step 4."""
    for step in (1, 2):
        save(d, step)
    copy_as(save(scratch, 3), d / f".old-step-00000003-{DEAD + 1}")
    copy_as(save(scratch, 3, version=1), d / f".tmp-step-00000003-{DEAD + 1}")
    return 4, 0, (3, 0), (4, 0), [2, 3, 4]


SCENARIOS = {
    "new": scenario_new,
    "replace": scenario_replace,
    "restore": scenario_restore,
}


def check_after_crash(directory: Path, expected: tuple[int, int]) -> None:
    ck = load_latest_quietly(directory)
    assert_checkpoint(ck, *expected)
    for path in list_checkpoints(directory):  # no torn step- folder, ever
        load_checkpoint(path)


def check_next_save(directory: Path, step: int) -> None:
    """The next save (by a live process) cleans up what the crash left."""
    save(directory, step)
    assert hidden(directory) == []
    assert_checkpoint(load_latest_quietly(directory), step)
    assert len(list_checkpoints(directory)) <= 3
    for path in list_checkpoints(directory):
        load_checkpoint(path)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_crash_at_every_step_of_a_save(tmp_path, monkeypatch, scenario):
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # speed; not durability

    def attempt(run: Path, crash_at, mode):
        run.mkdir()
        step, version, old, new, after = SCENARIOS[scenario](
            run / "ckpt", run / "scratch"
        )
        with monkeypatch.context() as m:
            m.setattr(os, "getpid", lambda: DEAD)  # the crashed writer is gone
            faults = Faults(m, run / "ckpt", crash_at=crash_at, mode=mode)
            try:
                save(run / "ckpt", step, version)
            except Crash:
                pass
        return faults, step, old, new, after

    faults, step, old, new, after = attempt(tmp_path / "clean", None, "before")
    n_calls = len(faults.calls)
    assert {name for name, _ in faults.calls} >= {"_mkdir", "_write_file", "_rename"}
    assert faults.committed(tmp_path / "clean" / "ckpt" / step_name(step))
    assert_checkpoint(load_latest_quietly(tmp_path / "clean" / "ckpt"), *new)
    assert steps(tmp_path / "clean" / "ckpt") == after
    assert hidden(tmp_path / "clean" / "ckpt") == []
    outcomes = set()

    for k in range(1, n_calls + 1):
        for mode in ("before", "during"):
            op = faults.calls[k - 1][0]
            if mode == "during" and op not in ("_write_file", "_remove_tree"):
                continue
            run = tmp_path / f"{k}-{mode}"
            crashed, step, old, new, _ = attempt(run, k, mode)
            assert crashed.calls[k - 1][0] == op
            committed = crashed.committed(run / "ckpt" / step_name(step))
            expected = new if committed else old
            outcomes.add(committed)
            where = f"crash {mode} call {k}/{n_calls} ({op})"
            for state in ("ckpt-at-crash", "ckpt"):  # killed; or raised, cleaned up
                try:
                    check_after_crash(run / state, expected)
                    check_next_save(run / state, expected[0] + 1)
                except Exception as err:
                    raise AssertionError(f"{where}, {state}: {err!r}") from err
            shutil.rmtree(run)
    assert outcomes == {False, True}


def test_a_crash_mid_replace_is_found_and_repaired(tmp_path):
    """A writer killed between its two renames left no step-3 folder, but the
    old step 3 under .old- and the new one under .tmp-."""
    directory = tmp_path / "ckpt"
    scenario_restore(directory, tmp_path / "scratch")
    assert steps(directory) == [1, 2]
    ck = load_latest_quietly(directory)
    assert_checkpoint(ck, 3)
    assert ck.path.name == f".old-step-00000003-{DEAD + 1}"
    save(directory, 4)
    assert steps(directory) == [2, 3, 4] and hidden(directory) == []
    assert_checkpoint(load_checkpoint(directory / step_name(3)), 3)


def test_a_failed_save_leaves_the_previous_checkpoint_and_no_litter(
    tmp_path, monkeypatch
):
    save(tmp_path, 1)
    save(tmp_path, 2)

    def disk_full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoints, "_write_file", disk_full)
    for step in (2, 3):
        with pytest.raises(OSError, match="No space"):
            save(tmp_path, step, version=1)
        assert hidden(tmp_path) == []
        assert steps(tmp_path) == [1, 2]
        assert_checkpoint(load_latest_quietly(tmp_path), 2)


def test_folders_of_live_writers_are_left_alone(tmp_path):
    live = [
        f".tmp-step-00000009-{os.getpid()}",
        f".tmp-step-00000009-{os.getppid()}",
        f".del-step-00000001-{os.getppid()}",
    ]
    dead = [f".tmp-step-00000009-{DEAD}", f".del-step-00000001-{DEAD}"]
    for name in live + dead:
        (tmp_path / name).mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / ".tmp-step-xyz-1").mkdir()  # not the pattern: not ours to remove
    save(tmp_path, 1)
    assert hidden(tmp_path) == sorted([*live, ".tmp-step-xyz-1"])
    assert (tmp_path / "notes.txt").exists()


# --- corruption ----------------------------------------------------------------------


def flip_bit(path: Path, bit: int) -> None:
    data = bytearray(path.read_bytes())
    data[bit // 8] ^= 1 << (bit % 8)
    path.write_bytes(bytes(data))


def rewrite_manifest(path: Path, change) -> None:
    """Change the manifest and recompute its own checksum, so that only the
    check under test fails."""
    manifest = json.loads((path / MANIFEST).read_bytes())
    change(manifest)
    (path / MANIFEST).write_bytes(checkpoints.manifest_to_bytes(manifest))


@pytest.fixture
def two(tmp_path):
    """A folder with good checkpoints of steps 1 and 2; returns (folder, step 2)."""
    save(tmp_path, 1)
    return tmp_path, save(tmp_path, 2)


def assert_detected(directory: Path, bad: Path, match: str, fallback=1) -> None:
    """`bad` fails with `match`, in one line naming it; loading the latest
    falls back to `fallback` with a warning naming `bad`."""
    with pytest.raises(StateError, match=match) as err:
        load_checkpoint(bad)
    message = str(err.value)
    assert str(bad) in message and "\n" not in message
    warnings: list[str] = []
    ck = load_latest_checkpoint(directory, warn=warnings.append)
    assert_checkpoint(ck, fallback)
    assert len(warnings) == 1 and str(bad) in warnings[0]


@pytest.mark.parametrize("name", [*FILES, MANIFEST])
def test_truncated_files_are_detected(two, name):
    directory, bad = two
    original = (bad / name).read_bytes()
    rng = random.Random(name)
    cuts = {0, 1, len(original) - 1, *rng.sample(range(len(original)), 5)}
    for cut in sorted(cuts):
        (bad / name).write_bytes(original[:cut])
        match = "not valid JSON" if name == MANIFEST else f"{name} is {cut} bytes"
        assert_detected(directory, bad, match)


@pytest.mark.parametrize("name", FILES)
def test_flipped_bits_in_data_files_are_detected(two, name):
    directory, bad = two
    original = (bad / name).read_bytes()
    rng = random.Random(name)
    for bit in {0, len(original) * 8 - 1, *rng.sample(range(len(original) * 8), 8)}:
        (bad / name).write_bytes(original)
        flip_bit(bad / name, bit)
        assert_detected(directory, bad, f"{name} does not match its SHA-256")


def test_every_flipped_bit_in_the_manifest_is_detected(two):
    directory, bad = two
    original = (bad / MANIFEST).read_bytes()
    for bit in range(len(original) * 8):
        flipped = bytearray(original)
        flipped[bit // 8] ^= 1 << (bit % 8)
        (bad / MANIFEST).write_bytes(flipped)
        with pytest.raises(StateError, match=MANIFEST):
            load_checkpoint(bad)
    assert_detected(directory, bad, MANIFEST)


@pytest.mark.parametrize("name", [*FILES, MANIFEST])
def test_deleted_files_are_detected(two, name):
    directory, bad = two
    (bad / name).unlink()
    assert_detected(directory, bad, f"{name} is missing")


def test_empty_folder_named_like_a_checkpoint(two):
    directory, _ = two
    empty = directory / step_name(3)
    empty.mkdir()
    assert_detected(directory, empty, "manifest.json is missing .*unfinished", 2)


def test_file_named_like_a_checkpoint(two):
    directory, _ = two
    (directory / step_name(3)).write_bytes(b"")
    assert_detected(directory, directory / step_name(3), "not a folder", 2)


GARBAGE = {
    "random bytes": (os.urandom(200), "not valid JSON"),
    "not utf-8": (b'{"format": "\xff"}', "not valid JSON"),
    "deep nesting": (b"[" * 100_000, "not valid JSON"),
    "a list": (b"[1, 2]", "not a checkpoint manifest"),
    "empty object": (b"{}", "not a checkpoint manifest"),
    "other format": (b'{"format": "optsvc.optimizer"}', "not a checkpoint manifest"),
}


@pytest.mark.parametrize("data,match", GARBAGE.values(), ids=GARBAGE)
def test_garbage_manifest(two, data, match):
    directory, bad = two
    (bad / MANIFEST).write_bytes(data)
    assert_detected(directory, bad, match)


def test_manifest_that_is_a_folder(two):
    directory, bad = two
    (bad / MANIFEST).unlink()
    (bad / MANIFEST).mkdir()
    assert_detected(directory, bad, "cannot read manifest.json")


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def change(manifest):
        target = manifest
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return change


CHANGES = {
    "other version": (_set("version", 3), "version 3; this optsvc reads version 2"),
    "version true": (_set("version", True), "version True"),
    "no files": (lambda m: m.pop("files"), "malformed: has no 'files'"),
    "extra key": (_set("extra", 1), "malformed: has an unexpected 'extra'"),
    "file missing": (lambda m: m["files"].pop(STATE), "malformed: 'files'"),
    "bad size": (_set("files", ARRAYS, "size", "12"), "malformed: has a bad 'files"),
    "bad hash": (_set("files", ARRAYS, "sha256", "00"), "malformed: has a bad 'files"),
    "step -1": (_set("step", -1), "malformed: has 'step' = -1 out of range"),
    "wrong step": (_set("step", 7), "for step 7, but the folder is named for step 2"),
    "size +1": (
        lambda m: m["files"][ARRAYS].update(size=m["files"][ARRAYS]["size"] + 1),
        r"arrays.safetensors is \d+ bytes, but manifest.json says \d+ \(truncated\)",
    ),
    "size -1": (
        lambda m: m["files"][OPTIMIZER].update(size=m["files"][OPTIMIZER]["size"] - 1),
        r"optimizer.safetensors is \d+ bytes, but manifest.json says \d+$",
    ),
    "other sha": (
        _set("files", STATE, "sha256", "a" * 64),
        "state.json does not match its SHA-256",
    ),
}


@pytest.mark.parametrize("change,match", CHANGES.values(), ids=CHANGES)
def test_manifest_with_a_consistent_checksum_but_wrong_content(two, change, match):
    directory, bad = two
    rewrite_manifest(bad, change)
    assert_detected(directory, bad, match)


def test_manifest_checksum_is_checked(two):
    directory, bad = two
    manifest = json.loads((bad / MANIFEST).read_bytes())
    manifest["files"][ARRAYS]["size"] += 1
    (bad / MANIFEST).write_text(json.dumps(manifest))
    assert_detected(directory, bad, "own checksum does not match")


def test_valid_files_with_bad_contents_are_refused(two):
    """Contents that hash right but do not parse: bytes that are no
    safetensors, a JSON list as state."""
    directory, bad = two
    (bad / ARRAYS).write_bytes(b"not safetensors")
    rewrite_manifest(
        bad, lambda m: m["files"].update({ARRAYS: file_entry(bad, ARRAYS)})
    )
    assert_detected(directory, bad, "arrays.safetensors is not readable")
    shutil.rmtree(bad)
    bad = save(directory, 2)
    (bad / STATE).write_bytes(b"[1, 2]")
    rewrite_manifest(bad, lambda m: m["files"].update({STATE: file_entry(bad, STATE)}))
    assert_detected(directory, bad, "state.json does not hold a JSON object")


def file_entry(path: Path, name: str) -> dict:
    import hashlib

    data = (path / name).read_bytes()
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_all_bad_is_an_error(two):
    directory, bad = two
    (bad / MANIFEST).unlink()
    flip_bit(directory / step_name(1) / ARRAYS, 1000)
    warnings: list[str] = []
    with pytest.raises(StateError, match="none of its 2 checkpoints verifies"):
        load_latest_checkpoint(directory, warn=warnings.append)
    assert len(warnings) == 2
    assert "step-00000002" in warnings[0] and "step-00000001" in warnings[1]


def test_warnings_go_to_the_optsvc_logger_by_default(two, caplog):
    directory, bad = two
    (bad / OPTIMIZER).write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="optsvc"):
        assert_checkpoint(load_latest_checkpoint(directory), 1)
    [record] = caplog.records
    assert record.name == "optsvc" and str(bad) in record.getMessage()


# --- no pickle -------------------------------------------------------------------


class Payload:
    """Unpickling this creates the file `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_the_planted_payload_is_live(tmp_path):
    buf = io.BytesIO()
    np.savez(buf, evil=np.array([Payload(tmp_path / "ran")], dtype=object))
    np.load(io.BytesIO(buf.getvalue()), allow_pickle=True)["evil"]
    assert (tmp_path / "ran").exists()


@pytest.mark.parametrize("member", ["evil", "W"])
def test_a_planted_pickle_is_refused_without_running_it(two, member):
    directory, bad = two
    marker = directory / "ran"
    arrays = dict(payload(2)[0])
    arrays[member] = np.array([Payload(marker), 1], dtype=object)
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=True, **arrays)
    (bad / ARRAYS).write_bytes(buf.getvalue())
    rewrite_manifest(
        bad, lambda m: m["files"].update({ARRAYS: file_entry(bad, ARRAYS)})
    )
    assert_detected(directory, bad, "arrays.safetensors is not readable")
    assert not marker.exists()


# --- a real kill -9 ------------------------------------------------------------------

WRITER = f"""
import itertools, sys
from optsvc.training.checkpoints import load_latest_checkpoint, save_checkpoint
{PAYLOAD_SRC}
directory = sys.argv[1]
latest = load_latest_checkpoint(directory)
# A resumed run saves its starting step again: the replace path is exercised too.
for step in itertools.count(latest.step if latest else 1):
    arrays, optimizer, state = payload(step, size=200_000)  # about 6.6 MB
    save_checkpoint(
        directory, step, arrays=arrays, optimizer=optimizer, state=state, keep=2
    )
    print(step, flush=True)
"""


@pytest.mark.slow
def test_sigkill_at_random_moments(tmp_path):
    rng = random.Random(20240611)
    directory = tmp_path / "ckpt"
    for kill in range(5):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(directory)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            # At least one save completes, so each writer has cleaned up after
            # the one killed before it.
            ready, _, _ = select.select([proc.stdout], [], [], 60)
            assert ready and proc.stdout.readline(), "the writer did not start"
            time.sleep(rng.uniform(0.0, 0.3))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
        ck = load_latest_quietly(directory)
        arrays, optimizer, state = payload(ck.step, size=200_000)
        assert ck.state == state and ck.optimizer == optimizer, f"kill {kill}"
        assert_arrays_equal(ck.arrays, arrays)
        for path in list_checkpoints(directory):
            load_checkpoint(path)
        assert all(name.endswith(f"-{proc.pid}") for name in hidden(directory))


# --- any arrays ------------------------------------------------------------------

DTYPES = st.sampled_from(["float32", "float64", "int64", "uint8", ">f8", "<i4", "?"])
ARRAY = DTYPES.flatmap(
    lambda dtype: hnp.arrays(
        dtype, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
    )
)
NAMES = st.text(min_size=1, max_size=12).filter(lambda s: "\x00" not in s)


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(arrays=st.dictionaries(NAMES, ARRAY, max_size=5), fortran=st.booleans())
def test_any_arrays_round_trip(tmp_path_factory, arrays, fortran):
    if fortran:
        arrays = {k: np.asfortranarray(v) for k, v in arrays.items()}
    directory = tmp_path_factory.mktemp("ckpt")
    with pytest.MonkeyPatch.context() as m:
        m.setattr(os, "fsync", lambda fd: None)  # speed; not durability
        path = save_checkpoint(directory, 0, arrays=arrays, optimizer=b"", state={})
    assert_arrays_equal(load_checkpoint(path).arrays, arrays)


# --- the training state each checkpoint records (optsvc.training.state) --------------


def a_state() -> TrainState:
    """A state with every field away from its default."""
    state = TrainState.start(n_train=10, seed=3)
    state.order = state.rng.permutation(10)
    state.step, state.epoch, state.cursor = 17, 2, 4
    state.loss_sum, state.loss_count, state.skipped_steps = 3.25, 7, 1
    state.score, state.best_score, state.evals_since_best = 0.5, 0.75, 1
    state.stopped = EARLY_STOP
    state.config, state.max_steps = {"training": {"patience": 2}}, 400
    state.backend = "cupy"
    state.best = {"w:0/W": np.ones((2, 3), np.float32), "step": np.asarray(10),
                  "score": np.asarray(0.75)}  # fmt: skip
    return state


def saved_state(directory, state: TrainState, edit=None, edit_arrays=None):
    """`state` written into a checkpoint (state.json changed by `edit`, the
    arrays by `edit_arrays`: checksums still valid) and loaded back."""
    record, arrays = state.to_checkpoint()
    if edit is not None:
        edit(record)
    if edit_arrays is not None:
        edit_arrays(arrays)
    path = save_checkpoint(
        directory, state.step, arrays=arrays, optimizer=b"", state=record, keep=None
    )
    return load_checkpoint(path)


def test_the_training_state_round_trips_through_a_checkpoint(tmp_path):
    state = a_state()
    back = TrainState.from_checkpoint(saved_state(tmp_path, state))
    for field in dataclasses.fields(TrainState):
        if field.name not in ("order", "rng", "best"):
            assert getattr(back, field.name) == getattr(state, field.name), field.name
    assert back.best.keys() == state.best.keys()
    for name, array in state.best.items():
        assert back.best[name].dtype == array.dtype
        assert back.best[name].tobytes() == array.tobytes()
    assert back.order.dtype == state.order.dtype
    assert back.order.tobytes() == state.order.tobytes()
    # the generator goes on exactly where it was
    assert back.rng.permutation(10).tolist() == state.rng.permutation(10).tolist()


def test_every_field_of_the_state_is_written():
    record, arrays = a_state().to_checkpoint()
    fields = {field.name for field in dataclasses.fields(TrainState)}
    assert fields - {"order", "best"} <= set(record)
    assert set(arrays) == {"data_order", "best:w:0/W", "best:step", "best:score"}
    json.dumps(record, allow_nan=False)  # plain, finite JSON data


def _set(key, value):
    return lambda record: record.__setitem__(key, value)


BAD_STATES = {
    "no step": (lambda r: r.pop("step"), None, "has no 'step'"),
    "bool epoch": (_set("epoch", True), None, "bad 'epoch' (True)"),
    "float cursor": (_set("cursor", 1.0), None, "bad 'cursor' (1.0)"),
    "negative count": (_set("loss_count", -1), None, "'loss_count' = -1 out of"),
    "huge step": (_set("step", 10**30), None, "'step' = 1e+30 out of range"),
    "another step": (_set("step", 16), None, "is for step 16, the checkpoint for 17"),
    "cursor past the data": (_set("cursor", 11), None, "data position 11 past"),
    "NaN loss": (_set("loss_sum", float("nan")), None, "'loss_sum' = NaN"),
    "text score": (_set("score", "high"), None, "bad 'score' ('high')"),
    "stop reason": (_set("stopped", "tired"), None, "bad 'stopped' ('tired')"),
    "config": (_set("config", [1]), None, "bad 'config'"),
    "empty rng": (_set("rng", {}), None, "malformed random generator state"),
    "other rng": (
        lambda r: r["rng"].__setitem__("bit_generator", "MT19937"),
        None,
        "malformed random generator state",
    ),
    "huge rng": (
        lambda r: r["rng"]["state"].__setitem__("state", 2**200),
        None,
        "malformed random generator state",
    ),
    "no order": (None, lambda a: a.pop("data_order"), "has no array 'data_order'"),
    "repeated order": (
        None,
        lambda a: a.__setitem__("data_order", np.zeros(10, np.int64)),
        "'data_order' that is not an ordering",
    ),
    "float order": (
        None,
        lambda a: a.__setitem__("data_order", np.arange(10.0)),
        "'data_order' that is not an ordering",
    ),
    "best of another score": (
        None,
        lambda a: a.__setitem__("best:score", np.asarray(0.5)),
        "best weights of another score than its best (0.75)",
    ),
    "best from a later step": (
        None,
        lambda a: a.__setitem__("best:step", np.asarray(18)),
        "best weights of step 18, after step 17",
    ),
    "best without its step": (
        None,
        lambda a: a.pop("best:step"),
        "best weights without their step and score",
    ),
    "best with a whole-number score": (
        None,
        lambda a: a.__setitem__("best:score", np.asarray(1)),
        "best weights without their step and score",
    ),
    "best without a best score": (
        _set("best_score", None),
        None,
        "best weights of another score than its best (None)",
    ),
}


@pytest.mark.parametrize(
    "edit, edit_arrays, match", BAD_STATES.values(), ids=BAD_STATES
)
def test_a_state_no_run_writes_is_refused_naming_the_value(
    tmp_path, edit, edit_arrays, match
):
    checkpoint = saved_state(tmp_path, a_state(), edit, edit_arrays)
    with pytest.raises(StateError) as info:
        TrainState.from_checkpoint(checkpoint)
    assert str(info.value).startswith(f"{checkpoint.path}: state.json ")
    assert match in str(info.value)


def test_the_fields_that_have_defaults_may_be_left_out(tmp_path):
    def drop(record):
        for key in ("stopped", "config", "max_steps", "backend", "optsvc"):
            del record[key]
        del record["config_hash"]

    state = TrainState.from_checkpoint(saved_state(tmp_path, a_state(), drop))
    assert state.stopped is state.config is state.max_steps is None


def test_when_a_run_has_ended():
    state = TrainState.start(n_train=10, seed=0)
    assert state.ended_by(max_steps=100, patience=0) is None
    state.step = 100
    assert state.ended_by(max_steps=100, patience=0) == MAX_STEPS
    assert state.ended_by(max_steps=200, patience=0) is None  # --extend
    # a checkpoint from before the reason was recorded: the count tells
    state.evals_since_best = 2
    assert state.ended_by(max_steps=200, patience=2) == EARLY_STOP
    assert state.ended_by(max_steps=200, patience=3) is None
    # early stopping is final, whatever max_steps says now
    state.stopped, state.evals_since_best = EARLY_STOP, 0
    assert state.ended_by(max_steps=200, patience=2) == EARLY_STOP
