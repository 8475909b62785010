#!/usr/bin/env bash
# What a lent GPU machine runs for this project (no internet there, 10 minutes a command), from the
# repository root, one stage per call:
#
#   TOPOOT_COMMIT=<sha> scripts/gpu_session.sh tests      build; the CUDA tests; the whole suite on the GPU
#   TOPOOT_COMMIT=<sha> scripts/gpu_session.sh sanitize   the CUDA persistence tests under compute-sanitizer memcheck
#   TOPOOT_COMMIT=<sha> scripts/gpu_session.sh bench [persistence] [sinkhorn] [refine]
#
# Logs and results JSON go to $OUT (default gpu_out/); commit the JSON under benchmarks/results/.
# The machine's python3 has torch, CuPy, Triton, pybind11, CMake and pytest; the test extras it
# lacks (gudhi, POT, cripser) are installed from wheels in .whl/ when present (README: "On a GPU
# machine"). TOPOOT_COMMIT names the commit in the JSON (the copied tree has no .git).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}

setup() {
  if compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
  fi
  $PY -m pip install -q --no-build-isolation --no-deps . >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/device.txt"
  $PY -c "import torch, cupy, triton; print('torch', torch.__version__, 'cupy', cupy.__version__, 'triton', triton.__version__)" \
    | tee -a "$OUT/device.txt"
}

stage=${1:-tests}
shift || true
setup
case "$stage" in
  tests)
    # -P: the working directory is not put on sys.path, so the installed package is tested, as in CI.
    $PY -P -m pytest -q -rs -m cuda tests 2>&1 | tee "$OUT/tests_cuda.log"
    cuda_status=${PIPESTATUS[0]}
    $PY -P -m pytest -q -rs tests 2>&1 | tee "$OUT/tests_all.log"
    all_status=${PIPESTATUS[0]}
    exit $((cuda_status || all_status))
    ;;
  sanitize)
    compute-sanitizer --tool memcheck --leak-check no --error-exitcode 9 --target-processes all \
      $PY -P -m pytest -q -x tests/test_persistence_cuda.py -k "pairs_and_pixels" 2>&1 | tee "$OUT/memcheck.log"
    exit "${PIPESTATUS[0]}"
    ;;
  bench)
    names=("$@")
    [ ${#names[@]} -eq 0 ] && names=(persistence sinkhorn refine)
    status=0
    for name in "${names[@]}"; do
      case "$name" in
        persistence) $PY benchmarks/bench_persistence.py --gpu --out "$OUT/persistence_gpu.json" ;;
        sinkhorn) $PY benchmarks/bench_sinkhorn.py --out "$OUT/sinkhorn_cuda.json" ;;
        refine) $PY benchmarks/bench_refine.py --device cuda --out "$OUT/refine_cuda.json" ;;
        *) echo "unknown benchmark: $name" >&2; false ;;
      esac 2>&1 | tee "$OUT/bench_$name.log"
      bench_status=${PIPESTATUS[0]}
      status=$((status || bench_status))
    done
    exit $status
    ;;
  *)
    echo "usage: scripts/gpu_session.sh tests|sanitize|bench [names]" >&2
    exit 2
    ;;
esac
