#!/usr/bin/env bash
# Run `optsvc bench` the way the README's figures were taken: THREADS threads
# (default 1) for everything, the floor included, OpenBLAS left to pick its
# own kernels, JSON and the table both kept.
#
#   bench/run_bench.sh                 # CPU, W1-W3, table + bench/results/*.json
#   THREADS=2 bench/run_bench.sh       # the same on 2 threads
#   bench/run_bench.sh --gpu 0         # on GPU 0 (cupy)
#   bench/run_bench.sh configs/x.cfg   # that config's optimizer block
#
# Extra arguments go to `optsvc bench` as they are.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
mkdir -p bench/results
stamp="$(date +%Y%m%d-%H%M%S)"
T="${THREADS:-1}"
run() {
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \
    OMP_NUM_THREADS="$T" OPENBLAS_NUM_THREADS="$T" MKL_NUM_THREADS="$T" \
    NUMBA_NUM_THREADS="$T" "$PY" -m optsvc_cli.bench --threads "$T" "$@"
}
run "$@" --format json > "bench/results/bench-$stamp.json"
"$PY" - "bench/results/bench-$stamp.json" <<'PY'
import json, sys
from rich.console import Console
from optsvc.bench import rows_table
report = json.load(open(sys.argv[1]))
Console().print(rows_table(report["rows"]))
for line in report.get("skipped", []):
    print(line)
PY
echo "JSON: bench/results/bench-$stamp.json"
