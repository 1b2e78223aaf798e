"""A run folder and its rules, apart from the loop that fills it.

The folder holds the filled config (``config.cfg``), ``metrics.jsonl``,
``checkpoints/``, ``best.npz`` (the best evaluation's weights) and
``final.npz``, and ``.lock`` while a process trains in it. `RunFolder`
decides, before any training: one process at a time (the lock), whether a
folder that already holds a run is refused, continued (``--resume``) or
replaced (``--overwrite``), which checkpoint a resume continues from, and
tidies what a killed writer left. `check_resumable` says whether a checkpoint
may be continued with the current config, with a diff of what changed when
not.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from optsvc.config import SystemSection, TrainingSection, config_to_str
from optsvc.errors import OptsvcError, RunError, StateError
from optsvc.fileio import TEXT_LIMIT, read_regular, write_atomic
from optsvc.training.checkpoint_format import arrays_from_bytes, arrays_to_bytes
from optsvc.training.checkpoints import (
    Checkpoint,
    check_checkpoint_folder,
    load_latest_checkpoint,
)
from optsvc.training.lock import RunLock
from optsvc.training.state import (
    NOT_RELEVANT,
    TrainState,
    comparable,
    relevant_config,
    same_config,
)

# best.npz and final.npz are read whole; only a regular file is read at all.
WEIGHTS_LIMIT = 2**38
RUN_FILES = ("config.cfg", "metrics.jsonl", "checkpoints", "best.npz", "final.npz")


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
        self.config_file = self.path / "config.cfg"
        self.metrics = self.path / "metrics.jsonl"
        self.checkpoints = self.path / "checkpoints"
        self.final = self.path / "final.npz"
        self.best = self.path / "best.npz"
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
        except RunError as err:
            raise RunError(str(err)) from None
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

    # --- refuse, resume or overwrite ------------------------------------------------

    def holds_run(self) -> bool:
        """Whether anything of a run is here (even a partial one)."""
        return any(os.path.lexists(self.path / name) for name in RUN_FILES)

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

    def record_failure(self, error: str) -> None:
        """Note in metrics.jsonl that the run failed before anything it could
        resume from (`optsvc runs` shows it; a new run may then replace one
        that saved nothing)."""
        with self.metrics.open("a", encoding="utf8") as f:
            f.write(json.dumps({"status": "failed", "error": error}) + "\n")

    def recorded_failure(self) -> bool:
        """Whether the run here recorded that it failed (its last line)."""
        try:
            lines = read_regular(self.metrics, TEXT_LIMIT, "metrics log").splitlines()
            return json.loads(lines[-1].decode("utf8")).get("status") == "failed"
        except (OSError, OptsvcError, ValueError, IndexError, AttributeError):
            return False

    def check_flags(self, *, resume: bool, overwrite: bool, extend: bool) -> None:
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
        check: Callable[[Checkpoint], TrainState] = TrainState.from_checkpoint,
    ) -> tuple[Checkpoint | None, TrainState | None]:
        """Apply --resume / --overwrite to this (locked) folder: the newest
        good checkpoint and its state to continue from, or (None, None) to
        start at step 0. A run already here is refused without either flag,
        and removed with --overwrite alone."""
        if self.holds_run() and not (resume or overwrite):
            if self.saved_work() or not self.recorded_failure():
                raise RunError(
                    f"'{self.path}' already holds a run; add --resume to continue it "
                    "or --overwrite to start again"
                )
            # a run that failed before its first checkpoint (a NaN, say)
            warn(f"replacing the run in {self.path}, which failed and saved nothing")
            self.clear()
        if resume or not overwrite:  # decided before training, not at its first save
            check_checkpoint_folder(self.checkpoints)
        if resume:
            return self.latest_checkpoint(warn, check)
        if overwrite:
            self.clear()
        return None, None

    def latest_checkpoint(
        self,
        warn: Callable[[str], None],
        check: Callable[[Checkpoint], TrainState] = TrainState.from_checkpoint,
    ) -> tuple[Checkpoint | None, TrainState | None]:
        """The newest checkpoint that verifies and whose state reads back, and
        that state; (None, None) when there is none. Each bad newer one is
        skipped with a warning."""
        if not self.checkpoints.is_dir():
            return None, None
        states: dict[Path, TrainState] = {}  # what `check` made of each one read

        def keep(checkpoint: Checkpoint) -> None:
            states[checkpoint.path] = check(checkpoint)

        try:
            checkpoint = load_latest_checkpoint(self.checkpoints, warn=warn, check=keep)
        except StateError as err:
            raise RunError(
                f"cannot resume, {err}; start again with --overwrite"
            ) from None
        if checkpoint is None:
            return None, None
        return checkpoint, states[checkpoint.path]

    def clear(self) -> None:
        """Remove the run in this folder (for --overwrite)."""
        for name in RUN_FILES:
            target = self.path / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif os.path.lexists(target):
                target.unlink()

    # --- what the run writes ----------------------------------------------------------

    def write_config(
        self, config: dict, system: SystemSection, settings: TrainingSection
    ) -> None:
        """The config as run: overrides applied, defaults written out."""
        write_atomic(self.config_file, filled_config(config, system, settings).encode())

    def reset_metrics(self) -> None:
        """A fresh start: no rows of an earlier attempt."""
        self.metrics.unlink(missing_ok=True)

    def truncate_metrics(self, step: int) -> None:
        """Drop metrics rows past `step`, which the resumed run will redo, and
        lines that a kill tore or the disk damaged."""
        if not self.metrics.exists():
            return
        keep = []
        for raw in read_regular(self.metrics, TEXT_LIMIT, "metrics log").splitlines():
            try:
                if json.loads(raw.decode("utf8"))["step"] <= step:
                    keep.append(raw + b"\n")
            except (ValueError, KeyError, TypeError, RecursionError):
                continue  # UnicodeDecodeError is a ValueError too
        write_atomic(self.metrics, b"".join(keep))

    def write_weights(self, path: Path, arrays: dict[str, np.ndarray]) -> None:
        """final.npz or best.npz, in a checkpoint's arrays.npz format,
        atomically: a kill leaves the old file or the new one, never a torn
        one."""
        write_atomic(path, arrays_to_bytes(arrays))

    def holds(self, path: Path, arrays: dict[str, np.ndarray]) -> bool:
        """Whether `path` (final.npz or best.npz) holds exactly `arrays`, so
        needs no rewriting; False when it is missing or unreadable."""
        try:
            saved = read_weights(path)
        except StateError:
            return False
        return sorted(saved) == sorted(arrays) and all(
            _same(saved[name], arrays[name]) for name in arrays
        )


def read_weights(path: Path) -> dict[str, np.ndarray]:
    """Every array of final.npz or best.npz, read as a checkpoint's arrays
    are: a regular file, each array's header checked before its data, no
    pickle. StateError or StateError when it cannot be."""
    return arrays_from_bytes(path, read_regular(path, WEIGHTS_LIMIT, "weights file"))


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


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


def check_resumable(
    state: TrainState, relevant: dict, max_steps: int, allow_extend: bool
) -> None:
    """RunError unless a run at `state` may continue with this config: the
    training-relevant values unchanged (else a diff), and max_steps not below
    the step, nor changed without --extend."""
    if state.config is not None and not same_config(state.config, relevant):
        lines = config_diff(comparable(state.config), comparable(relevant))
        raise RunError(
            "the config changed since the checkpoint, so the run cannot be resumed "
            "as it was:\n  "
            + "\n  ".join(lines)
            + "\nrestore those values, or start a new run with -o NEW_DIR or "
            "--overwrite"
            + (
                "\n(values written as ${training.max_steps} follow max_steps, so "
                "--extend cannot lengthen a run whose schedule depends on it)"
                if state.max_steps not in (None, max_steps)
                else ""
            )
        )
    if state.step > max_steps:
        raise RunError(
            f"the checkpoint is at step {state.step}, past training.max_steps "
            f"({max_steps}); there is nothing left to run"
        )
    if state.max_steps not in (None, max_steps) and not allow_extend:
        raise RunError(
            f"training.max_steps changed from {state.max_steps} to {max_steps}; add "
            "--extend to continue the run to the new length"
        )


def filled_config(
    config: dict, system: SystemSection, settings: TrainingSection
) -> str:
    """The config as run: overrides applied, defaults written out."""
    filled = json.loads(json.dumps(config))
    filled["system"] = {**system.model_dump(), **filled.get("system", {})}
    filled["training"] = {**settings.model_dump(), **filled["training"]}
    return config_to_str(filled)


__all__ = [
    "RunFolder",
    "RunError",
    "RUN_FILES",
    "read_weights",
    "NOT_RELEVANT",
    "check_resumable",
    "config_diff",
    "filled_config",
    "relevant_config",
]
