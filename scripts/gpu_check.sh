#!/usr/bin/env bash
# The GPU check: what a lent GPU machine runs (no internet there, 10 minutes a command, about 15
# minutes in all, 8 files back), from the repository root. It answers "does every GPU path give the
# CPU's results, and how fast is it", correctness first, so a run cut short still answers the first.
#
#   TOPOOT_COMMIT=<sha> scripts/gpu_check.sh correctness   # < 7 min: versions, install, every cuda-marked test
#   TOPOOT_COMMIT=<sha> scripts/gpu_check.sh throughput    # < 7 min: the GPU benchmarks, each under its own timeout
#   scripts/gpu_check.sh all --dry-run                     # both, on a machine without a GPU (what CI runs)
#
# Issue the two commands back to back (the machine stays warm for 30 s between calls). --dry-run runs
# the same steps without a GPU: a stand-in for nvidia-smi, the Triton kernels under the interpreter,
# the CUDA kernels' source compiled for the host, tiny benchmark sizes, no install (the package
# already installed for $PY is used), so that a bug in this script never costs device time.
#
# Files in $OUT (default gpu_out/), never more than 8: env.txt, install.log, tests.log, bench.log,
# persistence_gpu.json, sinkhorn_gpu.json, refine_cuda.json, selection_device.json. Commit the JSON
# under benchmarks/results/.
# Test extras the machine lacks (gudhi, POT) are installed from wheels in .whl/ when present (README:
# "On a GPU machine"). TOPOOT_COMMIT names the commit in the JSON (the copied tree has no .git).
set -uo pipefail
cd "$(dirname "$0")/.."

stage=${1:-all}
dry_run=0
[ "${2:-}" = "--dry-run" ] || [ "${1:-}" = "--dry-run" ] && dry_run=1
[ "$stage" = "--dry-run" ] && stage=all
case "$stage" in correctness | throughput | all) ;; *)
  echo "usage: scripts/gpu_check.sh correctness|throughput|all [--dry-run]" >&2
  exit 2
  ;;
esac
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
# -P everywhere: the checkout never shadows the installed package (which has the compiled _C).
run_py() { "$PY" -P "$@"; }

if [ $dry_run = 1 ]; then
  nvidia_smi() { echo "dry run: no GPU (stand-in for nvidia-smi $*)"; }
  export TRITON_INTERPRET=1
  DEVICE=cpu
else
  nvidia_smi() { nvidia-smi "$@"; }
  DEVICE=cuda
fi

environment() {
  {
    date -u +"%Y-%m-%dT%H:%M:%SZ"
    echo "commit ${TOPOOT_COMMIT:-unknown}; dry run: $dry_run"
    nvidia_smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
    run_py -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
    for m in cupy triton gudhi ot; do
      run_py -c "import $m; print('$m', $m.__version__)" 2>/dev/null || echo "$m absent"
    done
  } 2>&1 | tee "$OUT/env.txt"
}

install() {
  if [ $dry_run = 1 ]; then
    echo "dry run: using the installed topoot_gpu of $PY" | tee "$OUT/install.log"
    return 0
  fi
  if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >"$OUT/install.log" 2>&1 || return 1
    export PYTHONPATH=/tmp/site
  fi
  "$PY" -m pip install -q --no-build-isolation --no-deps . >>"$OUT/install.log" 2>&1 || { tail -40 "$OUT/install.log"; return 1; }
}

tests() {
  # Every cuda-marked test in one process (the Triton tests carry the marker on a GPU); a test stuck
  # past 120 s dumps its stack; the whole stage is bounded. Without a GPU every cuda-marked test is a
  # visible skip, so the dry run also runs the CUDA source's tests on the host.
  local selection=(-m cuda tests)
  [ $dry_run = 1 ] && selection=(-m "cuda or not cuda" tests/test_persistence_cuda.py tests/test_persistence_cuda_source.py
    tests/test_device_path.py)
  timeout 360 "$PY" -P -m pytest -q -rs -o faulthandler_timeout=120 "${selection[@]}" 2>&1 | tee "$OUT/tests.log"
  return "${PIPESTATUS[0]}"
}

bench() {  # bench NAME SECONDS SCRIPT ARGS...: one benchmark under its own timeout, its JSON as it ends
  local name=$1 seconds=$2
  shift 2
  echo "== $name" | tee -a "$OUT/bench.log"
  timeout "$seconds" "$PY" -P "$@" 2>&1 | tee -a "$OUT/bench.log"
  local status=${PIPESTATUS[0]}
  [ "$status" = 0 ] || echo "$name: exit $status" | tee -a "$OUT/bench.log"
  return "$status"
}

throughput() {
  local status=0
  if [ $dry_run = 1 ]; then
    bench persistence 120 benchmarks/bench_persistence.py --gpu --device cpu --gpu-backends triton --sizes 12 \
      --kinds smooth noise --gpu-batches 2 --ref-maps 2 --repeats 1 --out "$OUT/persistence_gpu.json" || status=1
    bench sinkhorn 120 benchmarks/bench_sinkhorn.py --sizes 8 --batches 2 --regs 0.3 --repeats 1 --pot-problems 2 \
      --out "$OUT/sinkhorn_gpu.json" || status=1
    # The torch head: the Triton head takes ~50 s per precision under the interpreter (its tests run it).
    bench refine 120 benchmarks/bench_refine.py --device cpu --size 24 --low 6 --channels 4 --batch 2 \
      --ref-images 1 --repeats 1 --head-backends torch --precisions fp32 bf16 --persistence-backend triton \
      --transport-backend triton --out "$OUT/refine_cuda.json" || status=1
    bench selection 120 benchmarks/bench_selection.py --device-path --device cpu --batches 1 --size 12 --repeats 1 \
      --out "$OUT/selection_device.json" || status=1
  else
    bench persistence 120 benchmarks/bench_persistence.py --gpu --sizes 224 --gpu-batches 1 256 1024 \
      --ref-maps 16 --repeats 5 --out "$OUT/persistence_gpu.json" || status=1
    bench sinkhorn 45 benchmarks/bench_sinkhorn.py --sizes 16 64 --batches 1 1024 --regs 0.3 --repeats 5 \
      --pot-problems 8 --out "$OUT/sinkhorn_gpu.json" || status=1
    bench refine 120 benchmarks/bench_refine.py --device cuda --channels 64 --batch 256 --ref-images 1 --repeats 2 \
      --head-backends triton --precisions fp32 bf16 --persistence-backend cuda --transport-backend triton \
      --out "$OUT/refine_cuda.json" || status=1
    bench selection 120 benchmarks/bench_selection.py --device-path --device cuda --batches 1 16 256 --repeats 3 \
      --out "$OUT/selection_device.json" || status=1
  fi
  return $status
}

status=0
if [ "$stage" != throughput ]; then
  environment
  install || exit 1
  tests || status=1
fi
if [ "$stage" != correctness ]; then
  if [ "$stage" = throughput ]; then  # after `correctness` on the same warm machine: installed already
    [ -d /tmp/site ] && export PYTHONPATH=/tmp/site
    run_py -c "import topoot_gpu._C" 2>/dev/null || install || exit 1
  fi
  throughput || status=1
fi
n_files=$(find "$OUT" -type f | wc -l)
[ "$n_files" -le 8 ] || { echo "error: $n_files files in $OUT (at most 8 come back)" >&2; status=1; }
exit $status
