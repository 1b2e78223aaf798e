"""The folder of one run: every fact about it, in one place.

The folder holds ``run.json`` (optsvc's mark on its run folders, written
before anything else), the filled config (``config.cfg``), ``metrics.jsonl``,
``checkpoints/``, ``best.safetensors`` (the best evaluation's weights) and
``final.safetensors``, and ``.lock`` while a process trains in it. `RunFolder`
names those files, reads them back (metrics rows as `MetricsRow` records, the
newest checkpoint's state, the weights files) and says what the run is:
running, finished, interrupted or failed (`status`). Before any training it
decides: one process at a time (the lock), whether a folder that already
holds a run is refused, continued (``--resume``) or replaced
(``--overwrite``), which checkpoint a resume continues from, and tidies what
a killed writer left. optsvc deletes, overwrites and resumes only in a folder
that holds its mark, and only the files it names: anything else is left
alone and named. `analysis`, `sweep` and the CLI ask it; none of them
knows a file name. `check_resumable` says whether a checkpoint may be
continued with the current config, with a diff of what changed when not.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from optsvc.config import config_to_str
from optsvc.errors import RunError, StateError
from optsvc.fileio import (
    ARRAYS_LIMIT,
    decode_arrays,
    encode_arrays,
    read_regular,
    write_atomic,
)
from optsvc.loggers import metrics
from optsvc.loggers.metrics import FailureRecord
from optsvc.records import Record
from optsvc.training import checkpoints
from optsvc.training.checkpoints import check_checkpoint_folder, load_latest_checkpoint
from optsvc.training.lock import RunLock, lock_held, lock_holder
from optsvc.training.state import (
    EARLY_STOP,
    Resumable,
    StateRecord,
    comparable,
    same_config,
    with_defaults,
)

MARK, CONFIG, METRICS, CHECKPOINTS = (
    "run.json",
    "config.cfg",
    metrics.FILE,
    "checkpoints",
)
BEST, FINAL = "best.safetensors", "final.safetensors"
RUN_FILES = (MARK, CONFIG, METRICS, CHECKPOINTS, BEST, FINAL)
# What an optsvc before 0.2 wrote (checkpoint format 1: arrays in .npz).
LEGACY = ("final.npz", "best.npz")
STATUSES = ("running", "finished", "interrupted", "failed", "pending")


class RunMark(Record):
    """run.json: the folder is an optsvc run folder. A sweep marks each
    trial's folder "planned" when it writes its config; training marks it
    "started" before it writes anything else."""

    written_by: Literal["optsvc"] = "optsvc"
    format: Literal[2] = checkpoints.VERSION
    state: Literal["planned", "started"]


class RunFolder:
    """The folder of one run, and what may be done with it.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d, RunFolder(d) as folder:
    ...     folder.holds_run()
    False
    """

    def __init__(self, path: str | os.PathLike) -> None:
        if not os.fspath(path):  # Path("") would be the current folder
            raise RunError("the output folder is empty; give a folder with -o")
        self.path = Path(path)
        self.mark_file = self.path / MARK
        self.config_file = self.path / CONFIG
        self.metrics = self.path / METRICS
        self.checkpoints = self.path / CHECKPOINTS
        self.final = self.path / FINAL
        self.best = self.path / BEST
        self._lock: RunLock | None = None

    # --- one process at a time --------------------------------------------------------

    def lock(self) -> RunFolder:
        """Create the folder if needed and take its lock (RunError while
        another process holds it); then remove what killed writers left."""
        if self.path.exists() and not self.path.is_dir():
            raise RunError(
                f"output path '{self.path}' is a file; give a folder with -o"
            )
        try:  # the first write into the folder: say which one it is
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock = RunLock(self.path)
        except OSError as err:  # read-only, no permission, no space
            raise RunError(
                f"cannot write in '{self.path}' ({err.strerror or err}); give a "
                "folder you can write with -o"
            ) from None
        self.remove_leftovers()
        return self

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> RunFolder:
        return self.lock()

    def __exit__(self, *exc) -> None:
        self.release()

    def remove_leftovers(self) -> None:
        """Temporary files of an earlier, killed writer (the lock is held, so
        no other process writes here). Saving a checkpoint also tidies its
        folder, but a run resumed at its last step saves none."""
        for path in self.path.glob(".*.tmp-*"):
            if path.is_file():
                path.unlink(missing_ok=True)
        for pattern in (".tmp-step-*", ".del-step-*"):
            for path in self.checkpoints.glob(pattern):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)

    # --- what is here -----------------------------------------------------------------

    def holds_run(self) -> bool:
        """Whether anything of a run is here (even a partial one)."""
        return any(os.path.lexists(self.path / name) for name in RUN_FILES)

    def is_run(self) -> bool:
        """Whether this is a run folder optsvc wrote (or one being started)."""
        if not self.path.is_dir():
            return False
        return self._marked() or lock_held(self.path) is True

    def _marked(self) -> bool:
        return self.mark_file.is_file() and not self.mark_file.is_symlink()

    def mark(self) -> RunMark | None:
        """The folder's run.json, or None when it has none (RunError when it
        is damaged)."""
        if not os.path.lexists(self.mark_file):
            return None
        try:
            data = read_regular(self.mark_file, MARK_LIMIT, MARK)
            return RunMark.parse(data, f"'{self.mark_file}'")
        except (StateError, OSError) as err:
            raise RunError(
                f"cannot read '{self.mark_file}' ({err}), which marks the folder "
                "as an optsvc run; give another folder with -o"
            ) from None

    def write_mark(self, state: Literal["planned", "started"]) -> None:
        """Mark the folder as optsvc's run folder (see `RunMark`)."""
        write_atomic(self.mark_file, RunMark(state=state).to_json())

    def _foreign(self, own_config: bool) -> list[str]:
        """Without a run.json, what is here under a name optsvc uses: files
        optsvc did not write (`own_config`: config.cfg is the one given)."""
        names = [n for n in (*RUN_FILES, *LEGACY) if os.path.lexists(self.path / n)]
        return [n for n in names if not (n == CONFIG and own_config)]

    def saved_work(self) -> bool:
        """Whether a run here saved anything worth keeping (a checkpoint, its
        best or its final weights), which a new run must not replace unasked."""
        return self.best.exists() or self.resumable()

    def resumable(self) -> bool:
        """Whether --resume has something to continue from: a checkpoint, or
        the final weights of a run that ended."""
        if self.final.exists():
            return True
        return self.checkpoints.is_dir() and any(self.checkpoints.iterdir())

    def read_metrics(self) -> tuple[list[dict[str, Any]], FailureRecord | None]:
        """The evaluation rows of metrics.jsonl, and the failure it records
        (`optsvc.loggers.metrics.read_metrics`)."""
        return metrics.read_metrics(self.metrics)

    def latest_state(self) -> StateRecord | None:
        """The state of the newest checkpoint whose manifest and state.json
        verify (not its arrays: a quick look), or None."""
        try:
            candidates = checkpoints.newest_first(self.checkpoints)
        except (StateError, OSError):
            return None
        for path in candidates:
            try:
                manifest = checkpoints.read_manifest(path)
                entry = manifest.files[checkpoints.STATE]
                data = checkpoints.read_file(path, checkpoints.STATE, entry)
                return StateRecord.parse(data, f"{path}: {checkpoints.STATE}")
            except StateError:
                continue
        return None

    def status(
        self, failure: FailureRecord | None, state: StateRecord | None
    ) -> tuple[str, str]:
        """What the run is (one of STATUSES) and a note: running while a live
        process holds the lock, finished once final weights exist (the note
        says if it stopped early), failed when it recorded a failure,
        interrupted while a checkpoint can continue it, else failed."""
        held = lock_held(self.path)
        if held:
            holder = lock_holder(self.path)
            return "running", f"pid {holder}" if holder else ""
        note = "" if held is False else "the lock file cannot be read"
        if self.final.exists():
            early = "stopped early" if state and state.stopped == EARLY_STOP else ""
            return "finished", "; ".join(n for n in (note, early) if n)
        if failure is not None:
            return "failed", failure.error
        if state is not None:
            return "interrupted", note
        try:
            mark = self.mark()
        except RunError as err:
            return "failed", str(err)
        if mark is not None and mark.state == "planned":
            return "pending", "a sweep's trial, not started yet"
        return "failed", note or "ended before its first checkpoint"

    # --- refuse, resume or overwrite ------------------------------------------------

    def check_flags(
        self, *, resume: bool, overwrite: bool, extend: bool, config_source=None
    ) -> None:
        """RunError for flags that cannot mean what was asked, before the folder
        is created or locked: --resume with --overwrite, --extend without
        --resume, --resume where no run is."""
        if resume and overwrite:
            raise RunError(
                "--resume continues the run in the folder and --overwrite replaces "
                "it; give one of them"
            )
        if extend and not resume:
            raise RunError(
                "--extend lengthens a run that is resumed; add --resume, or leave "
                "--extend out"
            )
        self.check_owner(config_source)
        if resume and not (self.path.is_dir() and any(self.path.iterdir())):
            # nothing there at all (a mistyped or empty folder); a folder a
            # run was started in, even killed at once, resumes from step 0
            raise RunError(
                f"'{self.path}' holds no run to resume; check the folder, or start "
                f"a run there without --resume"
            )

    def begin(
        self,
        *,
        resume: bool,
        overwrite: bool,
        warn: Callable[[str], None],
        read: Callable[[checkpoints.Checkpoint], Resumable],
        config_source: str | None = None,
    ) -> Resumable | None:
        """Apply --resume / --overwrite to this (locked) folder: what `read`
        makes of the newest checkpoint it accepts, to continue from, or None
        to start at step 0. A run already here is refused without either
        flag, and removed with --overwrite alone. A folder without run.json
        that holds files under the names of a run is refused whatever the
        flags: optsvc did not write them (`config_source`, the config file
        given, may be its config.cfg). Marks the folder as started."""
        legacy = False
        if self.mark() is None:
            version = checkpoints.written_by_optsvc(self.checkpoints)
            legacy = version is not None
            if legacy and resume and version < checkpoints.VERSION:
                raise RunError(
                    f"'{self.path}' was written by optsvc 0.1 (checkpoint format 1, "
                    "arrays in .npz), which this optsvc does not read; continue it "
                    "with optsvc 0.1, or start again with --overwrite"
                )
            if not legacy:
                self.check_owner(config_source)
        holds = self.holds_run() and (legacy or self.mark() is not None)
        if holds and not (resume or overwrite):
            if self.saved_work() or self.read_metrics()[1] is None:
                raise RunError(
                    f"'{self.path}' already holds a run; add --resume to continue it "
                    "or --overwrite to start again"
                )
            # a run that failed before its first checkpoint (a NaN, say)
            warn(f"replacing the run in {self.path}, which failed and saved nothing")
            self.clear()
        if resume or not overwrite:  # decided before training, not at its first save
            check_checkpoint_folder(self.checkpoints)
        if overwrite:
            kept = self.clear(legacy=legacy)
            if kept:
                warn(
                    f"kept {', '.join(kept)} in {self.checkpoints}: optsvc did not "
                    "write them"
                )
        self.write_mark("started")
        if not resume:  # a missing checkpoints/ resumes from step 0
            return None
        try:
            return load_latest_checkpoint(self.checkpoints, warn=warn, read=read)
        except StateError as err:
            raise RunError(
                f"cannot resume, {err}; start again with --overwrite"
            ) from None

    def check_owner(self, config_source: str | None = None) -> None:
        """RunError when the folder holds files under the names of a run but
        no run.json: optsvc did not write them, and leaves them alone
        (`config_source`, the config file given, may be its config.cfg)."""
        if not self.path.is_dir() or self.mark() is not None:
            return
        if checkpoints.written_by_optsvc(self.checkpoints) is not None:
            return  # a run of an optsvc before run.json
        given = config_source is not None
        names = self._foreign(given and _same_file(config_source, self.config_file))
        if not names:
            return
        listed = ", ".join(n + ("/" if n == CHECKPOINTS else "") for n in names)
        raise RunError(
            f"'{self.path}' holds {listed}, which optsvc did not write (it has no "
            f"{MARK}); optsvc leaves them alone: give another folder with -o"
        )

    def clear(self, legacy: bool = False) -> list[str]:
        """Remove the run in this folder (for --overwrite): the files optsvc
        names (`legacy`: and those of optsvc 0.1) and the checkpoints it
        wrote. Anything else in checkpoints/ is kept; its names are returned."""
        for name in RUN_FILES + (LEGACY if legacy else ()):
            target = self.path / name
            if name == CHECKPOINTS and target.is_dir() and not target.is_symlink():
                continue
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif os.path.lexists(target):
                target.unlink()
        if not (self.checkpoints.is_dir() and not self.checkpoints.is_symlink()):
            return []
        kept = []
        for entry in sorted(os.listdir(self.checkpoints)):
            path = self.checkpoints / entry
            if not checkpoints.is_own(entry):
                kept.append(entry)
            elif path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        if not kept:
            self.checkpoints.rmdir()
        return kept

    # --- what the run writes ----------------------------------------------------------

    def write_config(self, config: dict) -> None:
        """The config as run: overrides applied, defaults written out."""
        write_atomic(self.config_file, config_to_str(with_defaults(config)).encode())

    def truncate_metrics(self, step: int) -> None:
        """Drop metrics rows past `step`, which the run will redo (all of
        them on a fresh start, at step 0), and lines that a kill tore or the
        disk damaged."""
        if not self.metrics.exists():
            return
        kept = [
            line + b"\n"
            for line, row in metrics.read_lines(self.metrics)
            if isinstance(row, metrics.MetricsRow) and row.step <= step
        ]
        write_atomic(self.metrics, b"".join(kept))

    def record_failure(self, error: str) -> None:
        """Note in metrics.jsonl that the run failed before anything it could
        resume from (`optsvc runs` shows it; a new run may then replace one
        that saved nothing)."""
        metrics.append(self.metrics, FailureRecord(status="failed", error=error))

    def write_weights(self, path: Path, arrays: dict[str, np.ndarray]) -> None:
        """final.safetensors or best.safetensors, atomically: a kill leaves
        the old file or the new one, never a torn one."""
        write_atomic(path, encode_arrays(arrays))

    def holds(self, path: Path, arrays: dict[str, np.ndarray]) -> bool:
        """Whether `path` (final or best weights) holds exactly `arrays`, so
        needs no rewriting: the bytes that writing them would write (the
        encoding is deterministic); False when it is missing or unreadable."""
        try:
            saved = read_regular(path, ARRAYS_LIMIT, "weights file")
        except StateError:
            return False
        return saved == encode_arrays(arrays)

    def weights_file(self, which: str) -> Path:
        """best.safetensors or final.safetensors: "best" or "final"."""
        return self.best if which == "best" else self.final

    def read_weights(self, which: str) -> dict[str, np.ndarray]:
        """The arrays of the run's "best" or "final" weights; RunError, with
        what to do, when there are none, StateError when they are damaged."""
        path = self.weights_file(which)
        if not os.path.lexists(path):
            raise RunError(self._no_weights(which))
        try:
            return _read_arrays(path)
        except StateError:  # not a regular file, torn, damaged
            raise StateError(
                f"'{path}' is damaged (not readable safetensors); optsvc train "
                f"--resume -o {self.path} writes it again from the run's last "
                "checkpoint"
            ) from None

    def _no_weights(self, which: str) -> str:
        run = self.path
        if not self.best.exists() and not self.final.exists():
            return (
                f"'{run}' holds no weights yet: the run has not reached its first "
                f"evaluation; continue it with optsvc train --resume -o {run}"
            )
        if which == "final":
            return (
                f"'{run}' has no {FINAL}: the run has not finished; continue it "
                f"with optsvc train --resume -o {run}, or use its best weights "
                "(--weights best)"
            )
        return (
            f"'{run}' has no {BEST}: the run has not been evaluated yet; use its "
            "final weights (--weights final)"
        )


MARK_LIMIT = 4096  # run.json is about 80 bytes


def _same_file(a: str | os.PathLike, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    data = read_regular(path, ARRAYS_LIMIT, "weights file")
    return decode_arrays(data, f"'{path}' is not readable")[0]


def config_diff(old: Any, new: Any, path: str = "") -> list[str]:
    """Dotted paths whose values differ, as 'path: old -> new' lines.

    >>> config_diff({"a": {"b": 1}}, {"a": {"b": 2}})
    ['a.b: 1 -> 2']
    """
    if isinstance(old, dict) and isinstance(new, dict):
        lines = []
        for key in sorted(set(old) | set(new), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in new:
                lines.append(f"{where}: {old[key]!r} -> (removed)")
            elif key not in old:
                lines.append(f"{where}: (absent) -> {new[key]!r}")
            else:
                lines += config_diff(old[key], new[key], where)
        return lines
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]


def check_resumable(state, relevant: dict, max_steps: int, allow_extend: bool) -> None:
    """RunError unless a run at `state` (a TrainState) may continue with this
    config: the training-relevant values unchanged (else a diff), and
    max_steps not below the step, nor changed without --extend."""
    lengthened = state.max_steps not in (None, max_steps)
    if state.config is not None and not same_config(state.config, relevant):
        lines = config_diff(comparable(state.config), comparable(relevant))
        hint = (
            "\n(values written as ${training.max_steps} follow max_steps, so "
            "--extend cannot lengthen a run whose schedule depends on it)"
        )
        raise RunError(
            "the config changed since the checkpoint, so the run cannot be resumed "
            "as it was:\n  " + "\n  ".join(lines) + "\nrestore those values, or start "
            "a new run with -o NEW_DIR or --overwrite" + (hint if lengthened else "")
        )
    if state.step > max_steps:
        raise RunError(
            f"the checkpoint is at step {state.step}, past training.max_steps "
            f"({max_steps}); there is nothing left to run"
        )
    if lengthened and not allow_extend:
        raise RunError(
            f"training.max_steps changed from {state.max_steps} to {max_steps}; add "
            "--extend to continue the run to the new length"
        )


__all__ = [
    "RunFolder",
    "RUN_FILES",
    "STATUSES",
    "check_resumable",
    "config_diff",
]
