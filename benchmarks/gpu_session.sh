#!/usr/bin/env bash
# Every GPU figure of the project in one device call (a session is lent 15 minutes of GPU
# time, all calls and start-ups together). Prepare on the networked machine first:
#   bash benchmarks/gpu_wheels.sh          # .whl/: the packages the GPU image lacks
# then run on the lent machine, from the repository root:
#   run(command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=590)
# It installs .whl/ into /tmp/site (no network there), checks the environment, runs
# `bench_encode.py --device cuda` (ViT-B/32 and ViT-L/14@336, 12k JPEGs: the
# issue's GPU goals), `bench_ray.py --device cuda` (the Ray GPU-actor row) and the tests
# marked gpu, each under its own time limit (together under 10 minutes, the most one call
# may run) so one that hangs leaves time for the rest. Results come back in $OUT:
# session.log (one line per step), a log per step, and the RESULTS.md the benchmarks
# rewrote; copy that over benchmarks/RESULTS.md here (its other sections are unchanged).
#
# Rehearsal on a CPU machine (checks the install and every step's plumbing, measures
# nothing): DEVICE=cpu QUICK=1 PY=/path/to/python OUT=/tmp/out bash benchmarks/gpu_session.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu-session}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
SITE=${SITE:-/tmp/site}
WHEELS=${WHEELS:-.whl}
WORK=${WORK:-/tmp/clipindex-bench}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE PIP_DISABLE_PIP_VERSION_CHECK=1

log() { echo "[gpu_session $(date -u +%T)] $*" | tee -a "$OUT/session.log"; }
# step NAME LIMIT_S CMD...: run under a time limit, log to $OUT/NAME.log, never stop the rest
step() {
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  log "start $name (limit ${limit} s): $*"
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  log "end $name: rc=$rc after $((SECONDS - start)) s"
  tail -n 30 "$OUT/$name.log"
  return $rc
}

log "install $WHEELS into $SITE"
mkdir -p "$SITE"
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$WHEELS"/*.whl || { log "pip install failed"; exit 2; }
fi
if [ -f "$WHEELS/ray.tar.xz" ]; then  # Python's lzma: the image may have no xz binary
  "$PY" - "$WHEELS/ray.tar.xz" "$SITE" <<'PY' || { log "ray unpack failed"; exit 2; }
import sys, tarfile
with tarfile.open(sys.argv[1], "r:xz") as tar:  # the "tar" filter keeps executable bits
    tar.extractall(sys.argv[2], **({"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}))
PY
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"

quick=()
encode_args=()
ray_args=(--images 2000)
if [ "${QUICK:-0}" = 1 ]; then
  quick=(--quick)
  encode_args=(--backbones tiny-vit)
  ray_args=()
fi

step env 60 "$PY" - <<'EOF'
import platform, subprocess
import torch, torchvision, open_clip, faiss, ray, numpy, pyarrow
print("python", platform.python_version(), "torch", torch.__version__, "torchvision",
      torchvision.__version__, "open_clip", open_clip.__version__, "faiss", faiss.__version__,
      "ray", ray.__version__, "numpy", numpy.__version__, "pyarrow", pyarrow.__version__)
print("cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(0), torch.cuda.get_device_properties(0))
    print(subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout)
import clipindex.cli, clipindex.store.ray_engine  # noqa: F401  (imports resolve)
EOF
[ $? = 0 ] || { log "environment check failed: see env.log"; exit 2; }

cp benchmarks/RESULTS.md "$OUT/RESULTS.md"  # the benchmarks rewrite their sections in it
step encode 330 "$PY" benchmarks/bench_encode.py --device "$DEVICE" --workdir "$WORK" \
  --results "$OUT/RESULTS.md" "${quick[@]}" "${encode_args[@]}"
step ray 120 "$PY" benchmarks/bench_ray.py --device "$DEVICE" --workdir "$WORK" \
  --results "$OUT/RESULTS.md" "${quick[@]}" "${ray_args[@]}"
# The GPU tests (fp16 vs fp32 vectors, both decode routes, search on the device vs FAISS),
# last: the figures matter most if the call runs short.
step tests 90 "$PY" -m pytest -q -p no:cacheprovider -m gpu \
  tests/test_encoders.py tests/test_speed.py
log "done; copy \$OUT/RESULTS.md over benchmarks/RESULTS.md"
