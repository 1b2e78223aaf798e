#!/usr/bin/env bash
# The GPU check of issue 14, in a few minutes of GPU time: the GPU tests,
# `optsvc bench --gpu 0` (Thinc and torch in the same process, when they
# import), the quickstart job on the GPU and on the CPU (final score,
# steps/s), and a checkpoint written on one device resumed on the other, both
# ways. Every step runs even when one before it failed; the script exits 1 if
# any failed and says which.
#
#   bench/gpu_check.sh            # GPU 0, results in bench/results/gpu-check-*/
#   GPU=1 bench/gpu_check.sh      # another GPU
#   OUT=/some/dir bench/gpu_check.sh
#
# Needs cupy (the cuda12 / cuda13 extra); torch and thinc are optional (the
# bench says when a peer is skipped, and why).
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
GPU="${GPU:-0}"
OUT="${OUT:-bench/results/gpu-check-$(date +%Y%m%d-%H%M%S)}"
CFG=configs/quickstart.cfg
mkdir -p "$OUT"
failed=()

step() {  # step NAME COMMAND...: run, log to $OUT/NAME.log, remember failures
  local name="$1"
  shift
  echo "== $name: $*"
  if "$@" > "$OUT/$name.log" 2>&1; then
    tail -n 3 "$OUT/$name.log"
  else
    echo "!! $name failed (exit $?); last lines of $OUT/$name.log:"
    tail -n 15 "$OUT/$name.log"
    failed+=("$name")
  fi
}

last_row() {  # the last metrics row of a run folder: step, score, steps/s
  "$PY" - "$1/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
row = rows[-1]
print(f"step {row['step']}  score {row['score']:.4f}  "
      f"steps/s {row.get('steps_per_sec', float('nan')):.0f}")
PY
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
step gpu-available "$PY" -c "
from optsvc.backends import check_gpu, gpu_count
check_gpu($GPU)
print('GPUs:', gpu_count())"

# 1. The tests, now with a real GPU under them (the cupy tests skip without).
step tests "$PY" -m pytest -q -p no:cacheprovider -x \
  tests/test_cuda_kernels.py tests/test_cuda_multi_tensor.py \
  tests/test_backends.py tests/test_multi_tensor.py tests/test_optimizers.py \
  tests/test_api.py tests/test_checkpoints.py

# 2. The benchmark: optsvc, Thinc and torch on the GPU, in one process.
step bench sh -c '"$0" -m optsvc_cli.bench --gpu "$1" --repeat 9 --format json > "$2"' \
  "$PY" "$GPU" "$OUT/bench-gpu.json"
"$PY" - "$OUT/bench-gpu.json" <<'PY' || true
import json, sys
from rich.console import Console
from optsvc.bench import rows_table
report = json.load(open(sys.argv[1]))
Console(width=140).print(rows_table(report["rows"]))
for line in report.get("skipped", []):
    print(line)
PY

# 3. The quickstart job, whole, on the GPU and on the CPU.
step train-gpu "$PY" -m optsvc_cli.main train "$CFG" -o "$OUT/train-gpu" \
  --overwrite --gpu "$GPU"
step train-cpu "$PY" -m optsvc_cli.main train "$CFG" -o "$OUT/train-cpu" \
  --overwrite --gpu -1
for run in train-gpu train-cpu; do
  [ -f "$OUT/$run/metrics.jsonl" ] && echo "$run: $(last_row "$OUT/$run")"
done

# 4. Checkpoints across devices: 1000 steps on one device, then --resume on
# the other up to 1500 (the schedule's length fixed at 1500, so that
# --extend changes nothing else).
SHORT=(--optimizer.learn_rate.total_steps 1500 --training.checkpoint_frequency 500)
step half-gpu "$PY" -m optsvc_cli.main train "$CFG" -o "$OUT/gpu-to-cpu" \
  --overwrite --gpu "$GPU" --training.max_steps 1000 "${SHORT[@]}"
step resume-on-cpu "$PY" -m optsvc_cli.main train "$CFG" -o "$OUT/gpu-to-cpu" \
  --resume --extend --gpu -1 --training.max_steps 1500 "${SHORT[@]}"
step half-cpu "$PY" -m optsvc_cli.main train "$CFG" -o "$OUT/cpu-to-gpu" \
  --overwrite --gpu -1 --training.max_steps 1000 "${SHORT[@]}"
step resume-on-gpu "$PY" -m optsvc_cli.main train "$CFG" -o "$OUT/cpu-to-gpu" \
  --resume --extend --gpu "$GPU" --training.max_steps 1500 "${SHORT[@]}"
for run in gpu-to-cpu cpu-to-gpu; do
  [ -f "$OUT/$run/metrics.jsonl" ] && echo "$run: $(last_row "$OUT/$run")"
done

echo "logs and results: $OUT"
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]}"
  exit 1
fi
echo "all GPU checks passed"
