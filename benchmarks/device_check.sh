#!/usr/bin/env bash
# One prepared check of the fused GPU CNTK on a lent GPU machine (issue 4):
# kernel resources + SASS, the GPU tests against the CPU backend, the benchmark.
# Usage, in the repository root on the GPU machine:
#   OUT=/some/dir bash benchmarks/device_check.sh            (BENCH_ARGS="--variants" etc. optional)
# Writes to $OUT: device_check.log (everything), pytest.log, sass_stats.txt,
# bench_cntk_gpu.md and bench_cntk_gpu.json.
set -uo pipefail
OUT=${OUT:-$PWD/device_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
exec > >(tee -a "$OUT/device_check.log") 2>&1
echo "== $(date -u) device check"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
$PY -c "import cupy, numpy; print('cupy', cupy.__version__, 'numpy', numpy.__version__)"

echo "== kernel resources (nvcc -Xptxas -v, 32x32) and SASS"
TMP=$(mktemp -d)
SASS_ARG=()
cp "$($PY -c 'from mnk.kernels.cntk_cuda import KERNEL_PATH; print(KERNEL_PATH)')" "$TMP/k.cu"
if command -v nvcc >/dev/null; then
  nvcc -cubin -arch=sm_90 -DKH=32 -DKW=32 -Xptxas -v "$TMP/k.cu" -o "$TMP/k.cubin" > "$OUT/sass_stats.txt" 2>&1
  grep -E "registers|spill" "$OUT/sass_stats.txt"
  if command -v cuobjdump >/dev/null && cuobjdump --dump-sass -fun cntk_fused "$TMP/k.cubin" > "$TMP/k.sass" 2>>"$OUT/sass_stats.txt"; then
    SASS_ARG=(--sass "$TMP/k.sass")
  fi
fi

echo "== GPU tests"
timeout 180 $PY -m pytest -q -s -m gpu -p no:cacheprovider --tb=short tests/test_cntk_cuda.py > "$OUT/pytest.log" 2>&1
echo "pytest exit $?"
grep -E "GPUCHECK|passed|failed|FAILED|^E " "$OUT/pytest.log" | head -60

echo "== benchmark"
timeout 300 $PY benchmarks/bench_cntk_gpu.py --out "$OUT" "${SASS_ARG[@]}" ${BENCH_ARGS:-}
echo "bench exit $?"
echo "== $(date -u) done"
