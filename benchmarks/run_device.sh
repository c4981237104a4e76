#!/usr/bin/env bash
# GPU verification in one unattended call on a lent GPU machine (see benchmarks/README.md, "GPU
# runs"): build the package with nvcc, run the CUDA tests, then the GPU benchmarks. Every log, the
# pytest-benchmark JSON files and a step summary (steps.tsv) go to $OUT, the folder that comes back.
# Usage (repository root or anywhere): benchmarks/run_device.sh LABEL
#
# No internet there: Python packages the machine lacks (cpd-pytorch, monai, zarr and its codecs,
# pytest-timeout) travel as wheels in .whl/ (gitignored). Peers' data: XMODAL_DATA (default
# .devdata/, a copy of the Platynereis table; without it the workloads fall back to a synthetic
# lattice, recorded as `cloud: synthetic`).
# XMODAL_DEVICE_TESTS (test files) and XMODAL_DEVICE_BENCH (a pytest -k expression) narrow a rerun.
# XMODAL_DEVICE_BUDGET_S (default 540): the whole script ends within this many seconds (each step's
# timeout is cut to what is left), so that $OUT is complete before the device call's own limit.
#
# Fails fast (exit 2) when the build fails or the built package sees no CUDA device: nothing after
# that would measure anything. Otherwise every step runs even when an earlier one failed, each
# under its own timeout, each benchmark file in its own pytest run with its own JSON (a hang in
# one loses only that file's results); the exit status is 1 when any step failed.
set -u -o pipefail
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
OUT=${OUT:-/tmp/xmodal-device-out}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 2
cd "$(dirname "$0")/.." || exit 2
LABEL=${1:-gpu}
START=$(date +%s)
BUDGET=${XMODAL_DEVICE_BUDGET_S:-540}
export XMODAL_BENCH_MACHINE="$LABEL"

main() {
echo "run_device.sh $LABEL: $(date -u +%FT%TZ), commit $(git rev-parse HEAD 2>/dev/null || echo unknown), budget ${BUDGET} s"
export XMODAL_DATA=${XMODAL_DATA:-$PWD/.devdata}
[ -d "$XMODAL_DATA" ] || echo "WARNING: no data folder $XMODAL_DATA: the GPU workloads use the synthetic lattice"
printf 'step\trc\tseconds\tlog\n' > "$OUT/steps.tsv"
FAILED=0

left() { echo $(( BUDGET - ($(date +%s) - START) )); }

# step NAME CAP_S LOG CMD...: run CMD under `timeout` (SIGINT first, so pytest still writes its JSON
# and summary; SIGKILL 20 s later), at most CAP_S and never past the budget (minus a 15 s reserve).
step() {
  local name=$1 cap=$2 log=$3 t0 rc limit
  shift 3
  limit=$(( $(left) - 15 ))
  if [ "$limit" -lt 10 ]; then
    echo "$name: SKIPPED (budget spent)"; printf '%s\tskipped\t0\t%s\n' "$name" "$log" >> "$OUT/steps.tsv"
    FAILED=1; return 124
  fi
  [ "$limit" -gt "$cap" ] && limit=$cap
  t0=$(date +%s)
  timeout -s INT -k 20 "$limit" "$@" > "$OUT/$log" 2>&1
  rc=$?
  [ "$rc" -eq 124 ] && echo "$name: TIMED OUT after $limit s" >> "$OUT/$log"
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" "$log" >> "$OUT/steps.tsv"
  echo "$name: rc=$rc ($(( $(date +%s) - t0 )) s, limit $limit s) $(tail -1 "$OUT/$log")"
  [ "$rc" -ne 0 ] && FAILED=1
  return "$rc"
}

# a results file is never overwritten (benchmarks/conftest.py refuses): pick a free name
free_json() {
  local base=$OUT/$1 i=2 path
  path=$base.json
  while [ -e "$path" ]; do path=$base-$i.json; i=$(( i + 1 )); done
  echo "$path"
}

timeout 30 nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1; sed -n 1,12p "$OUT/nvidia-smi.txt"
CAP=$(timeout 30 nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
case "$CAP" in ''|*[!0-9]*) CAP=90 ;; esac
echo "CUDA architecture: ${CAP}-real"

if ls .whl/*.whl > /dev/null 2>&1; then
  step wheels 120 pip-wheels.log python3 -m pip install --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl || { echo "FATAL: the travelling wheels did not install"; exit 2; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

# --no-index: no network there; a missing build dependency fails at once instead of retrying
step build 300 build.log env CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" python3 -m pip install --no-index \
  --no-build-isolation --no-deps -v . -C cmake.define.CMAKE_CUDA_ARCHITECTURES="${CAP}-real" \
  || { tail -80 "$OUT/build.log"; echo "FATAL: build failed"; exit 2; }

step backends 60 backends.json python3 -c "import xmodal, json; print(json.dumps(xmodal.backends()))"
cat "$OUT/backends.json"
python3 - "$OUT/backends.json" <<'EOF' || { echo "FATAL: the built xmodal has no CUDA device (see backends.json)"; exit 2; }
import json, sys
b = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
sys.exit(0 if b["cuda"]["built"] and b["cuda"]["devices"] else 1)
EOF

# per-test timeouts need pytest-timeout (travels in .whl/ when the machine lacks it); the step's
# `timeout` bounds the whole run in any case
PT=(python3 -m pytest -q -p no:cacheprovider -rs)
if python3 -c "import pytest_timeout" 2> /dev/null; then PT+=(--timeout 240); else echo "pytest-timeout absent: no per-test timeout"; fi

step tests-arith 120 tests-arith.log "${PT[@]}" tests/test_cuda_arith.py
# XMODAL_DEVICE_TESTS: the test files whose `-m cuda` tests run (default: all that have some)
read -r -a TESTS <<< "${XMODAL_DEVICE_TESTS:-$(grep -l "mark.cuda" tests/test_*.py | tr '\n' ' ')}"
step tests-cuda 180 tests-cuda.log "${PT[@]}" -m cuda "${TESTS[@]}"
grep -E "FAILED|ERROR|SKIPPED" "$OUT/tests-cuda.log" "$OUT/tests-arith.log" | head -20

# one pytest run (and JSON) per benchmark file; the summary is printed as each ends
for suite in gpu tiling; do
  json=$(free_json "$LABEL-$suite")
  step "bench-$suite" 300 "bench-$suite.log" "${PT[@]}" -o python_files="bench_*.py" \
    "benchmarks/bench_$suite.py" -k "${XMODAL_DEVICE_BENCH:-not dask and not peak_rss}" --benchmark-json "$json"
  tail -15 "$OUT/bench-$suite.log"
  [ -s "$json" ] && timeout 60 python3 benchmarks/summarize_gpu.py "$json"
done

echo "done in $(( $(date +%s) - START )) s; steps:"; cat "$OUT/steps.tsv"
return "$FAILED"
}

main 2>&1 | tee -a "$OUT/run_device.log"
exit "${PIPESTATUS[0]}"
