"""Thinc's and spaCy's own shipped tests, as shipped and with optsvc swapped
in for Thinc's optimizers and schedules (the plugin tests/peer/optsvc_swap.py):
the counts of each, and exit 1 if a test that passes as shipped does not
pass swapped. Tests that cannot run here (network, frameworks not installed)
are skipped by the suites' own markers.

    python tests/peer/run.py [thinc] [spacy]
    /tmp/thinc9-venv/bin/python tests/peer/run.py --report thinc9

Thinc 9.1.1's optimizer and schedule tests run against optsvc's own API, in
the Thinc 9 virtualenv (`make peer-tests-thinc9`); --report prints the
counts without failing on the tests that optsvc deliberately answers
otherwise (README, Thinc and spaCy).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUITES = {
    "thinc": ["thinc.tests"],
    "spacy": [
        f"spacy.tests.{name}"
        for name in (
            "training",
            "pipeline",
            "parser",
            "serialize",
            "test_language",
            "test_models",
        )
    ],
    "thinc9": ["thinc.tests.test_optimizers", "thinc.tests.test_schedules"],
}
DEFAULT = ("thinc", "spacy")


def outcomes(targets: list[str], swap: bool) -> dict[str, str]:
    """Each test's outcome (passed, failed or skipped) in one pytest run."""
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "results.jsonl"
        env = {**os.environ, "PYTHONPATH": str(HERE),
               "OPTSVC_PEER_RESULTS": str(results),
               "OPTSVC_PEER_SWAP": "1" if swap else "0"}  # fmt: skip
        subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
             "optsvc_swap", "--pyargs", *targets],
            cwd=tmp, env=env, stdout=subprocess.DEVNULL, check=False,
        )  # fmt: skip
        found: dict[str, str] = {}
        for line in results.read_text().splitlines() if results.exists() else []:
            row = json.loads(line)
            if found.get(row["test"]) != "failed":  # a failed phase decides
                found[row["test"]] = row["outcome"]
        return found


def main(names: list[str]) -> int:
    report = "--report" in names
    names = [n for n in names if n != "--report"] or list(DEFAULT)
    broken = []
    for name in names:
        shipped = outcomes(SUITES[name], swap=False)
        swapped = outcomes(SUITES[name], swap=True)
        if not shipped:
            broken.append(f"{name}: no test ran (is it installed?)")
        for label, found in (("as shipped", shipped), ("swapped", swapped)):
            n = Counter(found.values())
            print(
                f"{name} {label}: {n['passed']} passed, {n['failed']} failed, "
                f"{n['skipped']} skipped"
            )
        broken += [
            test
            for test, outcome in shipped.items()
            if outcome == "passed" and swapped.get(test) != "passed"
        ]
    for test in broken:
        print(f"passes as shipped, not with optsvc: {test}")
    return 1 if broken and not report else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
