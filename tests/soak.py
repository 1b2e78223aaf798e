"""The reliability soak (issue 6): a crash campaign and fuzzing, with figures.

    python tests/soak.py --kills 50 --fuzz 10000 [--seed N] [--json out.json]

What it does, each part a function that `tests/test_reliability.py` calls
with small counts (`make test`) and `make soak` with large ones:

- `crash_campaign`: training runs (`optsvc train` in subprocesses) SIGKILLed
  at random moments: after a random delay (start-up, training, writing
  final.safetensors), or the moment a checkpoint's temporary folder appears
  (mid-write). While a run holds its folder, a second lock on it must be
  refused; after each kill every `step-*` checkpoint must verify; then
  `--resume` (the killed run's lock is stale) continues to the end, and the
  run must equal an uninterrupted one bit for bit: every array of final.safetensors
  and every metrics.jsonl row (timings aside).
- `corruption_campaign`: each file of a checkpoint truncated at a random
  offset, bit-flipped, deleted; leftover temporary folders; two or all
  checkpoints bad; planted pickles; arrays of the wrong shape or dtype and
  other checksum-valid lies (NaN weights, optimizer state of the other kind
  or with bad counts, broken RNG state, counters out of range). Each
  must be detected: the previous good checkpoint used with a warning (and
  the run still ends bit-identical), or one clear error when none is left.
- `files_campaign`: a damaged metrics.jsonl line (flipped high bit, deep
  nesting, garbage) dropped on resume; a FIFO or /dev/zero given to
  `validate` and `show-schedule --scores` refused at once; a checkpoint file
  that is a FIFO, /dev/zero or far larger than its manifest says skipped
  without being read; RUN/.lock deleted under a training run, and a second
  lock still refused.
- `config_fuzz`: generated config files (mutated examples, random sections,
  keys and values, huge and tiny numbers, NaN, unicode, long values, deep
  nesting, binary garbage, empty files) and overrides through `optsvc
  validate` in process (and a share in subprocesses), and a share of those
  that validate through `optsvc train` with tiny max_steps: exit 0 or 1
  with a clear message, never a traceback or a hang; a run that finishes
  holds only finite numbers.
- `cli_fuzz`: random argument lists for `optsvc` (subcommands, options with
  and without values, bad types, dotted overrides): exit 0, 1, or 2 with a
  usage message, never a traceback.
- `optimizer_fuzz`: the optimizer API with random keys, shapes, dtypes,
  non-arrays, views, NaN, lr_scale: success, or ValueError/TypeError naming
  the key or argument with the optimizer's state left exactly as it was.

Tracebacks, "internal error" lines and hangs (per-case time limits) are
counted and must be 0. Exit status 0 when every promise held, else 1.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy

from optsvc.fileio import encode_arrays

ROOT = Path(__file__).resolve().parents[1]
OPTSVC = [sys.executable, "-m", "optsvc_cli.main"]
QUICKSTART = ROOT / "configs" / "quickstart.cfg"
EXAMPLES = sorted((ROOT / "configs").glob("*.cfg"))
CHECKPOINT_FILES = (
    "arrays.safetensors",
    "optimizer.safetensors",
    "state.json",
    "manifest.json",
)

# Time limits: a case that runs longer is a hang.
VALIDATE_LIMIT = 20.0
TRAIN_LIMIT = 90.0
CLI_LIMIT = 60.0
SUBPROCESS_LIMIT = 180.0
# Fuzzed jobs larger than this run in a subprocess with a memory limit.
SUBPROCESS_MEMORY = 4 << 30


class Hang(BaseException):
    """Raised by the alarm in a case that ran past its time limit (a
    BaseException, so that no `except Exception` in optsvc swallows it)."""


@dataclass
class Figures:
    """What the soak counted, and every broken promise (with its case)."""

    counts: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def add(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def fail(self, kind: str, message: str) -> None:
        self.counts[f"failed: {kind}"] += 1
        if len(self.failures) < 500:
            self.failures.append(f"[{kind}] {message}"[:4000])

    @property
    def ok(self) -> bool:
        return not self.failures and not any(
            self.counts[k] for k in ("tracebacks", "internal errors", "hangs")
        )

    def as_dict(self) -> dict:
        return {
            "ok": self.ok,
            "seconds": round(time.monotonic() - self.started, 1),
            "counts": dict(sorted(self.counts.items())),
            "failures": self.failures,
        }


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise `Hang` in the main thread after `seconds` (SIGALRM)."""

    def expired(signum, frame):
        raise Hang(f"no answer after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def quiet_console():
    from rich.console import Console

    return Console(file=io.StringIO(), width=200, soft_wrap=True)


def cli_runner():
    from typer.testing import CliRunner

    return CliRunner()


def cli_app():
    from optsvc_cli.main import app

    return app


def check_output(
    fig: Figures, what: str, case: str, code: int, out: str, err: str, *, codes
) -> bool:
    """The promises every command keeps: an expected exit code, no traceback,
    no "internal error", and a clear "✘" line for an error. False if broken."""
    text = out + err
    if "Traceback (most recent call last)" in text:
        fig.add("tracebacks")
        fig.fail(what, f"a traceback; {case}\n{text[-1500:]}")
        return False
    if "internal error" in text:
        fig.add("internal errors")
        fig.fail(what, f"an internal error; {case}\n{text[-1500:]}")
        return False
    if code not in codes:
        fig.fail(what, f"exit {code}, expected one of {codes}; {case}\n{text[-1500:]}")
        return False
    if code == 1 and "✘" not in err:
        fig.fail(what, f"exit 1 without a '✘' message on stderr; {case}\n{text[-800:]}")
        return False
    if code == 2 and "Usage:" not in text and "Error:" not in text:
        fig.fail(what, f"exit 2 without a usage message; {case}\n{text[-800:]}")
        return False
    return True


def invoke(args: list[str], limit: float) -> tuple[int, str, str, Any]:
    """`optsvc ARGS` in process, under a time limit; raises Hang."""
    runner = cli_runner()
    with time_limit(limit):
        result = runner.invoke(cli_app(), [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr, result


def run_subprocess(args, *, limit=SUBPROCESS_LIMIT, cwd=None, memory=None):
    """`optsvc ARGS` in a subprocess: (code, stdout, stderr), code None on a hang."""

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    args = [str(a).replace("\x00", "") for a in args]  # no NUL in a command line
    try:
        done = subprocess.run(
            [*OPTSVC, *args],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=limit,
            cwd=cwd,
            preexec_fn=limit_memory if memory else None,
        )
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode(errors="replace") if err.stdout else ""
        return None, out, ""
    return done.returncode, done.stdout, done.stderr


def in_process_result(fig: Figures, what: str, case: str, result) -> bool:
    """CliRunner caught an exception other than SystemExit: a crash."""
    exc = result.exception
    if exc is not None and not isinstance(exc, SystemExit):
        fig.add("tracebacks")
        trace = "".join(traceback.format_exception(exc))
        fig.fail(what, f"uncaught {type(exc).__name__}; {case}\n{trace[-2000:]}")
        return False
    return True


# --- the training jobs ---


def _set(cfg: dict, dotted: str, value: Any) -> None:
    *sections, key = dotted.split(".")
    node = cfg
    for section in sections:
        node = node.setdefault(section, {})
    if value is None:
        node.pop(key, None)
    else:
        node[key] = value


SMALL = {
    "data.n_samples": 600,
    "training.max_steps": 400,
    "training.eval_frequency": 50,
    "training.checkpoint_frequency": 40,  # not a multiple of eval_frequency
    "training.keep_checkpoints": 3,
}
JOBS: dict[str, dict[str, Any]] = {
    # Adam with averages, plateau around warmup_cosine: schedule state in the
    # checkpoints; a 2x64 MLP (checkpoints of ~70 kB take a moment to write)
    "adam-plateau": {
        **SMALL,
        "model.hidden_width": 64,
        "optimizer.learn_rate": {
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
    },
    # Adam that stops early (patience 2) at an evaluation between two
    # checkpoints: where it stopped is part of what a resume must restore
    "early-stop": {
        **SMALL,
        "training.patience": 2,
        "training.eval_frequency": 10,
        "training.checkpoint_frequency": 7,
    },
    # SGD without averages on blobs, a decaying L2, a tanh MLP
    "sgd-blobs": {
        **SMALL,
        "training.max_steps": 320,
        "training.eval_frequency": 40,
        "data": {
            "@datasets": "blobs.v1",
            "n_samples": 600,
            "n_features": 4,
            "n_classes": 4,
            "spread": 2.0,
            "dev_fraction": 0.2,
            "seed": 3,
        },
        "model.hidden_width": 48,
        "model.activation": "tanh",
        "optimizer": {
            "@optimizers": "SGD.v1",
            "grad_clip": 1.0,
            "use_averages": False,
            "learn_rate": {
                "@schedules": "decaying.v1",
                "base_rate": 0.5,
                "decay": 0.001,
            },
            "L2": {"@schedules": "decaying.v1", "base_rate": 1e-4, "decay": 0.01},
        },
    },  # fmt: skip
    # RAdam on regression, nonfinite = "skip", two checkpoints kept
    "radam-regression": {
        **SMALL,
        "training.max_steps": 300,
        "training.eval_frequency": 40,
        "training.keep_checkpoints": 2,
        "training.nonfinite": "skip",
        "data": {
            "@datasets": "regression.v1",
            "n_samples": 600,
            "n_features": 6,
            "n_outputs": 2,
            "noise": 0.1,
            "seed": 1,
        },
        "model.hidden_width": 32,
        "model.depth": 1,
        "optimizer": {
            "@optimizers": "RAdam.v1",
            "learn_rate": 0.01,
            "weight_decay": 0.0001,
            "use_averages": True,
        },
    },  # fmt: skip
}


def job_text(name: str) -> str:
    """quickstart.cfg made small and varied (uninterpolated, so that
    `${training.max_steps}` stays a reference)."""
    from confection import Config

    cfg = Config().from_str(QUICKSTART.read_text(), interpolate=False)
    for dotted, value in JOBS[name].items():
        _set(cfg, dotted, value)
    return cfg.to_str()


@dataclass
class Job:
    name: str
    config: Path
    reference: Path
    seconds: float  # how long an uninterrupted `optsvc train` takes, about


_STARTUP: list[float] = []


def startup_seconds() -> float:
    """How long `optsvc` takes to start here (measured once)."""
    if not _STARTUP:
        t = time.perf_counter()
        subprocess.run([*OPTSVC, "--version"], capture_output=True, timeout=120)
        _STARTUP.append(time.perf_counter() - t)
    return _STARTUP[0]


def prepare_jobs(work: Path, names=None) -> dict[str, Job]:
    """Write each job's config and run it once, uninterrupted, in process:
    the reference every resumed run is compared with."""
    from optsvc.config.parse import load_config
    from optsvc.training.loop import train

    jobs = {}
    folder = work / "jobs"
    folder.mkdir(parents=True, exist_ok=True)
    for name in names or JOBS:
        path = folder / f"{name}.cfg"
        path.write_text(job_text(name))
        reference = folder / f"{name}-reference"
        t = time.perf_counter()
        train(load_config(path), reference, overwrite=True, console=quiet_console())
        took = time.perf_counter() - t
        jobs[name] = Job(name, path, reference, startup_seconds() + 1.5 * took + 0.2)
    return jobs


def final_arrays(run: Path, name: str = "final.safetensors") -> dict[str, np.ndarray]:
    return safetensors.numpy.load((run / name).read_bytes())


def metric_rows(run: Path) -> list[dict]:
    rows = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        row.pop("steps_per_sec", None)  # the timing: all else must repeat
        rows.append(row)
    return rows


def run_difference(run: Path, reference: Path) -> str | None:
    """How `run` differs from `reference` (final.safetensors and
    best.safetensors bit for bit, the metrics rows), or None when it does not."""
    for file in ("final.safetensors", "best.safetensors"):
        difference = weights_difference(run, reference, file)
        if difference:
            return difference
    rows, expected = metric_rows(run), metric_rows(reference)
    if rows != expected:
        steps = [r.get("step") for r in rows]
        return (
            f"metrics.jsonl differs: steps {steps} vs {[r['step'] for r in expected]}"
        )
    return None


def weights_difference(run: Path, reference: Path, file: str) -> str | None:
    try:
        got, want = final_arrays(run, file), final_arrays(reference, file)
    except (OSError, ValueError) as err:
        return f"{file} unreadable: {err}"
    if sorted(got) != sorted(want):
        return f"{file} holds {sorted(got)}, expected {sorted(want)}"
    for name, array in want.items():
        other = got[name]
        if other.dtype != array.dtype or other.shape != array.shape:
            return f"{file} {name}: {other.dtype}{other.shape} vs {array.dtype}"
        if other.tobytes() != array.tobytes():
            return f"{file} {name} differs from the uninterrupted run's"
    return None


def checkpoint_problems(run: Path) -> list[str]:
    """Every `step-*` folder must verify and hold only finite numbers."""
    from optsvc.training.checkpoints import (
        StateError,
        list_checkpoints,
        load_checkpoint,
    )

    problems = []
    for path in list_checkpoints(run / "checkpoints"):
        try:
            ck = load_checkpoint(path)
        except StateError as err:
            problems.append(f"torn checkpoint under a real name: {err}")
            continue
        for name, array in ck.arrays.items():
            if array.dtype.kind in "fc" and not np.isfinite(array).all():
                problems.append(f"{path.name}: {name} holds NaN or inf")
    return problems


# --- 1. the crash campaign ---


def _kill_once(
    job: Job, run: Path, mode: str, rng: random.Random, fig: Figures, probe: float
):
    """Start `optsvc train JOB -o RUN [--resume]` and SIGKILL it (mode "delay":
    after a random delay; "checkpoint": when the n-th checkpoint's temporary
    folder appears; "final" or "best": when final.safetensors's or best.safetensors's
    temporary file appears).
    Returns "killed", "finished" or "failed"."""
    # --resume where a run has left something; a run killed before it made
    # its folder has nothing to resume, and optsvc says so: start it afresh
    started = run.is_dir() and any(run.iterdir())
    args = ["train", job.config, "-o", run, *(["--resume"] if started else [])]
    proc = subprocess.Popen(
        [*OPTSVC, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    what = mode
    try:
        if mode == "delay":  # mostly once started; a share during start-up
            start = startup_seconds() * 0.8
            if rng.random() < 0.2:
                time.sleep(rng.uniform(0.0, start))
            else:
                time.sleep(rng.uniform(start, job.seconds))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        else:
            nth = rng.randint(1, 4)
            seen: set[str] = set()
            deadline = time.monotonic() + SUBPROCESS_LIMIT
            ckpt = run / "checkpoints"
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    names = os.listdir(ckpt if mode == "checkpoint" else run)
                except FileNotFoundError:
                    names = []
                prefix = {"checkpoint": ".tmp-step-",
                          "final": ".final.safetensors.tmp-",
                          "best": ".best.safetensors.tmp-"}[mode]  # fmt: skip
                new = [n for n in names if n.startswith(prefix) and n not in seen]
                seen.update(new)
                if new and (len(seen) >= nth or mode == "final"):
                    if rng.random() < probe:
                        _probe_lock(run, proc.pid, fig)
                    proc.send_signal(signal.SIGKILL)
                    what = f"{mode} ({new[0]})"
                    break
                time.sleep(0.0005)
        out, _ = proc.communicate(timeout=SUBPROCESS_LIMIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        fig.add("hangs")
        fig.fail("crash", f"{job.name}: optsvc train did not finish ({what})")
        return "failed"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    case = f"{job.name}, {what}"
    if proc.returncode == -signal.SIGKILL:
        fig.add("runs killed")
        fig.add(f"runs killed: {mode}")
        mine = f"-{proc.pid}"
        leftover = [
            n
            for n in _listdir(run / "checkpoints")
            if n.startswith(".tmp-") and n.endswith(mine)
        ]
        if leftover:
            fig.add("runs killed mid-checkpoint (temporary folder left)")
        for problem in checkpoint_problems(run):
            fig.fail("crash", f"{case}: {problem}")
        return "killed"
    if not check_output(fig, "crash", case, proc.returncode, out, "", codes=(0,)):
        return "failed"
    return "finished"


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _probe_lock(run: Path, pid: int, fig: Figures) -> None:
    """While `pid` trains in `run`, a second train must be refused."""
    from optsvc.errors import RunError
    from optsvc.training.lock import RunLock

    try:
        lock = RunLock(run)
    except RunError as err:
        if f"pid {pid}" in str(err) and "another optsvc train" in str(err):
            fig.add("second trains refused by the lock")
        else:
            fig.fail("lock", f"unclear refusal: {err}")
        return
    lock.release()  # it had just finished


def crash_campaign(
    jobs: dict[str, Job],
    kills: int,
    rng: random.Random,
    work: Path,
    fig: Figures,
    *,
    modes: list[str] | None = None,
    lock_probes: float = 0.5,
) -> None:
    """SIGKILL `kills` training runs at random moments, resume each to the
    end, and compare with the uninterrupted reference. `modes`: the kill
    modes to take in turn (default: drawn at random); `lock_probes`: the
    share of mid-checkpoint kills preceded by a second lock on the folder."""
    folder = work / "crash"
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(jobs)
    attempts, n = 0, 0
    while fig.counts["runs killed"] < kills and attempts < 4 * kills + 10:
        job = jobs[names[n % len(names)]]
        run = folder / f"run-{n:04d}"
        n += 1
        for _ in range(rng.choice((1, 1, 2, 3))):
            if fig.counts["runs killed"] >= kills:
                break
            attempts += 1
            if modes:
                mode = modes[(attempts - 1) % len(modes)]
            else:
                mode = rng.choices(
                    ("delay", "checkpoint", "best", "final"), (5, 4, 1, 1)
                )[0]
            outcome = _kill_once(job, run, mode, rng, fig, lock_probes)
            if outcome == "failed":
                break
        started = run.is_dir() and any(run.iterdir())  # else nothing to resume
        final = ["train", job.config, "-o", run, *(["--resume"] if started else [])]
        code, out, err = run_subprocess(final)
        if code is None:
            fig.add("hangs")
            fig.fail("crash", f"{job.name}: the final --resume did not finish")
            continue
        if not check_output(fig, "crash", f"{job.name} resume", code, out, err,
                            codes=(0,)):  # fmt: skip
            continue
        fig.add("runs resumed to the end")
        difference = run_difference(run, job.reference)
        if difference:
            fig.fail("crash", f"{job.name} ({run.name}): {difference}")
        else:
            fig.add("resumes bit-identical")
        hidden = [n for n in _listdir(run / "checkpoints") if n.startswith(".tmp-")]
        if hidden:
            fig.fail("crash", f"{run.name}: temporary folders left: {hidden}")
        shutil.rmtree(run, ignore_errors=True)
        if n % 5 == 0:
            log(f"  crash campaign: {fig.counts['runs killed']} kills so far")


# --- 2. corrupt checkpoints ---


class Payload:
    """Unpickling this creates the file `marker`: the code a pickle could run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _damage(path: Path, how: str, rng: random.Random) -> str:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        cut = rng.randrange(len(data)) if data else 0
        path.write_bytes(bytes(data[:cut]))
        return f"{path.name} truncated at {cut} of {len(data)}"
    if how == "flip":
        i, bit = rng.randrange(len(data)), rng.randrange(8)
        data[i] ^= 1 << bit
        path.write_bytes(bytes(data))
        return f"{path.name} bit {bit} of byte {i} flipped"
    path.unlink()
    return f"{path.name} deleted"


def rewrite_manifest(folder: Path) -> None:
    """Recompute a checkpoint's manifest for its present files: only the
    check under test (pickle, shape, dtype) can fail then."""
    import hashlib

    from optsvc.training.checkpoints import manifest_to_bytes

    manifest = json.loads((folder / "manifest.json").read_text())
    for name in manifest["files"]:
        data = (folder / name).read_bytes()
        manifest["files"][name] = {
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    (folder / "manifest.json").write_bytes(manifest_to_bytes(manifest))


def _replace_arrays(folder: Path, change) -> None:
    """The checkpoint's arrays changed by `change`; with an object array
    planted, an .npz that holds a pickle in their place."""
    arrays = safetensors.numpy.load((folder / "arrays.safetensors").read_bytes())
    change(arrays)
    if any(a.dtype.hasobject for a in arrays.values()):
        buf = io.BytesIO()
        np.savez(buf, allow_pickle=True, **arrays)
        data = buf.getvalue()
    else:
        data = encode_arrays(arrays)
    (folder / "arrays.safetensors").write_bytes(data)
    rewrite_manifest(folder)


SIMPLE = [
    (how, name) for name in CHECKPOINT_FILES for how in ("truncate", "flip", "delete")
]
SPECIAL = ["two-bad", "none-left", "tmp-leftover", "tmp-leftover-finished",
           "old-leftover", "pickle-arrays", "pickle-optimizer", "shape-mismatch",
           "dtype-mismatch", "missing-weights", "nan-weights", "optimizer-lie",
           "state-lie", "best-score-lie", "best-shape-lie"]  # fmt: skip
CORRUPTIONS = [*SIMPLE, *SPECIAL]


def corruption_campaign(
    job: Job, n: int, rng: random.Random, work: Path, fig: Figures
) -> None:
    """Damage copies of the finished reference run (checkpoints at its last
    three checkpoint steps) `n` times, cycling through CORRUPTIONS, and
    resume each with `optsvc train --resume` (in process)."""
    from optsvc.training.checkpoints import list_checkpoints

    folder = work / "corrupt"
    folder.mkdir(parents=True, exist_ok=True)
    steps = [p.name for p in list_checkpoints(job.reference / "checkpoints")]
    assert len(steps) >= 3, steps
    dead = _dead_pid()
    for i in range(n):
        kind = CORRUPTIONS[i % len(CORRUPTIONS)]
        run = folder / f"run-{i:04d}"
        shutil.copytree(job.reference, run)
        marker = folder / f"ran-{i}"
        what, expect = _corrupt(kind, run / "checkpoints", steps, marker, dead, rng)
        (run / "final.safetensors").unlink()
        fig.add("corruptions injected")
        fig.add(f"corruptions injected: {kind if isinstance(kind, str) else kind[0]}")
        case = f"{kind}: {what}"
        try:
            code, out, err, result = invoke(
                ["train", job.config, "-o", run, "--resume"], TRAIN_LIMIT
            )
        except Hang:
            fig.add("hangs")
            fig.fail("corruption", f"{case}: resume did not finish")
            continue
        if not in_process_result(fig, "corruption", case, result):
            continue
        if not check_output(fig, "corruption", case, code, out, err, codes=(0, 1)):
            continue
        problems = ["THE PICKLE PAYLOAD RAN"] if marker.exists() else []
        problems += _resume_problems(job, run, expect, code, out, err)
        if problems:
            fig.fail("corruption", f"{case}: {'; '.join(problems)}\n{out}{err}"[-3000:])
        else:
            fig.add("corruptions detected")
            fig.add("corruptions detected: fell back" if code == 0 and
                    expect["warnings"] else "corruptions detected: refused" if code
                    else "corruptions detected: ignored leftovers")  # fmt: skip
        shutil.rmtree(run, ignore_errors=True)


def _corrupt(
    kind, ckpt: Path, steps: list[str], marker: Path, dead: int, rng: random.Random
) -> tuple[str, dict[str, Any]]:
    """Inflict `kind` on the checkpoints in `ckpt` (of `steps`, oldest first):
    what was done, and what a resume must do about it."""
    newest = ckpt / steps[-1]
    expect: dict[str, Any] = {"code": 0, "warnings": 1, "from": steps[-2]}
    if isinstance(kind, tuple):
        how, name = kind
        return _damage(newest / name, how, rng), expect
    if kind in ("two-bad", "none-left"):
        bad = steps[-2:] if kind == "two-bad" else steps
        what = ", ".join(
            _damage(ckpt / s / rng.choice(CHECKPOINT_FILES),
                    rng.choice(("truncate", "flip", "delete")), rng)
            for s in bad
        )  # fmt: skip
        if kind == "two-bad":
            return what, {**expect, "warnings": 2, "from": steps[-3]}
        return what, {"code": 1, "warnings": len(steps), "error": "cannot resume"}
    if kind in ("tmp-leftover", "tmp-leftover-finished", "old-leftover"):
        return _leftover(kind, ckpt, steps, dead, rng)
    what, planted = _plant(kind, newest, marker, rng)
    return what, {**expect, **planted}


def _leftover(kind: str, ckpt: Path, steps: list[str], dead: int, rng):
    """What a writer killed mid-checkpoint (a partial temporary folder) or
    mid-replace (the step folder renamed aside) leaves."""
    newest = ckpt / steps[-1]
    if kind == "old-leftover":
        newest.rename(ckpt / f".old-{steps[-1]}-{dead}")
        return f"{steps[-1]} renamed to .old-", {
            "code": 0, "warnings": 0, "from": steps[-1],
        }  # fmt: skip
    at = steps[-1] if kind == "tmp-leftover" else "step-99999999"
    tmp = ckpt / f".tmp-{at}-{dead}"
    shutil.copytree(newest, tmp)
    (tmp / "manifest.json").unlink()
    _damage(tmp / "arrays.safetensors", "truncate", rng)
    if kind == "tmp-leftover":
        shutil.rmtree(newest)
        expect = {"code": 0, "warnings": 0, "from": steps[-2]}
    else:
        expect = {"code": 0, "warnings": 0, "from": steps[-1]}
    return f"leftover {tmp.name}", expect


def _plant(kind: str, newest: Path, marker: Path, rng: random.Random):
    """Checksum-valid content that must not be restored (pickles, arrays or
    optimizer state that do not fit the run, lies about what a checkpoint
    holds): what was planted, and what a resume must do. A lie is treated like
    corruption: the resume falls back, with a warning naming what was wrong."""
    fell_back = {"code": 0, "warnings": 1}
    if kind == "pickle-arrays":
        victim = rng.choice(["w:0/W", "data_order", "evil"])

        def plant(arrays, victim=victim, marker=marker):
            arrays[victim] = np.array([Payload(marker), 1], dtype=object)

        _replace_arrays(newest, plant)
        what = f"a pickle in arrays.safetensors as {victim!r}, manifest recomputed"
        return what, {**fell_back, "warning": "arrays.safetensors is not readable"}
    if kind == "pickle-optimizer":
        buf = io.BytesIO()
        np.savez(buf, m0=np.array([Payload(marker)], dtype=object))
        (newest / "optimizer.safetensors").write_bytes(buf.getvalue())
        rewrite_manifest(newest)
        what = "a pickle as optimizer.safetensors, manifest recomputed"
        return what, {**fell_back, "warning": "optimizer state is refused"}
    if kind in LIES:
        what, warning = LIES[kind](newest, rng)
        rewrite_manifest(newest)
        return f"{what}, manifest recomputed", {**fell_back, "warning": warning}
    raise AssertionError(kind)


def _lie_arrays(change, what: str, warning: str):
    def lie(folder: Path, rng: random.Random):
        _replace_arrays(folder, change)
        return what, warning

    return lie


def _lie_optimizer(folder: Path, rng: random.Random):
    """RAdam state in an Adam run (or the reverse), or a negative or huge
    update count: the optimizer state re-encoded with a valid checksum."""
    import dataclasses

    from optsvc import Adam
    from optsvc.backends import get_ops
    from optsvc.optim.serialize import decode_optimizer, encode_optimizer

    LIKE = Adam().schedules  # every optimizer's hyperparameter names

    saved = decode_optimizer(
        (folder / "optimizer.safetensors").read_bytes(), like=LIKE, ops=get_ops("numpy")
    )
    how = rng.choice(["kind", "count"])
    if how == "kind":
        other = {**saved.settings, "use_radam": not saved.use_radam}
        saved = dataclasses.replace(saved, settings=other)
        what, warning = "optimizer.safetensors of the other kind (RAdam/Adam)", "RAdam"
        (folder / "optimizer.safetensors").write_bytes(encode_optimizer(saved))
        return what, warning
    # an update count no run writes: the state crafted past the writer's checks
    from state_helpers import archive, contents

    meta, arrays = contents((folder / "optimizer.safetensors").read_bytes())
    meta["keys"][0]["nr"] = nr = rng.choice([-1, 2**40])
    (folder / "optimizer.safetensors").write_bytes(archive(meta, arrays, rehash=True))
    return f"an update count of {nr} in optimizer.safetensors", "optimizer"


def _lie_state(folder: Path, rng: random.Random):
    """state.json with a broken RNG state, or a counter out of range."""
    state = json.loads((folder / "state.json").read_text())
    how = rng.choice(["rng", "epoch", "cursor"])
    if how == "rng":
        state["rng"] = {"bit_generator": "PCG64", "state": {"state": "x", "inc": 1}}
        what, warning = "a broken RNG state in state.json", "random generator"
    else:
        state[how] = rng.choice([-3, 10**30])
        what, warning = f"state.json {how} = {state[how]}", how
    (folder / "state.json").write_text(json.dumps(state))
    return what, warning


def _nan_weights(arrays):
    arrays["w:0/W"] = arrays["w:0/W"].copy()
    arrays["w:0/W"].flat[0] = np.nan


LIES = {
    "shape-mismatch": _lie_arrays(
        lambda a: a.update({"w:0/W": a["w:0/W"][:, :1]}), "w:0/W of another shape",
        "shape",
    ),
    "dtype-mismatch": _lie_arrays(
        lambda a: a.update({"w:0/W": a["w:0/W"].astype("float64")}), "w:0/W as float64",
        "float64",
    ),
    "missing-weights": _lie_arrays(
        lambda a: a.pop("w:0/b"), "w:0/b removed", "no weights"
    ),
    "nan-weights": _lie_arrays(_nan_weights, "a NaN in w:0/W", "NaN"),
    "best-score-lie": _lie_arrays(
        lambda a: a.update({"best:score": a["best:score"] + 0.5}),
        "best:score raised", "another score than its best",
    ),
    "best-shape-lie": _lie_arrays(
        lambda a: a.update({"best:w:0/W": a["best:w:0/W"][:, :1]}),
        "best:w:0/W of another shape", "best weights for",
    ),
    "optimizer-lie": _lie_optimizer,
    "state-lie": _lie_state,
}  # fmt: skip


def _resume_problems(
    job: Job, run: Path, expect: dict, code: int, out: str, err: str
) -> list[str]:
    """How a resume of a damaged run broke its promise (`expect`), if it did."""
    problems = []
    warnings = [ln for ln in err.splitlines() if "skipping a bad checkpoint" in ln]
    if code != expect["code"]:
        problems.append(f"exit {code}, expected {expect['code']}")
    if len(warnings) != expect["warnings"]:
        problems.append(f"{len(warnings)} warnings, expected {expect['warnings']}")
    if "warning" in expect and not any(expect["warning"] in w for w in warnings):
        problems.append(f"no warning saying {expect['warning']!r}")
    if problems:
        return problems
    if code == 0:
        if f"resumed: from step {int(expect['from'][5:])}" not in out:
            problems.append(f"not resumed from {expect['from']}")
        difference = run_difference(run, job.reference)
        if difference:
            problems.append(difference)
        ckpt = run / "checkpoints"
        left = [n for n in os.listdir(ckpt) if n.startswith((".tmp-", ".del-"))]
        if left:
            problems.append(f"temporary folders left: {left}")
    else:
        errors = [ln for ln in err.splitlines() if not ln.startswith("⚠")]
        if len(errors) != 1 or expect["error"] not in errors[0]:
            problems.append(f"not one clear error line with {expect['error']!r}")
    return problems


# --- 2b. damaged metrics, special files, a deleted lock file ---

FILE_CASES = ["metrics-flip", "metrics-deep", "metrics-garbage", "special-config",
              "special-scores", "special-checkpoint", "grown-checkpoint",
              "lock-deleted", "foreign-files", "special-readers"]  # fmt: skip
SPECIALS = ["fifo", "/dev/zero"]


def files_campaign(job: Job, n: int, rng: random.Random, work: Path, fig: Figures):
    """`n` cases cycling through FILE_CASES on copies of the finished reference
    run: a damaged metrics.jsonl line never blocks a resume; a FIFO or
    /dev/zero where a config, a scores log or a checkpoint file belongs is
    refused or skipped at once, never read; a checkpoint file larger than its
    manifest says is skipped; deleting RUN/.lock does not admit a second writer;
    another tool's files in -o are refused and kept; a FIFO or /dev/zero under
    `runs`, `plot` or `evaluate` ends at once."""
    from optsvc.training.checkpoints import list_checkpoints

    folder = work / "files"
    folder.mkdir(parents=True, exist_ok=True)
    steps = [p.name for p in list_checkpoints(job.reference / "checkpoints")]
    for i in range(n):
        kind = FILE_CASES[i % len(FILE_CASES)]
        run = folder / f"run-{i:04d}"
        shutil.copytree(job.reference, run)
        fig.add("file cases")
        fig.add(f"file cases: {kind}")
        try:
            if kind == "lock-deleted":
                problem = _lock_deleted(job, run)
            elif kind.startswith("metrics"):
                problem = _metrics_damage(job, run, kind, steps, rng)
            elif kind in ("special-config", "special-scores"):
                problem = _special_input(job, folder, kind, rng)
            elif kind == "foreign-files":
                problem = _foreign_files(job, folder / f"foreign-{i:04d}", rng)
            elif kind == "special-readers":
                problem = _special_reader(run, steps, rng)
            else:
                problem = _special_checkpoint(job, run, kind, steps, rng)
        except Hang:
            fig.add("hangs")
            problem = "did not finish"
        if problem:
            fig.fail("files", f"{kind}: {problem}"[-3000:])
        else:
            fig.add("file cases held")
        shutil.rmtree(run, ignore_errors=True)


def _resume(job: Job, run: Path) -> tuple[int, str, str]:
    code, out, err, result = invoke(
        ["train", job.config, "-o", run, "--resume"], TRAIN_LIMIT
    )
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return 2, out, f"{err}\n{result.exception!r}"
    return code, out, err


def _metrics_damage(job: Job, run: Path, kind: str, steps, rng) -> str | None:
    """A damaged line: dropped (with the rows past the checkpoint, redone)."""
    shutil.rmtree(run / "checkpoints" / steps[-1])
    (run / "final.safetensors").unlink()
    resume_step = int(steps[-2][5:])
    lines = (run / "metrics.jsonl").read_bytes().splitlines()
    i = rng.randrange(len(lines))
    damaged_step = json.loads(lines[i])["step"]
    if kind == "metrics-flip":
        j = rng.randrange(len(lines[i]))
        lines[i] = lines[i][:j] + bytes([lines[i][j] | 0x80]) + lines[i][j + 1 :]
    elif kind == "metrics-deep":
        lines[i] = b"[" * 100_000 + b"]" * 100_000
    else:
        lines[i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        lines[i] = lines[i].replace(b"\n", b" ")
    (run / "metrics.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    code, out, err = _resume(job, run)
    if code != 0:
        return f"resume exit {code}\n{out}{err}"
    want = metric_rows(job.reference)
    if damaged_step <= resume_step:
        want = [r for r in want if r["step"] != damaged_step]
    if metric_rows(run) != want:
        return f"metrics rows {[r['step'] for r in metric_rows(run)]}"
    return None


def _special_input(job: Job, folder: Path, kind: str, rng) -> str | None:
    """`optsvc validate SPECIAL`, `optsvc show-schedule CFG --scores SPECIAL`
    in a subprocess: one clear refusal, at once."""
    special = rng.choice(SPECIALS)
    if special == "fifo":
        special = folder / f"fifo-{rng.randrange(10**9)}"
        os.mkfifo(special)
    args = (
        ["validate", special]
        if kind == "special-config"
        else ["show-schedule", job.config, "--scores", special]
    )
    code, out, err = run_subprocess(args, limit=CLI_LIMIT)
    if code is None:
        raise Hang()
    if code != 1 or "is not a regular file" not in out + err or "Traceback" in err:
        return f"exit {code}: {out}{err}"
    return None


# Files another tool may leave where optsvc writes its own.
FOREIGN = {"checkpoints/epoch=41-step=90000.ckpt": b"lightning", "metrics.jsonl":
           b'{"step": 1, "loss": 0.5}\n', "best.npz": b"PK\x03\x04"}  # fmt: skip


def _foreign_files(job: Job, run: Path, rng) -> str | None:
    """Another tool's files in -o: `train` (plain, --resume or --overwrite)
    refuses the folder, names a file it holds and leaves every byte."""
    planted = rng.sample(sorted(FOREIGN), rng.randrange(1, len(FOREIGN) + 1))
    for name in planted:
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_bytes(FOREIGN[name])
    flags = rng.choice([[], ["--resume"], ["--overwrite"]])
    code, out, err, _ = invoke(["train", job.config, "-o", run, *flags], TRAIN_LIMIT)
    kept = all((run / n).read_bytes() == FOREIGN[n] for n in planted)
    if code != 1 or "optsvc did not write" not in err or not kept:
        return f"{planted} {flags}: exit {code}, files kept: {kept}\n{out}{err}"
    return None


def _special_reader(run: Path, steps, rng) -> str | None:
    """A FIFO or /dev/zero in place of a file `runs`, `plot` or `evaluate`
    reads: each finishes at once with a result or one clear error."""
    name = rng.choice(["metrics.jsonl", ".lock", "run.json",
                       f"checkpoints/{steps[-1]}/state.json",
                       f"checkpoints/{steps[-1]}/manifest.json"])  # fmt: skip
    target = run / name
    target.unlink(missing_ok=True)
    if rng.random() < 0.5:
        os.mkfifo(target)
    else:
        target.symlink_to("/dev/zero")
    (run / "final.safetensors").unlink()  # the status then comes from the rest
    command = rng.choice([["runs", run.parent], ["plot", run], ["evaluate", run]])
    code, out, err = run_subprocess(command, limit=CLI_LIMIT)
    if code is None:
        raise Hang()
    text = out + err
    if code not in (0, 1) or "Traceback" in text or "internal error" in text:
        return f"{name} under {command[0]}: exit {code}\n{text[-1500:]}"
    return None


def _special_checkpoint(job: Job, run: Path, kind: str, steps, rng) -> str | None:
    """A checkpoint file that is a FIFO, /dev/zero, or far larger than its
    manifest says: skipped with a warning, the run still bit-identical."""
    name = rng.choice(CHECKPOINT_FILES[:3])
    target = run / "checkpoints" / steps[-1] / name
    target.unlink()
    if kind == "grown-checkpoint":
        with open(target, "wb") as f:
            f.truncate(rng.choice([2**31, 2**40]))  # sparse: no disk used
    elif rng.random() < 0.5:
        os.mkfifo(target)
    else:
        target.symlink_to("/dev/zero")
    (run / "final.safetensors").unlink()
    code, out, err = _resume(job, run)
    expect = {"code": 0, "warnings": 1, "from": steps[-2], "warning": name}
    problems = _resume_problems(job, run, expect, code, out, err)
    return "; ".join(problems) + f"\n{out}{err}" if problems else None


def _lock_deleted(job: Job, run: Path) -> str | None:
    """A run trains; its RUN/.lock is deleted; a second writer must be refused."""
    from optsvc.errors import RunError
    from optsvc.training.lock import RunLock

    shutil.rmtree(run)
    proc = subprocess.Popen(
        [*OPTSVC, "train", str(job.config), "-o", str(run)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + SUBPROCESS_LIMIT
        while not (run / ".lock").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                return "the run ended before its lock could be seen"
            time.sleep(0.01)
        (run / ".lock").unlink()
        try:
            RunLock(run).release()
        except RunError:
            return None
        if proc.poll() is None:
            return "a second lock was admitted while the run trained"
        return None  # it had just finished
    finally:
        proc.kill()
        proc.wait()


# --- 3. fuzzed configs ---

SECTION_NAMES = ["system", "data", "model", "training", "optimizer",
                 "optimizer.learn_rate", "optimizer.L2", "optimizer.beta1",
                 "optimizer.learn_rate.schedule", "training.optimizer",
                 "training.optimizer.learn_rate", "nlp", "paths", "components",
                 "corpora", "x", "optimizer.x", "data.nested",
                 "system.seed"]  # fmt: skip
KEYS = ["max_steps", "batch_size", "eval_frequency", "checkpoint_frequency",
        "keep_checkpoints", "patience", "nonfinite", "seed", "gpu_id",
        "learn_rate", "L2", "beta1", "beta2", "eps", "grad_clip", "weight_decay",
        "use_averages", "L2_is_weight_decay", "initial_rate", "warmup_steps",
        "total_steps", "final_rate", "rate", "max_patience", "scale", "schedule",
        "n_samples", "n_features", "n_classes", "n_outputs", "noise", "turns",
        "spread", "dev_fraction", "hidden_width", "depth", "activation",
        "base_rate", "decay", "min_lr", "max_lr", "period", "boundaries",
        "values", "@optimizers", "@schedules", "@datasets", "@models", "lr",
        "learn-rate", "Max_Steps", "ü", "🙂", "a b", "x" * 300]  # fmt: skip
NAMES = ["Adam.v1", "SGD.v1", "RAdam.v1", "warmup_linear.v1", "plateau.v1",
         "constant.v1", "warmup_cosine.v1", "spirals.v1", "blobs.v1",
         "regression.v1", "mlp.v1", "linear.v1", "Adam.v9", "adam", "", "Adam",
         "spirals.v1 ", "mlp.v1\u200b", "SGD.v1\\u0000"]  # fmt: skip
OVERRIDE_PATHS = ["training.max_steps", "training.batch_size", "training.nonfinite",
                  "training.eval_frequency", "training.checkpoint_frequency",
                  "optimizer.learn_rate", "optimizer.learn_rate.initial_rate",
                  "optimizer.learn_rate.total_steps", "optimizer.beta1",
                  "optimizer.grad_clip", "optimizer.L2", "optimizer.use_averages",
                  "optimizer.@optimizers", "data.n_samples", "data.noise",
                  "model.hidden_width", "model.depth", "model.activation",
                  "system.seed", "system.gpu_id", "nope.x", "optimizer", "x",
                  "a.b.c.d.e", "training.optimizer.learn_rate", "data.@datasets",
                  "optimizer.learn_rate.@schedules"]  # fmt: skip


def rand_text(rng: random.Random, n: int) -> str:
    alphabet = ("abcxyz019 _-.[]{}()=:;,'\"\\$@#%\t\n\r\x00\x7f\u00e9\u00fc\u4e2d"
                "\u0627\u200b\u202e\ufeff\U0001f642\ud7ff")  # fmt: skip
    return "".join(rng.choice(alphabet) for _ in range(n))


def rand_number(rng: random.Random) -> str:
    return rng.choice([
        "0", "1", "-1", "2", "3", "10", "100", "1000", str(2**31), str(2**63 - 1),
        str(2**63), str(2**64), "1" + "0" * rng.choice((20, 400, 5000)), "007",
        str(rng.randint(-10**6, 10**6)), str(rng.randint(0, 100)), "NaN", "nan",
        "Infinity", "-Infinity", "inf", "1e308", "1e309", "-1e309", "1e-320",
        "5e-324", "-0.0", "0.0", "0.5", "0.9", "0.999", "1.0", "1e-8",
        repr(rng.uniform(-10, 10)), repr(10 ** rng.uniform(-40, 40)),
        repr(-(10 ** rng.uniform(-10, 40))), "1_000", "0x10", "1e", ".5", "+3",
    ])  # fmt: skip


def rand_value(rng: random.Random, depth: int = 0) -> str:
    """A value as it may stand in a .cfg file (or on the command line)."""
    kind = rng.randrange(12 if depth < 3 else 9)
    if kind <= 2:
        return rand_number(rng)
    if kind == 3:
        return rng.choice(["true", "false", "True", "False", "null", "None", "yes"])
    if kind == 4:
        return json.dumps(rand_text(rng, rng.choice((0, 1, 5, 30))))
    if kind == 5:
        return rng.choice([
            '"' + "x" * rng.choice((1000, 20000, 100000)) + '"',
            rand_text(rng, rng.randint(1, 20)), '"unterminated', "'single'",
            '"\\u0000"', '"\\ud800"', json.dumps("🙂" * 50), '"relu"', '"tanh"',
            '"skip"', '"refuse"', "relu", '""',
        ])  # fmt: skip
    if kind == 6:
        return json.dumps(rng.choice(NAMES))
    if kind == 7:
        return rng.choice([
            "${system.seed}", "${training.max_steps}", "${nope.x}", "${optimizer}",
            "${", "$", "${a.b.c.d}", "${training.max_steps} + 1",
            "${optimizer.learn_rate}", "${training}", "${data.n_samples}",
        ])  # fmt: skip
    if kind == 8:
        return rng.choice(["[]", "{}", "[1, 2, 3]", "[0.1, 0.01]", '{"a": 1}',
                           "[NaN]", "[1e400]", "[" * 50 + "]" * 50, "[1, [2, [3]]]",
                           '["a", 1, null]', "[" * 3000 + "]" * 3000])  # fmt: skip
    # lists of values (kind 9..11, at shallow depth)
    items = [rand_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return "[" + ", ".join(items) + "]"


def mutate(text: str, rng: random.Random) -> str:
    """A config's text with a few lines changed, dropped, added or swapped."""
    lines = text.splitlines() or [""]
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(lines))
        line = lines[i]
        key = line.partition("=")[0].strip()
        action = rng.randrange(12)
        if action <= 3 and "=" in line:
            lines[i] = f"{key} = {rand_value(rng)}"
        elif action == 4:
            del lines[i]
            lines = lines or [""]
        elif action == 5:
            lines.insert(i, f"{rng.choice(KEYS)} = {rand_value(rng)}")
        elif action == 6:
            lines.insert(i, line)  # a duplicate
        elif action == 7:
            lines[i] = f"[{rng.choice(SECTION_NAMES)}]"
        elif action == 8 and "@" in line:
            lines[i] = f"{key} = {json.dumps(rng.choice(NAMES))}"
        elif action == 9:
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        elif action == 10 and key:
            new = list(key)
            new[rng.randrange(len(new))] = rng.choice("xX_-.ü ")
            lines[i] = "".join(new) + line[len(key) :]
        else:
            lines.insert(i, rand_text(rng, rng.randint(1, 40)))
    out = "\n".join(lines)
    if rng.random() < 0.05:
        out = out[: rng.randrange(len(out) + 1)]
    return out


def structured(rng: random.Random) -> str:
    """Random sections with real and made-up names, keys and values; some
    nested very deep."""
    lines = []
    for _ in range(rng.randint(0, 6)):
        if rng.random() < 0.1:
            name = ".".join(rng.choice(["a", "optimizer", "x", "learn_rate"])
                            for _ in range(rng.randint(2, 60)))  # fmt: skip
        elif rng.random() < 0.8:
            name = rng.choice(SECTION_NAMES)
        else:
            name = rand_text(rng, rng.randint(0, 8))
        lines.append(f"[{name}]")
        for _ in range(rng.randint(0, 6)):
            key = rng.choice(KEYS) if rng.random() < 0.85 else rand_text(rng, 4)
            lines.append(f"{key} = {rand_value(rng)}")
        lines.append("")
    return "\n".join(lines)


def garbage(rng: random.Random) -> str | bytes:
    job = job_text(rng.choice(sorted(JOBS)))
    return rng.choice([
        lambda: "",
        lambda: " \n\t\n",
        lambda: rng.randbytes(rng.randint(1, 4000)),
        lambda: rand_text(rng, rng.randint(1, 2000)),
        lambda: "x" * 200_000,
        lambda: "[optimizer]\n" + "a = " + "1" * 100_000,
        lambda: "\ufeff" + job,
        lambda: job.replace("\n", "\r\n"),
        lambda: job.encode()[:200] + b"\xff\xfe\x80" + job.encode()[200:],
        lambda: job.replace("=", ":"),
        lambda: job + "\n" + job,
        lambda: "\x00" * 100,
        lambda: "[optimizer]\n" * 1000,
        lambda: "\n".join(f"[s{i}]\nk = {i}" for i in range(2000)),
    ])()  # fmt: skip


def with_overrides(rng: random.Random) -> list[str]:
    """Dotted overrides: well formed or not, with values of every kind."""
    if rng.random() < 0.45:
        return []
    args: list[str] = []
    for _ in range(rng.randint(1, 3)):
        name = rng.choice(OVERRIDE_PATHS) if rng.random() < 0.9 else rand_text(rng, 5)
        value = rand_value(rng)
        form = rng.randrange(10)
        if form <= 5:
            args += [f"--{name}", value]
        elif form == 6:
            args.append(f"--{name}={value}")
        elif form == 7:
            args.append(f"--{name}")  # no value
        elif form == 8:
            args.append(rng.choice(["--", "-", "-x", "--=1", "value", "--.", "--a."]))
        else:
            args += [f"--{name.replace('_', '-')}", value]
    return args


# Overrides a user may well give: the job stays valid, or nearly, so that
# many cases get as far as training (extreme but allowed values included).
PLAUSIBLE = {
    "training.max_steps": [1, 2, 50, 400],
    "training.batch_size": [1, 2, 7, 64, 10**6],
    "training.eval_frequency": [1, 3, 1000],
    "training.checkpoint_frequency": [1, 7, 10**9],
    "training.keep_checkpoints": [1, 2, 50],
    "training.patience": [0, 1, 3],
    "training.nonfinite": ['"skip"', '"refuse"'],
    "optimizer.learn_rate": [0, 1e-12, 0.5, 10, 1e6, 1e30, 1e300],
    "optimizer.learn_rate.base_rate": [0, 0.5, 1e6, 1e300],
    "optimizer.learn_rate.schedule.initial_rate": [0, 0.5, 1e6, 1e30, 1e300],
    "optimizer.learn_rate.max_patience": [1, 1000],
    "data.n_samples": [2, 3, 10, 5000, 10**5],
    "data.noise": [0, 1e-30, 100, 1e30],
    "data.dev_fraction": [0.01, 0.5, 0.99],
    "data.seed": [0, 2**63 - 1],
    "model.hidden_width": [1, 2, 300],
    "model.depth": [1, 6],
    "model.activation": ['"tanh"', '"relu"'],
    "system.seed": [0, 2**32, 2**63 - 1],
    "optimizer.grad_clip": [0, 1e-30, 1e30],
    "optimizer.beta1": [0.0, 0.5, 0.999999],
    "optimizer.beta2": [0.0, 0.5, 0.999999],
    "optimizer.eps": [1e-300, 1e30],
    "optimizer.use_averages": ["true", "false"],
    "optimizer.L2": [0, 1e10],
    "optimizer.L2_is_weight_decay": ["true", "false"],
}


def plausible_overrides(rng: random.Random) -> list[str]:
    args = []
    for path in rng.sample(sorted(PLAUSIBLE), rng.randint(1, 4)):
        args += [f"--{path}", str(rng.choice(PLAUSIBLE[path]))]
    return args


def short(args: list[str]) -> list[str]:
    """Arguments for a message: long ones cut."""
    return [a if len(a) <= 80 else f"{a[:60]}...({len(a)} chars)" for a in args]


def fuzz_case(rng: random.Random) -> tuple[str | bytes, list[str], str]:
    """(file content, override args, family) for one generated config."""
    family = rng.choices(
        ["mutated-job", "mutated-example", "structured", "garbage", "job+overrides",
         "plausible-job"],
        [30, 15, 15, 10, 10, 20],
    )[0]  # fmt: skip
    if family == "mutated-job":
        content = mutate(job_text(rng.choice(sorted(JOBS))), rng)
    elif family == "mutated-example":
        content = mutate(rng.choice(EXAMPLES).read_text(encoding="utf8"), rng)
    elif family == "structured":
        content = structured(rng)
    elif family == "garbage":
        content = garbage(rng)
    else:
        content = job_text(rng.choice(sorted(JOBS)))
    if family == "plausible-job":
        return content, plausible_overrides(rng), family
    overrides = with_overrides(rng)
    if family == "job+overrides" and not overrides:
        overrides = [f"--{rng.choice(OVERRIDE_PATHS)}", rand_number(rng)]
    return content, overrides, family


def _job_size(path: Path, overrides: list[str]) -> float | None:
    """A rough cost of the job (data x model), None if it does not load."""
    from optsvc.config.parse import load_config, parse_overrides

    try:
        cfg = load_config(path, parse_overrides(overrides))
        data, model = cfg.get("data", {}), cfg.get("model", {})
        n = data.get("n_samples", 2000)
        features = data.get("n_features", 8)
        outputs = max(data.get("n_classes", 3), data.get("n_outputs", 1))
        width, depth = model.get("hidden_width", 64), model.get("depth", 2)
        batch = cfg.get("training", {}).get("batch_size", 64)
        return float(n * (features + width * depth + outputs)) + float(
            width * width * depth + min(batch, n) * width * depth
        )
    except Exception:
        return None


def config_fuzz(
    n: int,
    rng: random.Random,
    work: Path,
    fig: Figures,
    *,
    train_share: float = 0.35,
    subprocess_share: float = 0.02,
) -> None:
    """`n` generated configs through `optsvc validate` (in process, a share
    in subprocesses); of those that validate as training jobs, a share
    through `optsvc train` with tiny max_steps."""
    folder = work / "fuzz"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "fuzzed.cfg"
    for i in range(n):
        content, overrides, family = fuzz_case(rng)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_bytes(content.encode("utf8", errors="surrogatepass"))
        fig.add("configs fuzzed")
        fig.add(f"configs fuzzed: {family}")
        case = (
            f"case {i} ({family}), args {short(overrides)}, content {content[:500]!r}"
        )
        args = ["validate", path, *overrides]
        if rng.random() < subprocess_share:
            fig.add("configs validated in subprocesses")
            code, out, err = run_subprocess(args)
            if code is None:
                fig.add("hangs")
                fig.fail("validate", f"no answer; {case}")
                continue
        else:
            try:
                code, out, err, result = invoke(args, VALIDATE_LIMIT)
            except Hang:
                fig.add("hangs")
                fig.fail("validate", f"no answer in {VALIDATE_LIMIT} s; {case}")
                continue
            if not in_process_result(fig, "validate", case, result):
                continue
        if not check_output(fig, "validate", case, code, out, err, codes=(0, 1, 2)):
            continue
        fig.add(f"validate exit {code}")
        trainable = isinstance(content, str) and "[data]" in content
        if code == 0 and trainable and "[model]" in content:
            if rng.random() < train_share:
                _fuzz_train(path, overrides, rng, folder / f"run-{i}", fig, case)
        if (i + 1) % 1000 == 0:
            log(f"  config fuzz: {i + 1} of {n}")


def _fuzz_train(path, overrides, rng, run: Path, fig: Figures, case: str) -> None:
    steps = rng.choice(["1", "2", "5", "20", "60", "120"])
    extra = ["--training.max_steps", steps]
    if rng.random() < 0.5:
        extra += ["--training.checkpoint_frequency", rng.choice(["1", "3", "10"])]
    args = ["train", path, "-o", run, *overrides, *extra]
    case = f"train {extra}; {case}"[:3000]
    size = _job_size(path, [*overrides, *extra])
    fig.add("configs trained")
    try:
        if size is not None and size < 1e7:
            fig.add("configs trained in process")
            try:
                code, out, err, result = invoke(args, TRAIN_LIMIT)
            except Hang:
                fig.add("hangs")
                fig.fail("train", f"no answer in {TRAIN_LIMIT} s; {case}")
                return
            if not in_process_result(fig, "train", case, result):
                return
        else:  # a big job: in a subprocess, with a memory limit
            fig.add("configs trained in subprocesses (memory-limited)")
            code, out, err = run_subprocess(args, memory=SUBPROCESS_MEMORY)
            if code is None:
                fig.add("hangs")
                fig.fail("train", f"no answer in {SUBPROCESS_LIMIT} s; {case}")
                return
        if not check_output(fig, "train", case, code, out, err, codes=(0, 1)):
            return
        fig.add(f"train exit {code}")
        if code == 0:
            problems = checkpoint_problems(run)
            try:
                arrays = final_arrays(run)
            except (OSError, ValueError) as err:
                problems.append(f"final.safetensors unreadable: {err}")
                arrays = {}
            problems += [f"final.safetensors {k} holds NaN or inf"
                         for k, a in arrays.items()
                         if not np.isfinite(a).all()]  # fmt: skip
            if problems:
                fig.fail("train", f"{'; '.join(problems)}; {case}")
            else:
                fig.add("fuzzed runs finished with finite numbers")
        elif "not saved" in err:
            fig.add("fuzzed runs refused for NaN/inf")
            for problem in checkpoint_problems(run):
                fig.fail("train", f"{problem}; {case}")
    finally:
        shutil.rmtree(run, ignore_errors=True)


# --- 4. command-line fuzz ---

SUBCOMMANDS = ["validate", "train", "show-schedule", "registry", "bench", "",
               "valdate", "Train", "--version", "--help", "-h", "help"]  # fmt: skip
OPTIONS = ["--steps", "--param", "--format", "--scores", "-o", "--output", "--gpu",
           "--resume", "--overwrite", "--extend", "--quick", "--repeat",
           "--workload", "-w", "--peers", "--no-peers", "--help", "--version",
           "--verbose", "-x", "-", "--", "--steps=", "--gpu=abc"]  # fmt: skip
OPTION_VALUES = ["0", "1", "-1", "7", "-5", "2", "abc", "", "1.5", "nan", "1e3",
                 str(2**63), str(10**30), "ü🙂", "learn_rate", "L2", "beta1",
                 "chart", "table", "csv", "json", "xml", "W1", "W9", "true",
                 "--resume", "/nonexistent/x", "."]  # fmt: skip


def cli_case(rng: random.Random, configs: list[Path]) -> list[str]:
    sub = rng.choice(SUBCOMMANDS)
    args = [sub] if sub else []
    if sub == "bench":
        # bench runs for minutes when its arguments are good: only bad ones
        return [sub, *rng.choice([
            ["--help"], ["--format", "xml"], ["--repeat", "0"], ["--gpu", "abc"],
            ["--workload", "W9"], ["--gpu", "0"], ["--repeat", "x", "--quick"],
            ["--nope"],
        ])]  # fmt: skip
    if rng.random() < 0.85:
        args.append(str(rng.choice(configs)))
    for _ in range(rng.randint(0, 4)):
        args.append(rng.choice(OPTIONS))
        if rng.random() < 0.7:
            args.append(rng.choice(OPTION_VALUES))
    if rng.random() < 0.5:
        args += with_overrides(rng)
    if sub == "train":
        if "-o" not in args and "--output" not in args and rng.random() < 0.5:
            args += ["-o", "runs/fuzz"]
        args += ["--training.max_steps", rng.choice(["1", "5", "40"])]
    if rng.random() < 0.1:
        rng.shuffle(args)
    return args


def cli_fuzz(
    n: int,
    rng: random.Random,
    work: Path,
    fig: Figures,
    jobs: dict[str, Job],
    *,
    subprocess_share: float = 0.03,
) -> None:
    """`n` random argument lists for `optsvc`, run in `work/cli` (where
    `train` writes its runs)."""
    folder = work / "cli"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.cfg").write_text("")
    (folder / "binary.cfg").write_bytes(b"\x00\xff\xfe garbage")
    (folder / "scores.jsonl").write_text('{"step": 1, "score": 0.5}\nnot json\n')
    (folder / "a-folder").mkdir(exist_ok=True)
    configs = [job.config for job in jobs.values()] + [
        ROOT / "configs" / "adam.cfg", ROOT / "configs" / "schedule-plateau.cfg",
        folder / "empty.cfg", folder / "binary.cfg", folder / "missing.cfg",
        folder / "a-folder", folder / "scores.jsonl",
    ]  # fmt: skip
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        for i in range(n):
            args = cli_case(rng, configs)
            case = f"optsvc {' '.join(map(repr, short(args)))}"
            fig.add("command lines fuzzed")
            if rng.random() < subprocess_share:
                fig.add("command lines fuzzed in subprocesses")
                code, out, err = run_subprocess(args, cwd=folder)
                if code is None:
                    fig.add("hangs")
                    fig.fail("cli", f"no answer; {case}")
                    continue
            else:
                try:
                    code, out, err, result = invoke(args, CLI_LIMIT)
                except Hang:
                    fig.add("hangs")
                    fig.fail("cli", f"no answer in {CLI_LIMIT} s; {case}")
                    continue
                if not in_process_result(fig, "cli", case, result):
                    continue
            if check_output(fig, "cli", case, code, out, err, codes=(0, 1, 2)):
                fig.add(f"command line exit {code}")
            if i % 50 == 49:
                shutil.rmtree(folder / "runs", ignore_errors=True)
    finally:
        os.chdir(cwd)
        shutil.rmtree(folder / "runs", ignore_errors=True)


# --- 5. optimizer API fuzz ---

DTYPES = ["float32", "float32", "float32", "float16", "float64", "int8", "int64",
          "uint8", "bool", "complex64", "object", ">f4"]  # fmt: skip
LR_SCALES = [1.0, 1.0, 0.5, 0, 2, 1e-30, 1e30, 1e308, -1.0, -0.0, math.nan,
             math.inf, -math.inf, 10**400, True, None, "1", [1.0],
             np.float32(0.5), np.float64(2.0), np.int64(1), np.array(1.0),
             np.array([1.0, 2.0]), np.float32("nan")]  # fmt: skip
KNOWN = [("w", 0), ("w", 1)]  # warmed-up keys: (3, 4) and (5,)
KNOWN_SHAPES = {("w", 0): (3, 4), ("w", 1): (5,)}


def rand_array(rng: random.Random, shape=None) -> Any:
    """An array (or not) of a random kind."""
    if shape is None:
        shape = rng.choice([
            (), (0,), (3, 0), (1,), (5,), (3, 4), (4, 3), (2, 3, 4), (1,) * 32,
            (1,) * rng.randint(2, 40), (0, 10**9), (rng.randint(1, 50),),
        ])  # fmt: skip
    dtype = rng.choice(DTYPES)
    size = math.prod(shape)
    if size > 10**6:
        return np.zeros(shape, "float32")
    if dtype == "object":
        a = np.empty(shape, dtype=object)
        a[...] = 1.0
    else:
        a = (np.arange(size) % 7 - 3).astype(dtype).reshape(shape)
    if dtype.startswith(("float", ">f")) and size and rng.random() < 0.2:
        a.reshape(-1)[rng.randrange(size)] = rng.choice([np.nan, np.inf, -np.inf])
    r = rng.random()
    if r < 0.08 and a.ndim >= 1 and a.shape[0] > 1:
        big = np.repeat(a, 2, axis=0)
        a = big[::2]  # a non-contiguous view
    elif r < 0.12 and a.ndim >= 2:
        a = a.T
    elif r < 0.16:
        a = np.asfortranarray(a)
    elif r < 0.2:
        a.flags.writeable = False
    return a


def optimizer_case(rng: random.Random) -> dict:
    """One optimizer call with random arguments, as plain data."""
    kind = rng.choice(["Adam", "SGD", "RAdam"])
    key = rng.choice([
        ("w", 0), ("w", 1), ("w", 2), (7, "W"), "name", 3, ("a", ("b", 1)), None,
        ["list", "key"], {"a": 1}, (1, [2]), float("nan"), b"bytes", ("x",) * 50,
        np.int64(3),
    ])  # fmt: skip
    r = rng.random()
    if r < 0.35 and isinstance(key, tuple) and key in KNOWN:
        shape = KNOWN_SHAPES[key] if rng.random() < 0.7 else (2, 2)
        weights = np.ones(shape, "float32")
        gradient = (np.arange(math.prod(shape), dtype="float32") / 10).reshape(shape)
    elif r < 0.6:
        weights = rand_array(rng)
        gradient = (
            rand_array(rng, getattr(weights, "shape", None))
            if rng.random() < 0.7
            else rand_array(rng)
        )
    else:

        def not_array():
            return rng.choice([
                [1.0, 2.0], 3.0, None, "abc", np.float32(1.0), (1.0,),
                memoryview(b"abcd"), {"a": 1}, np.ones(3, "f"), [[1.0], [2.0]],
            ])  # fmt: skip

        weights, gradient = not_array(), not_array()
        if rng.random() < 0.5 and not isinstance(weights, np.ndarray):
            gradient = rand_array(rng)
    if (
        rng.random() < 0.5
        and isinstance(weights, np.ndarray)
        and weights.flags.writeable
    ):
        gradient = np.ones_like(weights)  # same shape and dtype: only one problem
    return {
        "kind": kind,
        "averages": rng.random() < 0.7,
        "key": key,
        "weights": weights,
        "gradient": gradient,
        "lr_scale": rng.choice(LR_SCALES),
        "store": rng.random() < 0.15,
    }


def build_optimizer(kind: str, averages: bool):
    from optsvc import SGD, Adam, RAdam

    if kind == "SGD":
        return SGD(0.1, use_averages=averages)
    if kind == "RAdam":
        return RAdam(0.01, use_averages=averages)
    return Adam(0.01, use_averages=averages)


def optimizer_snapshot(opt) -> dict:
    """A deep, plain copy of an optimizer's state."""

    def copy(arrays):
        if arrays is None:
            return None
        return {repr(k): np.array(v, copy=True) for k, v in arrays.items()}

    return {
        "step": opt.step,
        "last_score": opt.last_score,
        "nr_update": {repr(k): v for k, v in opt.nr_update.items()},
        "mom1": copy(opt.mom1),
        "mom2": copy(opt.mom2),
        "averages": copy(opt.averages),
        "learn_rate": opt.learn_rate,
    }


def snapshot_difference(a: dict, b: dict) -> str | None:
    for name in a:
        x, y = a[name], b[name]
        if isinstance(x, dict) and name in ("mom1", "mom2", "averages"):
            if sorted(x) != sorted(y):
                return f"{name} keys changed: {sorted(x)} -> {sorted(y)}"
            for k in x:
                if x[k].tobytes() != y[k].tobytes() or x[k].shape != y[k].shape:
                    return f"{name}[{k}] changed"
        elif x != y:
            return f"{name} changed: {x!r} -> {y!r}"
    return None


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        flags = "C" if value.flags.c_contiguous else "non-C"
        ro = "" if value.flags.writeable else " read-only"
        return f"ndarray {value.dtype} {value.shape} {flags}{ro}"
    return f"{type(value).__name__} {value!r:.40}"


def run_optimizer_case(case: dict) -> str | None:
    """Run one case; None if every promise held, else what broke."""
    opt = build_optimizer(case["kind"], case["averages"])
    for _ in range(2):  # some state to keep: two known keys, updated twice
        for key in KNOWN:
            w, g = np.ones(KNOWN_SHAPES[key], "f"), np.full(KNOWN_SHAPES[key], 0.1, "f")
            opt(key, w, g)
        opt.step_schedules()
    before = optimizer_snapshot(opt)
    key, weights, gradient = case["key"], case["weights"], case["gradient"]
    inputs = [np.array(a, copy=True) if isinstance(a, np.ndarray) else None
              for a in (weights, gradient)]  # fmt: skip
    describe = (f"{case['kind']} averages={case['averages']} key={key!r:.60} "
                f"weights={_describe(weights)} gradient={_describe(gradient)} "
                f"lr_scale={case['lr_scale']!r} store={case['store']}")  # fmt: skip
    try:
        if case["store"]:
            from optsvc.optim.params import ParamStore

            store = ParamStore.from_arrays(
                {k: np.ones(s, "f") for k, s in KNOWN_SHAPES.items()}
            )
            store.flat_gradients[...] = 0.1
            opt.update_store(store, lr_scale=case["lr_scale"])
        else:
            opt(key, weights, gradient, lr_scale=case["lr_scale"])
    except (ValueError, TypeError) as err:
        message = str(err)
        named = ["lr_scale", "weights", "gradient", "key", repr(key)]
        if not any(word in message for word in named):
            return (
                f"{type(err).__name__} naming neither key nor argument: "
                f"{message!r}; {describe}"
            )
        case["outcome"] = "refused"
        difference = snapshot_difference(before, optimizer_snapshot(opt))
        if difference:
            return (
                f"failed call changed the state ({difference}): {message}; {describe}"
            )
        for given, copy in zip((weights, gradient), inputs):
            if copy is not None and (
                given.dtype != copy.dtype
                or given.shape != copy.shape
                or given.tobytes() != copy.tobytes()
            ):
                return f"failed call changed its input arrays: {message}; {describe}"
        # ... and the optimizer still works
        w, g = np.ones((3, 4), "f"), np.full((3, 4), 0.1, "f")
        opt(("w", 0), w, g)
        if opt.nr_update[("w", 0)] != 3 or g.any() or not np.isfinite(w).all():
            return f"the optimizer misbehaves after a refused call; {describe}"
        return None
    except Exception as err:  # another kind of error: not a clear one
        trace = "".join(traceback.format_exception(err))[-1500:]
        return f"{type(err).__name__} ({err!s:.200}); {describe}\n{trace}"
    # success: the update happened as promised
    case["outcome"] = "succeeded"
    if case["store"]:
        return None
    lr_scale = case["lr_scale"]
    if isinstance(gradient, np.ndarray) and gradient.size and gradient.any():
        return f"the call succeeded but left the gradient non-zero; {describe}"
    if (
        isinstance(weights, np.ndarray)
        and weights.size
        and all(a is not None and a.dtype.kind == "f" for a in inputs)
        and np.isfinite(inputs[0]).all()
        and np.isfinite(inputs[1]).all()
        and not np.isfinite(weights).all()
        and float(lr_scale) < 1e30
    ):
        return f"finite inputs gave non-finite weights; {describe}"
    return None


# Bugs the fuzz found and that are not fixed yet are listed here (description
# -> predicate on a case), counted apart and named in the summary. None now.
KNOWN_BUGS: dict = {}


def optimizer_fuzz(n: int, rng: random.Random, fig: Figures) -> None:
    """`n` optimizer calls with random arguments."""
    import warnings

    for _ in range(n):
        case = optimizer_case(rng)
        fig.add("optimizer calls fuzzed")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                with time_limit(VALIDATE_LIMIT):
                    problem = run_optimizer_case(case)
            except Hang:
                fig.add("hangs")
                problem = f"no answer in {VALIDATE_LIMIT} s: {case!r:.300}"
        if "outcome" in case:
            fig.add(f"optimizer calls {case['outcome']}")
        known = [bug for bug, applies in KNOWN_BUGS.items() if applies(case)]
        if problem and known and "no answer" not in problem:
            fig.add(f"known bug (reported, not fixed here): {known[0]}")
        elif problem:
            fig.fail("optimizer", problem)


# --- the soak ---


# --- sweep drivers killed ---------------------------------------------------------

# Two tiny trials: 60 steps on 600 examples, a row and a checkpoint every 20.
SWEEP_ARGS = ["--grid", "optimizer.beta1=0.8,0.9", "--workers", "1",
              "--training.max_steps", "60", "--training.eval_frequency", "20",
              "--training.checkpoint_frequency", "20", "--data.n_samples", "600",
              "--optimizer.learn_rate.warmup_steps", "5"]  # fmt: skip


def _left_behind(out: Path, before: set[Path]) -> list[str]:
    """Processes still running for the sweep in `out` (its trials name their
    folders; Ray's processes name its /tmp/optsvc-* folder), and new folders."""
    left = [str(p) for p in set(Path("/tmp").glob("optsvc-ray-*")) - before]
    folders = [str(out).encode(), *(p.encode() for p in left)]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if int(pid) != os.getpid() and any(f in cmd for f in folders):
            left.append(f"pid {pid}: {cmd[:120]!r}")
    return left


def sweep_campaign(n: int, rng: random.Random, work: Path, fig: Figures) -> None:
    """`n` sweep drivers killed with SIGKILL at a random moment, serially and
    on Ray by turns: nothing is left running, and `--resume` ends every trial
    with the final weights of an uninterrupted sweep, bit for bit."""
    from optsvc.sweep import ray_available

    folder = work / "sweeps"
    folder.mkdir(parents=True, exist_ok=True)
    engines = ["serial", "ray"] if ray_available() else ["serial"]
    reference = folder / "reference"
    code, out, err = run_subprocess(["sweep", QUICKSTART, "-o", reference,
                                     *SWEEP_ARGS, "--engine", "serial"])  # fmt: skip
    if code != 0:
        fig.fail("sweeps", f"the reference sweep: exit {code}\n{out}{err}")
        return
    trials = sorted(p.name for p in (reference / "trials").iterdir())
    for i in range(n):
        engine = engines[i % len(engines)]
        sweep = folder / f"sweep-{i:03d}"
        before = set(Path("/tmp").glob("optsvc-ray-*"))
        args = ["sweep", QUICKSTART, "-o", sweep, *SWEEP_ARGS, "--engine", engine]
        driver = subprocess.Popen(
            [*OPTSVC, *map(str, args)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.5, 8.0))  # a random moment, as a user's kill -9
        driver.kill()
        driver.wait()
        fig.add("sweep drivers killed")
        fig.add(f"sweep drivers killed: {engine}")
        deadline = time.monotonic() + 30
        while (left := _left_behind(sweep, before)) and time.monotonic() < deadline:
            time.sleep(0.2)
        if left:
            fig.fail("sweeps", f"{engine} driver killed: left behind {left[:5]}")
            continue
        if not (sweep / "sweep.json").exists():
            fig.add("sweep drivers killed before the sweep folder")
            continue
        code, out, err = run_subprocess([*args, "--resume"])
        if code is None:
            fig.add("hangs")
            fig.fail("sweeps", f"{engine} --resume did not finish")
            continue
        same = code == 0 and all(
            _same_arrays(
                final_arrays(sweep / "trials" / t),
                final_arrays(reference / "trials" / t),
            )  # fmt: skip
            for t in trials
        )
        if same:
            fig.add("sweeps resumed bit-identical")
        else:
            fig.fail(
                "sweeps", f"{engine} --resume: exit {code}\n{out[-800:]}{err[-800:]}"
            )
        shutil.rmtree(sweep, ignore_errors=True)


def _same_arrays(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# --- logger servers that are not there or go away ---------------------------------

# Installed through PYTHONPATH into the training process: it kills the MLflow
# server's process group as it appends its KILL_AT_ROW-th metrics row.
KILL_SERVER_AT_ROW = """\
import os, signal, sys
_rows = [0]


def _hook(event, args):
    if event != "open" or "a" not in str(args[1]):
        return
    if str(args[0]).endswith("metrics.jsonl"):
        _rows[0] += 1
        if _rows[0] == int(os.environ["KILL_AT_ROW"]):
            os.killpg(int(os.environ["KILL_GROUP"]), signal.SIGKILL)


if "KILL_GROUP" in os.environ:
    sys.addaudithook(_hook)
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mlflow_server(folder: Path) -> tuple[subprocess.Popen, str] | None:
    """A real MLflow tracking server on loopback, once it answers."""
    import urllib.request

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
         str(port), "--workers", "1", "--backend-store-uri",
         f"sqlite:///{folder / 'server.db'}", "--artifacts-destination",
         str(folder / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    uri, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                return server, uri
        except OSError:
            time.sleep(0.5)
    server.kill()
    return None


def logger_campaign(n: int, rng: random.Random, work: Path, fig: Figures) -> None:
    """`n` runs logging to MLflow by turns where nothing listens (refused at
    once, nothing trained) and to a real server killed at a random row (the
    run goes on to its end with one warning and every row in metrics.jsonl)."""
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        fig.add("logger cases skipped: mlflow not installed")
        return
    folder = work / "loggers"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        case = folder / f"case-{i:03d}"
        case.mkdir()
        dead = i % 2 == 0
        started = None if dead else _mlflow_server(case)
        uri = f"http://127.0.0.1:{_free_port()}" if dead else started and started[1]
        if uri is None:
            fig.fail("loggers", "the MLflow server did not start")
            continue
        cfg = case / "job.cfg"
        block = f'@loggers = "optsvc.MLflowLogger.v1"\ntracking_uri = "{uri}"\n'
        cfg.write_text(QUICKSTART.read_text() + "\n[training.logger]\n" + block)
        env = dict(os.environ)
        if started:
            (case / "sitecustomize.py").write_text(KILL_SERVER_AT_ROW)
            env.update(PYTHONPATH=str(case), KILL_GROUP=str(started[0].pid),
                       KILL_AT_ROW=str(rng.randrange(1, 6)))  # fmt: skip
        args = ["train", cfg, "-o", case / "run", "--training.max_steps", "300",
                "--training.eval_frequency", "50", "--data.n_samples", "600",
                "--optimizer.learn_rate.warmup_steps", "10"]  # fmt: skip
        try:
            done = subprocess.run(
                [*OPTSVC, *map(str, args)],
                capture_output=True,
                text=True,
                env=env,
                timeout=SUBPROCESS_LIMIT,
            )
        except subprocess.TimeoutExpired:
            fig.add("hangs")
            fig.fail("loggers", f"{'dead' if dead else 'dying'} server: no end")
            continue
        finally:
            if started and started[0].poll() is None:
                os.killpg(started[0].pid, signal.SIGKILL)
                started[0].wait()
        fig.add("logger cases")
        rows = [r["step"] for r in metric_rows(case / "run")] if not dead else []
        held = (
            done.returncode == 1 and "nothing answers at the MLflow" in done.stderr
            and not (case / "run" / "checkpoints").exists()
            if dead
            else done.returncode == 0 and "stopped answering" in done.stderr
            and rows == list(range(50, 301, 50))
        )  # fmt: skip
        if held:
            fig.add("logger cases held")
        else:
            fig.fail("loggers", f"exit {done.returncode}\n{done.stderr[-1500:]}")
        shutil.rmtree(case, ignore_errors=True)


def soak(
    *,
    kills: int,
    fuzz: int,
    seed: int,
    corruptions: int | None = None,
    cli: int | None = None,
    optimizer: int | None = None,
    work: Path | None = None,
    jobs: list[str] | None = None,
    sweeps: int = 0,
    loggers: int = 0,
) -> Figures:
    """The whole soak; the figures it counted."""
    rng = random.Random(seed)
    fig = Figures()
    owned = work is None
    work = Path(tempfile.mkdtemp(prefix="optsvc-soak-")) if owned else Path(work)
    corruptions = corruptions if corruptions is not None else max(4 * kills, 30)
    files = max(2 * kills, 2 * len(FILE_CASES))
    cli = cli if cli is not None else max(fuzz // 5, 100)
    optimizer = optimizer if optimizer is not None else max(fuzz // 5, 100)
    try:
        log(f"soak in {work}: jobs and their uninterrupted references")
        prepared = prepare_jobs(work, jobs)
        first = prepared[sorted(prepared)[0]]
        parts = [
            (f"crash campaign: {kills} kills", crash_campaign,
             (prepared, kills, rng, work, fig)),
            (f"corruption campaign: {corruptions} corruptions", corruption_campaign,
             (first, corruptions, rng, work, fig)),
            (f"files campaign: {files} cases", files_campaign,
             (first, files, rng, work, fig)),
            (f"optimizer API fuzz: {optimizer} calls", optimizer_fuzz,
             (optimizer, rng, fig)),
            (f"command-line fuzz: {cli} argument lists", cli_fuzz,
             (cli, rng, work, fig, prepared)),
            (f"config fuzz: {fuzz} configs", config_fuzz, (fuzz, rng, work, fig)),
            (f"sweep drivers: {sweeps} killed", sweep_campaign,
             (sweeps, rng, work, fig)),
            (f"logger servers: {loggers} cases", logger_campaign,
             (loggers, rng, work, fig)),
        ]  # fmt: skip
        for title, part, args in parts:
            log(f"{title} ({time.monotonic() - fig.started:.0f} s in)")
            try:
                part(*args)
            except Exception as err:  # a bug of the soak itself: say so, go on
                trace = "".join(traceback.format_exception(err))
                fig.fail("soak", f"{title} stopped: {trace[-3000:]}")
    finally:
        if owned:
            shutil.rmtree(work, ignore_errors=True)
    return fig


SUMMARY = [
    ("runs killed (SIGKILL)", "runs killed"),
    ("  of them mid-checkpoint (temporary folder left)",
     "runs killed mid-checkpoint (temporary folder left)"),
    ("runs resumed to the end", "runs resumed to the end"),
    ("resumes bit-identical to an uninterrupted run", "resumes bit-identical"),
    ("second trains refused by the lock", "second trains refused by the lock"),
    ("checkpoint corruptions injected", "corruptions injected"),
    ("checkpoint corruptions detected", "corruptions detected"),
    ("file cases (damage, special files, lock, foreign files)", "file cases"),
    ("  of them held", "file cases held"),
    ("sweep drivers killed (SIGKILL, serial and Ray)", "sweep drivers killed"),
    ("  sweeps resumed bit-identical", "sweeps resumed bit-identical"),
    ("MLflow servers not there or killed mid-run", "logger cases"),
    ("  of them held", "logger cases held"),
    ("configs fuzzed (optsvc validate)", "configs fuzzed"),
    ("  of them in subprocesses", "configs validated in subprocesses"),
    ("fuzzed configs trained (optsvc train)", "configs trained"),
    ("command lines fuzzed", "command lines fuzzed"),
    ("optimizer API calls fuzzed", "optimizer calls fuzzed"),
    ("tracebacks seen", "tracebacks"),
    ("internal errors seen", "internal errors"),
    ("hangs (timeouts) seen", "hangs"),
]  # fmt: skip


def summary(fig: Figures) -> str:
    lines = ["", "optsvc reliability soak", "-" * 60]
    for label, key in SUMMARY:
        lines.append(f"{label:<50} {fig.counts[key]:>9,}")
    failed = sum(v for k, v in fig.counts.items() if k.startswith("failed: "))
    lines.append(f"{'promises broken':<50} {failed:>9,}")
    for key, count in sorted(fig.counts.items()):
        if key.startswith("known bug"):
            lines.append(f"{count:>6,} x {key}")
    lines.append("-" * 60)
    lines.append(f"{'seconds':<50} {time.monotonic() - fig.started:>9,.0f}")
    lines.append("all promises held" if fig.ok else "SOME PROMISES WERE BROKEN:")
    lines += fig.failures[:30]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=50, help="SIGKILLs to land")
    parser.add_argument("--fuzz", type=int, default=10_000, help="configs to fuzz")
    parser.add_argument(
        "--corruptions",
        type=int,
        default=None,
        help="checkpoint corruptions (default: 4 per kill)",
    )
    parser.add_argument(
        "--cli",
        type=int,
        default=None,
        help="command lines to fuzz (default: fuzz / 5)",
    )
    parser.add_argument(
        "--optimizer",
        type=int,
        default=None,
        help="optimizer calls to fuzz (default: fuzz / 5)",
    )
    parser.add_argument(
        "--sweeps", type=int, default=0, help="sweep drivers to kill (serial and Ray)"
    )
    parser.add_argument(
        "--loggers", type=int, default=0, help="MLflow server faults to try"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write figures here")
    parser.add_argument(
        "--work",
        type=Path,
        default=None,
        help="work folder (default: a temporary one, removed)",
    )
    args = parser.parse_args(argv)  # fmt: skip
    fig = soak(
        kills=args.kills,
        fuzz=args.fuzz,
        seed=args.seed,
        corruptions=args.corruptions,
        cli=args.cli,
        optimizer=args.optimizer,
        work=args.work,
        sweeps=args.sweeps,
        loggers=args.loggers,
    )
    print(summary(fig), flush=True)
    if args.json:
        report = {
            "command": "python tests/soak.py "
            + " ".join(sys.argv[1:] if argv is None else argv),
            "seed": args.seed,
            "optsvc": __import__("optsvc").__version__,
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            "platform": sys.platform,
            **fig.as_dict(),
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1, default=str) + "\n")
    return 0 if fig.ok else 1


if __name__ == "__main__":
    sys.exit(main())
