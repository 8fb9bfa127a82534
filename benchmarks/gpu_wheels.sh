#!/usr/bin/env bash
# Fetch, on this (networked) machine, the Python packages clipindex needs that the lent GPU
# machine lacks, into .whl/ (git-ignored), for benchmarks/gpu_session.sh to install there.
# The GPU machine has no network; its image already holds torch, torchvision, numpy,
# pandas, pyarrow, scikit-learn, transformers, pytest and the rest (see the device tool's
# KINDS.md), so only these travel:
#   open_clip_torch, timm, ftfy, wcwidth  the encoders (timm is there too, in a version
#                                       not known here: CI's travels)
#   faiss-cpu, pycocotools              the store's indexes, the COCO source
#   jsonschema (+ its three needs)      what Ray imports
#   ray                                 as ray.tar.xz: its wheel (79 MB) is over the 64 MiB a
#                                       device call may carry, so it travels unpacked and
#                                       xz-packed without its Java jars and RLlib (32 MB)
# grad-cam is left behind (an sdist only, and the explain module is not measured on GPU).
#
# Usage: bash benchmarks/gpu_wheels.sh [DEST] [PYTHON_VERSION]   (defaults: .whl 3.12,
# the GPU machine's Python). Takes ~1 minute (xz).
#        bash benchmarks/gpu_wheels.sh --pins   prints the name==version list and exits.
# Versions come from requirements/dev.lock, the lock CI installs: this script names
# packages only, so it can never drift from what the suite is tested with.
set -euo pipefail
LOCK=${LOCK:-$(dirname "$0")/../requirements/dev.lock}
PACKAGES=(open-clip-torch timm ftfy wcwidth faiss-cpu pycocotools jsonschema
          jsonschema-specifications referencing rpds-py)
# pin NAME: the lock's NAME==VERSION (names as pip-compile writes them, lower case, dashes)
pin() {
  local line
  line=$(grep -m1 -i "^$1==" "$LOCK" | cut -d' ' -f1) || true
  if [ -z "$line" ]; then
    echo "gpu_wheels: $1 is not pinned in $LOCK (run make lock)" >&2
    exit 2
  fi
  echo "$line"
}
if [ "${1:-}" = "--pins" ]; then
  for name in "${PACKAGES[@]}" ray; do pin "$name"; done
  exit 0
fi
DEST=${1:-.whl}
PYVER=${2:-3.12}
if [ $# -gt 2 ] || ! [[ $PYVER =~ ^3\.[0-9]+$ ]]; then
  echo "usage: bash benchmarks/gpu_wheels.sh [DEST] [PYTHON_VERSION, e.g. 3.12] | --pins" >&2
  exit 2
fi
PIP=${PIP:-python3 -m pip}
WHEELS=()
for name in "${PACKAGES[@]}"; do WHEELS+=("$(pin "$name")"); done
RAY=$(pin ray)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux1_x86_64)
fetch() {
  $PIP download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
    --implementation cp "${PLATFORMS[@]}" -d "$1" "${@:2}"
}

mkdir -p "$DEST"
rm -f "$DEST"/*.whl "$DEST"/ray.tar.xz
fetch "$DEST" "${WHEELS[@]}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fetch "$tmp" "$RAY"
# unpacked keeping each file's mode (Ray starts its gcs_server and raylet binaries)
python3 - "$tmp"/ray-*.whl "$tmp/unpacked" <<'PY'
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    for info in wheel.infolist():
        path = wheel.extract(info, sys.argv[2])
        mode = info.external_attr >> 16
        if mode and not info.is_dir():
            os.chmod(path, mode & 0o777)
PY
tar -C "$tmp/unpacked" --exclude=ray/jars --exclude=ray/rllib -cf - . \
  | xz -6 -T0 > "$DEST/ray.tar.xz"
echo "gpu_wheels: $(ls "$DEST" | wc -l) files, $(du -sh "$DEST" | cut -f1) in $DEST (Python $PYVER)"
