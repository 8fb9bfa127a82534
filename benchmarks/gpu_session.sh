#!/usr/bin/env bash
# Every GPU figure of the project in one device call (a session is lent 15 minutes of GPU
# time, all calls and start-ups together). Prepare on the networked machine first:
#   bash benchmarks/gpu_wheels.sh          # .whl/: the packages the GPU image lacks
# then run on the lent machine, from the repository root:
#   run(command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=600)
# It installs .whl/ into /tmp/site (no network there), checks the environment, then runs,
# most important first, each under its own time limit (together under the 10 minutes one
# call may run, so a step that hangs costs only itself):
#   encode    bench_encode.py --device cuda, ViT-B/32 (12k JPEGs; model creation, captions)
#   encode_l  the same for ViT-L/14@336 (own section: bench_encode_cuda_vitl)
#             -> the issue's GPU goals, >= 4,000 and >= 950 images/s end to end
#   ray       bench_ray.py --device cuda: one GPU actor vs the local build
#   search    bench_search.py: exact torch search on the GPU vs FAISS flat on the CPU, 1M
#   tests     the tests marked gpu (fp16 vs fp32, decode routes, device search, real OOM)
# Back in $OUT: session.log (a line per step: exit code, seconds), logs.txt (every step's
# output, rewritten after each step) and the RESULTS.md the benchmarks rewrote; copy that
# over benchmarks/RESULTS.md here (the sections it did not run are unchanged).
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
LOGS="$WORK/logs"
if ! [[ $DEVICE =~ ^(cpu|cuda(:[0-9]+)?)$ ]]; then
  echo "gpu_session: DEVICE must be cpu, cuda or cuda:N, not '$DEVICE'" >&2
  exit 2
fi
mkdir -p "$OUT" "$WORK" "$LOGS"
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE PIP_DISABLE_PIP_VERSION_CHECK=1

log() { echo "[gpu_session $(date -u +%T)] $*" | tee -a "$OUT/session.log"; }
# step NAME LIMIT_S CMD...: run under a time limit, log to logs.txt, never stop the rest
step() {
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  log "start $name (limit ${limit} s): $*"
  timeout --kill-after=10 "$limit" "$@" >"$LOGS/$name.log" 2>&1
  rc=$?
  log "end $name: rc=$rc after $((SECONDS - start)) s"
  tail -n 30 "$LOGS/$name.log"
  for f in "$LOGS"/*.log; do echo "===== $(basename "$f")"; cat "$f"; done >"$OUT/logs.txt"
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
big=(--backbones ViT-B-32)
large=(--backbones ViT-L-14-336)
ray_args=(--images 2000)
search_args=(--n 1000000 --queries 500 --repeats 30 --threads 8)
if [ "${QUICK:-0}" = 1 ]; then
  quick=(--quick)
  big=(--backbones tiny-vit)
  large=(--backbones tiny-rn)
  ray_args=()
  search_args=()
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
[ $? = 0 ] || { log "environment check failed: see logs.txt"; exit 2; }

R=(--results "$OUT/RESULTS.md" --workdir "$WORK")
cp benchmarks/RESULTS.md "$OUT/RESULTS.md"  # the benchmarks rewrite their sections in it
step encode 180 "$PY" benchmarks/bench_encode.py --device "$DEVICE" "${R[@]}" \
  "${quick[@]}" "${big[@]}"
step encode_l 180 "$PY" benchmarks/bench_encode.py --device "$DEVICE" "${R[@]}" \
  "${quick[@]}" "${large[@]}" --no-creation --section "bench_encode_${DEVICE%%:*}_vitl"
step ray 100 "$PY" benchmarks/bench_ray.py --device "$DEVICE" "${R[@]}" "${quick[@]}" \
  "${ray_args[@]}"
step search 50 "$PY" benchmarks/bench_search.py --contenders flat,device --device "$DEVICE" \
  --section "bench_search_${DEVICE%%:*}" "${R[@]}" "${quick[@]}" "${search_args[@]}"
step tests 60 "$PY" -m pytest -q -p no:cacheprovider -m gpu \
  tests/test_encoders.py tests/test_speed.py
log "done; copy \$OUT/RESULTS.md over benchmarks/RESULTS.md"
