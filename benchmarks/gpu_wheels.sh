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
# the GPU machine's Python). Takes ~1 minute (xz). Versions are the ones CI tests with.
set -euo pipefail
DEST=${1:-.whl}
PYVER=${2:-3.12}
if [ $# -gt 2 ] || ! [[ $PYVER =~ ^3\.[0-9]+$ ]]; then
  echo "usage: bash benchmarks/gpu_wheels.sh [DEST] [PYTHON_VERSION, e.g. 3.12]" >&2
  exit 2
fi
PIP=${PIP:-python3 -m pip}
WHEELS=(open_clip_torch==3.3.0 timm==1.0.31 ftfy==6.3.1 wcwidth==0.9.4 faiss-cpu==1.15.1
        pycocotools==2.0.11 jsonschema==4.26.0 jsonschema-specifications==2025.9.1
        referencing==0.37.0 rpds-py==2026.9.1)
RAY=ray==2.60.0
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
