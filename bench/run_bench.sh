#!/usr/bin/env bash
# Run `optsvc bench` the way the README's figures were taken: one thread,
# OpenBLAS left to pick its own kernels, JSON and the table both kept.
#
#   bench/run_bench.sh                 # CPU, W1-W3, table + bench/results/*.json
#   bench/run_bench.sh --gpu 0         # on GPU 0 (cupy)
#   bench/run_bench.sh configs/x.cfg   # that config's optimizer block
#
# Extra arguments go to `optsvc bench` as they are.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
mkdir -p bench/results
stamp="$(date +%Y%m%d-%H%M%S)"
run() {
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 NUMBA_NUM_THREADS=1 \
    "$PY" -m optsvc_cli.bench "$@"
}
run "$@" --format json > "bench/results/bench-$stamp.json"
"$PY" - "bench/results/bench-$stamp.json" <<'PY'
import json, sys
from rich.console import Console
from optsvc.bench import rows_table
Console().print(rows_table(json.load(open(sys.argv[1]))["rows"]))
PY
echo "JSON: bench/results/bench-$stamp.json"
