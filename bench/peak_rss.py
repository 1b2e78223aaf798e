"""Run a command; print its wall time and the peak of the summed resident
memory of its whole process tree (a Ray instance is a dozen processes).

    python bench/peak_rss.py optsvc sweep configs/quickstart.cfg -o /tmp/s ...
"""

from __future__ import annotations

import os
import subprocess
import sys
import time


def children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            kids.setdefault(ppid, []).append(int(name))
    return kids


def tree(root: int) -> list[int]:
    kids, found, todo = children(), [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += kids.get(pid, [])
    return found


def rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def main(command: list[str]) -> int:
    start = time.monotonic()
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    peak, processes = 0, 0
    while proc.poll() is None:
        pids = tree(proc.pid)
        total = sum(rss(pid) for pid in pids)
        if total > peak:
            peak, processes = total, len(pids)
        time.sleep(0.1)
    print(
        f"exit {proc.returncode}, {time.monotonic() - start:.1f} s, peak "
        f"{peak / 2**20:,.0f} MiB over {processes} processes"
    )
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
