"""A closed pipe is not an error: `optsvc ... | head -1` exits 0 and says
nothing on stderr (the reader has all it wants)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [
    ["registry"],
    ["registry", "schedules"],
    ["show-schedule", "configs/adam.cfg", "--format", "csv"],
    ["show-schedule", "configs/adam.cfg"],
    ["validate", "configs/adam.cfg"],
]


@pytest.mark.slow
@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_a_reader_that_stops_reading_is_not_an_error(args):
    proc = subprocess.Popen(
        [sys.executable, "-m", "optsvc_cli.main", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    proc.stdout.close()  # the reader is gone before the first line: EPIPE
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert err == ""
