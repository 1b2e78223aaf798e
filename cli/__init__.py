"""The `optsvc` command line (installed as the `optsvc_cli` package).

`main` is the `optsvc` command: it imports the commands (numpy, numba,
pydantic: about a second) inside it, so that Ctrl-C while they load exits
130 with no traceback, as it does at any later moment. Python warnings (a
library's, or optsvc's about the environment) print as one line each.
"""

import sys
import warnings


def _one_line(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"⚠ warning: {message}", file=sys.stderr)


def main() -> None:
    warnings.showwarning = _one_line
    try:
        from optsvc_cli.main import main as run
    except KeyboardInterrupt:
        sys.exit(130)
    run()
