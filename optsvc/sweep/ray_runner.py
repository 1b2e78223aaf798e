"""The Ray Tune runner: the sweep's trials in parallel, on a private local
Ray instance or on an existing cluster (`address`).

A private instance listens on loopback only, keeps its files in a short-lived
folder under /tmp (never in the home folder) and is shut down at the end, with
every process it started; a watchdog ends those processes and removes the
folder if the driver is killed. Ray is imported only here, and only when used.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from optsvc.errors import MissingExtraError, RunError
from optsvc.sweep.plan import Trial
from optsvc.sweep.results import FAILED, FINISHED, STOPPED, Tracker
from optsvc.sweep.trial import last_error, run_trial
from optsvc.training.run_folder import RunFolder

RAY_EXTRA = "pip install 'optsvc[ray]'"
# A private instance: loopback only (Ray's switch for single-machine use), no
# token in ~/.ray, no usage reports.
LOCAL_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
}
# Tune's terminal output (the sweep shows its own table): the legacy engine,
# which `verbose=0` silences; the new one prints trial errors regardless.
# Ctrl-C: Tune's own handler waits (10 s and more) for trials blocked in
# `optsvc train` to stop; a plain KeyboardInterrupt shuts Ray down at once,
# and the trials' checkpoints are all --resume needs.
TUNE_ENV = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_DISABLE_SIGINT_HANDLER": "1"}
OBJECT_STORE_BYTES = 100 * 1024 * 1024  # trials pass nothing through it
ASHA_REDUCTION = 4


class TrialFailed(RuntimeError):
    """`optsvc train` ended with an error; the message is that error."""


def ray_available() -> bool:
    """Whether Ray Tune is installed (looked up without importing Ray, whose
    settings are read from the environment when it is first imported)."""
    try:
        spec = importlib.util.find_spec("ray")
    except (ImportError, ValueError):
        return False
    places = (spec.submodule_search_locations or []) if spec else []
    return any((Path(place) / "tune").is_dir() for place in places)


def _import_ray():
    try:
        import ray
        import ray.tune  # noqa: F401
    except ImportError as err:
        raise MissingExtraError(
            f"Ray Tune cannot be imported ({err}); {RAY_EXTRA}"
        ) from None
    return ray


def tune_trial(config: dict[str, Any]) -> None:
    """The Tune trainable: one trial, reporting each evaluation row."""
    from ray import tune

    def report(row: dict[str, Any]) -> None:
        tune.report({"step": row["step"], **_metrics(row)})

    trial = config["trial"]
    run = run_trial(Path(trial["folder"]), gpu=trial["gpu"], on_row=report)
    if not run.ok:
        raise TrialFailed(run.error)


def _metrics(row: dict[str, Any]) -> dict[str, float]:
    # Tune needs a number for the metric in every report; NaN when missing.
    return {k: math.nan if row.get(k) is None else row[k] for k in ("score", "loss")}


@contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_TMP = "/tmp" if Path("/tmp").is_dir() else None  # short paths, never the home


@contextmanager
def ray_session(address: str | None, cpus: int | None) -> Iterator[str | None]:
    """Connect to the cluster at `address`, or start a private local instance
    with `cpus` CPUs (yields its folder); disconnect (and stop it) when done."""
    with ExitStack() as undo:  # undone in the reverse order
        if address is None:
            # A short root: Ray's socket paths must stay under 107 bytes.
            root = tempfile.TemporaryDirectory(
                prefix="optsvc-ray-", dir=_TMP, ignore_cleanup_errors=True
            )
            options = {
                "address": "local",
                "num_cpus": cpus,
                "include_dashboard": False,
                "object_store_memory": OBJECT_STORE_BYTES,
                "_temp_dir": undo.enter_context(root),
            }
            undo.callback(_watchdog(options["_temp_dir"]))
            undo.enter_context(_environ(LOCAL_ENV))
            ray = _import_ray()
            # Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, when first
            # imported: where this process imported it earlier, the driver
            # would still take the host's address for the private instance.
            constants = ray._private.ray_constants
            cluster = constants.ENABLE_RAY_CLUSTER
            undo.callback(setattr, constants, "ENABLE_RAY_CLUSTER", cluster)
            constants.ENABLE_RAY_CLUSTER = False
        else:
            options = {"address": address}
            ray = _import_ray()
        undo.callback(_shutdown, ray)
        term = signal.getsignal(signal.SIGTERM)
        try:
            with _ctrl_c_after():
                ray.init(**options, logging_level=logging.ERROR, log_to_driver=False)
        except Exception as err:  # a process of Ray's died, a cluster refused, ...
            where = f"the Ray cluster at {address}" if address else "Ray"
            raise RunError(
                f"{where} did not start ({type(err).__name__}: {err}); continue "
                "the sweep with --resume, or without Ray with --engine serial"
            ) from None
        if term is not None and threading.current_thread() is threading.main_thread():
            # Ray's core worker puts its own handler in, which prints a C++
            # stack and exits: SIGTERM goes back to what the command set.
            signal.signal(signal.SIGTERM, term)
        yield options.get("_temp_dir")


# Run beside a private Ray instance: while the driver lives it notes the
# driver's descendants (Ray's processes, which may retitle themselves) twice a
# second; when the driver's end of its stdin closes (the driver ended, or was
# killed with SIGKILL), it ends each of them still running, and every process
# that names the instance's folder, and removes the folder.
_WATCHDOG = """\
import os, select, shutil, signal, sys
root, driver, me = sys.argv[1], os.getppid(), os.getpid()


def table():
    procs = {}  # pid: (ppid, start time)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        procs[int(pid)] = (int(fields[1]), fields[19])
    return procs


def named(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return root.encode() in f.read()
    except OSError:
        return False


known = {}
while True:
    procs = table()
    tree, grown = {driver}, True
    while grown:
        new = {p for p, (ppid, _) in procs.items() if ppid in tree} - tree
        tree |= new
        grown = bool(new)
    known.update({p: procs[p][1] for p in tree - {driver, me}})
    if select.select([sys.stdin], [], [], 0.5)[0] and not os.read(0, 4096):
        break
for pid, (_, start) in table().items():
    if pid != me and (known.get(pid) == start or named(pid)):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
shutil.rmtree(root, ignore_errors=True)
"""


def _watchdog(root: str):
    """Start the watchdog of the private instance in `root` (Linux: it reads
    /proc); returns what ends it once the instance was shut down."""
    if not sys.platform.startswith("linux"):
        return lambda: None
    proc = subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, root], stdin=subprocess.PIPE,
        start_new_session=True,  # Ctrl-C to the driver's group spares it
    )  # fmt: skip

    def stop() -> None:
        proc.stdin.close()
        proc.wait()

    return stop


def _shutdown(ray) -> None:
    with _ctrl_c_after():
        ray.shutdown()


@contextmanager
def _ctrl_c_after() -> Iterator[None]:
    """A Ctrl-C while Ray starts or stops is raised once `ray.init` or
    `ray.shutdown` returns (raised inside them, it can leave Ray's threads
    half-started and crash the exit); a second one is raised at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []

    def hold(signum, frame):
        if pending:
            raise KeyboardInterrupt
        pending.append(signum)

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt


def _callback(tracker: Tracker):
    from ray import tune

    class SweepCallback(tune.Callback):
        """Trial events from Tune, in the driver, to the tracker."""

        def on_trial_start(self, iteration, trials, trial, **info):
            tracker.start(_name(trial))

        def on_trial_result(self, iteration, trials, trial, result, **info):
            tracker.progress(_name(trial), result)

        def on_trial_recover(self, iteration, trials, trial, **info):
            tracker.retry(_name(trial), last_error(tracker.folder(_name(trial))))

        def on_trial_error(self, iteration, trials, trial, **info):
            name = _name(trial)
            tracker.end(name, FAILED, last_error(tracker.folder(name)))

        def on_trial_complete(self, iteration, trials, trial, **info):
            # A trial ASHA stopped ends here too, without final weights.
            name = _name(trial)
            run = RunFolder(tracker.folder(name))
            done = run.final.exists()
            if not done:  # the trial's folder records it, for --resume
                run.write_mark("stopped")
            tracker.end(name, FINISHED if done else STOPPED)

    return SweepCallback()


def _name(trial) -> str:
    return trial.config["trial"]["name"]


def run_ray(
    trials: Sequence[Trial],
    tracker: Tracker,
    *,
    workers: int | None = None,
    gpus_per_trial: float = 0,
    retries: int = 0,
    address: str | None = None,
    early_stop: bool = False,
) -> bool:
    """Run `trials` with Ray Tune; True when the sweep was interrupted. Only
    run_sweep calls it, after choose_engine checked that Ray is installed."""
    cpus = None if address else max(workers or os.cpu_count() or 1, 1)
    with ray_session(address, cpus) as root, ExitStack() as undo:
        from ray import tune

        # Tune's own experiment state (tuner.pkl, a pickle) stays out of the
        # sweep folder (--resume reads the trial folders, never it): in the
        # private instance's folder, or a temporary one beside a cluster's.
        storage_path = undo.enter_context(tempfile.TemporaryDirectory(
            prefix="optsvc-tune-", dir=root or _TMP, ignore_cleanup_errors=True
        ))  # fmt: skip

        space = [
            {"name": t.name, "folder": str(tracker.folder(t.name).resolve()),
             "gpu": gpus_per_trial > 0}
            for t in trials
        ]  # fmt: skip
        trainable = tune.with_resources(
            tune_trial,
            {"cpu": 1, "gpu": gpus_per_trial} if gpus_per_trial else {"cpu": 1},
        )
        tune_config = tune.TuneConfig(
            metric=tracker.metric,
            mode=tracker.mode,
            scheduler=_asha(trials) if early_stop else None,
            max_concurrent_trials=workers,
            reuse_actors=True,
            trial_name_creator=_name,
            trial_dirname_creator=_name,
        )
        run_config = tune.RunConfig(
            name="tune",
            storage_path=storage_path,
            failure_config=tune.FailureConfig(max_failures=retries),
            callbacks=[_callback(tracker)],
            verbose=0,
        )
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search(space)},
            tune_config=tune_config,
            run_config=run_config,
        )
        quiet = logging.getLogger("ray.tune")
        level = quiet.level
        # Tune's own advice (Tuner.restore) does not apply: --resume does that.
        quiet.setLevel(logging.CRITICAL)
        try:
            with _environ(TUNE_ENV):
                tuner.fit()
        finally:
            quiet.setLevel(level)
    unfinished = any(r.status == "running" for r in tracker.rows.values())
    tracker.interrupt()
    return unfinished or any(tracker.rows[t.name].status == "pending" for t in trials)


def _asha(trials: Sequence[Trial]):
    from ray.tune.schedulers import ASHAScheduler

    # Rungs on the trial's own step (Tune's iteration count restarts after a
    # retry), the first at the first evaluation.
    return ASHAScheduler(
        time_attr="step",
        max_t=max(t.max_steps for t in trials),
        grace_period=min(t.eval_frequency for t in trials),
        reduction_factor=ASHA_REDUCTION,
    )
