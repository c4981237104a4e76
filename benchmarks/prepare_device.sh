#!/usr/bin/env bash
# Prepares, on this machine (which has the package index), what benchmarks/run_device.sh needs on a
# lent GPU machine that cannot download anything:
#   .whl/      wheels of the Python packages that machine lacks (cpd-pytorch, the peer of bench_gpu.py;
#              MONAI, the peer of bench_tiling.py; zarr 3 and its needs), built for its Python 3.12
#   .devdata/  the Platynereis nucleus table (platynereis_6dpf_nuclei, with its SOURCE.md and licence
#              note), the real point cloud of the GPU CPD workloads (without it they use a synthetic
#              lattice, recorded as `cloud: synthetic`)
# Both folders are git-ignored; a fresh checkout has neither. Then, in one device call:
#   run(command="benchmarks/run_device.sh LABEL", carry=[".whl", ".devdata"])
# Usage: benchmarks/prepare_device.sh [DATA_DIR]   (default: XMODAL_DATA, else ../shared/data)
# Idempotent: a wheel already in .whl/ is not fetched again. Exit status 1 when a wheel or the data
# could not be prepared (the script says which).
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 1
DATA=${1:-${XMODAL_DATA:-../shared/data}}
STATUS=0

# The newest versions the index offers for CPython 3.12, one of each (two versions of a package stop
# the whole install there): the peers, zarr 3 and what zarr needs beyond the machine's image (which
# holds numpy, torch, pyyaml, packaging, typing-extensions, pytest-timeout, ...: not carried).
WHEELS=(cpd-pytorch monai zarr numcodecs donfig google-crc32c msgspec)
mkdir -p .whl
for name in "${WHEELS[@]}"; do
  norm=$(echo "$name" | tr '-' '_')
  if ls .whl/"$norm"-*.whl > /dev/null 2>&1; then
    echo "have $(ls .whl/"$norm"-*.whl | head -1)"
    continue
  fi
  # binary wheels for CPython 3.12 on manylinux; pure-Python ones match any platform
  if ! python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$name"; then
    echo "FAILED: no wheel of $name for CPython 3.12 manylinux x86_64" >&2
    STATUS=1
  fi
done
ls -la .whl
total=$(du -sm .whl | cut -f1)
echo ".whl: ${total} MiB (a device call carries at most 64 MiB with the working tree)"
[ "$total" -lt 48 ] || { echo "WARNING: .whl is large; drop what the run does not need" >&2; }

mkdir -p .devdata
src=$DATA/platynereis_6dpf_nuclei
if [ -d "$src" ]; then
  rm -rf .devdata/platynereis_6dpf_nuclei.tmp
  cp -r "$src" .devdata/platynereis_6dpf_nuclei.tmp && rm -rf .devdata/platynereis_6dpf_nuclei \
    && mv .devdata/platynereis_6dpf_nuclei.tmp .devdata/platynereis_6dpf_nuclei
  echo "data: .devdata/platynereis_6dpf_nuclei ($(du -sh .devdata/platynereis_6dpf_nuclei | cut -f1))"
else
  echo "FAILED: no $src (give the data folder as the first argument)" >&2
  STATUS=1
fi
exit "$STATUS"
