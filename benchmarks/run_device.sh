#!/usr/bin/env bash
# GPU verification in one call on a lent GPU machine (see benchmarks/README.md, "GPU runs"):
# build the wheel's code with nvcc, run the CUDA tests, then the GPU benchmarks; logs and the
# pytest-benchmark JSON go to $OUT. Usage (repository root): benchmarks/run_device.sh LABEL
# Python packages the machine lacks (cpd-pytorch, monai, zarr and its codecs) travel as wheels in
# .whl/ (gitignored). Peers' data: XMODAL_DATA (default .devdata/, a copy of the Platynereis table).
# XMODAL_DEVICE_TESTS (test files) and XMODAL_DEVICE_BENCH (a pytest -k expression) narrow a rerun.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/xmodal-device-out}
mkdir -p "$OUT"
LABEL=${1:-gpu}
export XMODAL_DATA=${XMODAL_DATA:-$PWD/.devdata}
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1; sed -n 1,12p "$OUT/nvidia-smi.txt"
if ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site || exit 1
fi
t0=$(date +%s)
CMAKE_BUILD_PARALLEL_LEVEL=16 python3 -m pip install --no-build-isolation --no-deps -v . \
  -C cmake.define.CMAKE_CUDA_ARCHITECTURES=90-real > "$OUT/build.log" 2>&1 || { tail -80 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
python3 -c "import xmodal, json; print(json.dumps(xmodal.backends()))" | tee "$OUT/backends.json"
t0=$(date +%s)
python3 -m pytest -q -p no:cacheprovider --timeout 300 -rs tests/test_cuda_arith.py > "$OUT/tests-arith.log" 2>&1
echo "tests/test_cuda_arith.py rc=$? $(tail -1 "$OUT/tests-arith.log")"
# XMODAL_DEVICE_TESTS: the test files whose `-m cuda` tests run (default: all that have some)
TESTS=${XMODAL_DEVICE_TESTS:-$(grep -l "mark.cuda" tests/test_*.py | tr '\n' ' ')}
python3 -m pytest -q -p no:cacheprovider --timeout 300 -rs -m cuda $TESTS > "$OUT/tests-cuda.log" 2>&1
echo "CUDA tests rc=$? $(tail -1 "$OUT/tests-cuda.log") ($(( $(date +%s) - t0 )) s)"
grep -E "FAILED|ERROR|SKIPPED" "$OUT/tests-cuda.log" "$OUT/tests-arith.log" | head -20
t0=$(date +%s)
XMODAL_BENCH_MACHINE="$LABEL" python3 -m pytest -q -p no:cacheprovider --timeout 240 -o python_files="bench_*.py" \
  benchmarks/bench_gpu.py benchmarks/bench_tiling.py -k "${XMODAL_DEVICE_BENCH:-not dask and not peak_rss}" \
  --benchmark-json "$OUT/$LABEL.json" > "$OUT/bench.log" 2>&1
echo "benchmarks rc=$? ($(( $(date +%s) - t0 )) s)"
tail -25 "$OUT/bench.log"
python3 benchmarks/summarize_gpu.py "$OUT/$LABEL.json" || true
