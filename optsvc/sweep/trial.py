"""One trial: `optsvc train <trial>/config.cfg -o <trial> --resume` as a
child process, so every promise of the training service (atomic
checkpoints, bit-exact resume, refusal of bad input) holds for it.

The child's output goes to `<trial>/train.log`; its evaluation rows are read
back from `<trial>/metrics.jsonl` as they appear. On Linux the child is tied
to the thread that started it (PR_SET_PDEATHSIG), so a runner that dies or
is stopped never leaves a training process behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optsvc.analysis.runs import read_metrics
from optsvc.training.run_folder import RunFolder

LOG = "train.log"
ERROR_MARK = "✘ "

# Runs in the child before `optsvc train` replaces it (exec keeps the death
# signal); the pid check covers a parent that died before prctl ran.
_LAUNCHER = """\
import os, sys
if sys.platform.startswith("linux"):
    import ctypes, signal
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != int(sys.argv[1]):
        os._exit(1)
os.execv(sys.argv[2], sys.argv[2:])
"""


@dataclass
class TrialRun:
    """How one attempt ended: the exit code, and the error when it failed."""

    returncode: int
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def run_trial(
    folder: str | Path,
    *,
    gpu: bool = False,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    poll: float = 0.1,
) -> TrialRun:
    """Train (or resume) the trial in `folder` to its end; `on_row` gets each
    new evaluation row of metrics.jsonl while it runs."""
    folder = Path(folder).resolve()
    log_path = folder / LOG
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-c", _LAUNCHER, str(os.getpid()), sys.executable]
    command += ["-m", "optsvc_cli.main", "train", str(RunFolder(folder).config_file)]
    command += ["-o", str(folder), "--resume"]
    # The runner made one GPU visible to this trial: its first.
    command += ["--gpu", "0"] if gpu else []
    sent = -1  # the step of the last row given to on_row

    def send_new_rows() -> None:
        # Each step once. The file is read whole each time: a resumed run
        # replaces it (atomically) when it starts.
        nonlocal sent
        if on_row is None:
            return
        for row in read_metrics(folder):
            if row["step"] > sent:
                sent = row["step"]
                on_row(row)

    with log_path.open("ab") as log:
        start = log.tell()
        proc = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=env, cwd=folder,
        )  # fmt: skip
        try:
            while proc.poll() is None:
                send_new_rows()
                time.sleep(poll)
        finally:
            if proc.poll() is None:  # stopped from outside: no orphan
                proc.kill()
                proc.wait()
        send_new_rows()
        if proc.returncode == 0:
            return TrialRun(0)
        error = _error_in(log_path, start) or _exit_reason(proc.returncode)
        if not error.startswith(ERROR_MARK):
            # Recorded, so that the sweep's results can show why it failed.
            log.write(f"{ERROR_MARK}{error}\n".encode())
        return TrialRun(proc.returncode, error.removeprefix(ERROR_MARK))


def _exit_reason(code: int) -> str:
    if code < 0:
        return f"optsvc train was killed by signal {-code}"
    return f"optsvc train exited with code {code}"


def _error_in(log_path: Path, start: int) -> str:
    """The last '✘ ...' line written since `start`, or ''."""
    with log_path.open("rb") as f:
        f.seek(start)
        text = f.read().decode("utf8", errors="replace")
    errors = [line for line in text.splitlines() if line.startswith(ERROR_MARK)]
    return errors[-1] if errors else ""


def last_error(folder: str | Path) -> str:
    """The error the trial's latest failed attempt logged, or ''."""
    path = Path(folder) / LOG
    if not path.exists():
        return ""
    return _error_in(path, 0).removeprefix(ERROR_MARK)
