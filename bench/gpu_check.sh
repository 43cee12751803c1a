#!/usr/bin/env bash
# One command for a lent GPU machine: build kmgan_ext with the machine's torch, run the whole
# test suite, run the full benchmarks, and leave everything in OUT_DIR.
#
#   bash bench/gpu_check.sh OUT_DIR          (or: make gpu-check OUT_DIR=...)
#
# Files in OUT_DIR (10, flat): env.txt (versions, nvidia-smi, backends), build.log,
# pytest.log, bench.log, results.json, results.md, plots.tar.gz (one PNG per op), and the
# scaling sweep's (bench/sweep.py --device cuda, the GPU grid: N to 1e6, K to 4096, d to 512):
# sweep.log, sweep.json, sweep_plots.tar.gz (time against work, one PNG per op).
# Python wheels carried in .whl/ (faiss-cpu, flash-kmeans, fastkmeans, ... see
# bench/README.md) are installed into /tmp/site first and put on PYTHONPATH.
#
# Time limits in seconds (the whole script stays under ~9.6 minutes, a device call's limit,
# with the defaults): GPU_CHECK_BUILD_S=140, GPU_CHECK_TEST_S=140 (the GPU cases),
#   GPU_CHECK_TEST_REST_S=90 (the other tests), GPU_CHECK_BENCH_S=80 (benchmark budget;
#   the benchmark is killed 60 s after it if a case overruns), GPU_CHECK_SWEEP_S=45 (the
#   sweep starts no cell after it, cheapest cells first, the rest listed as skipped; killed
#   20 s after it)
# For a rehearsal without a GPU: GPU_CHECK_SKIP_BUILD=1, GPU_CHECK_PYTEST_ARGS="tests/x.py",
#   GPU_CHECK_BENCH_ARGS="--tiny --threads 1", GPU_CHECK_SWEEP_ARGS="--tiny --threads 1".
set -u -o pipefail

OUT=${1:?usage: bash bench/gpu_check.sh OUT_DIR}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$ROOT" || exit 1
PY=${PYTHON:-python3}
BUILD_S=${GPU_CHECK_BUILD_S:-140}
TEST_S=${GPU_CHECK_TEST_S:-140}
TEST_REST_S=${GPU_CHECK_TEST_REST_S:-90}
BENCH_S=${GPU_CHECK_BENCH_S:-80}
SWEEP_S=${GPU_CHECK_SWEEP_S:-45}
export PYTHONUNBUFFERED=1
T0=$(date +%s)
elapsed() { echo "$(( $(date +%s) - T0 )) s"; }
failed=""

# 1. Wheels carried from the development machine (the GPU machine cannot download).
if compgen -G ".whl/*.whl" >/dev/null; then
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl; then
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    else
        failed="$failed wheels"
        echo "gpu_check: installing .whl/*.whl failed; continuing without them" >&2
    fi
fi

# 2. What the machine is.
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo 'unknown (no git)')$(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo -dirty)"
    echo "python: $(command -v "$PY") $("$PY" --version 2>&1)"
    echo "--- nvidia-smi"
    nvidia-smi 2>&1 || echo "nvidia-smi not available"
    echo "--- nvcc"
    nvcc --version 2>&1 | tail -2 || echo "nvcc not available"
    echo "--- python packages"
    "$PY" - <<'EOF' 2>&1
import importlib
for m in ("torch", "triton", "numpy", "faiss", "sklearn", "flash_kmeans", "fastkmeans",
          "fast_pytorch_kmeans", "pykeops", "matplotlib", "pytest", "expecttest"):
    try:
        print(f"{m}: {getattr(importlib.import_module(m), '__version__', 'present')}")
    except Exception as e:
        print(f"{m}: absent ({type(e).__name__})")
import torch
print("cuda available:", torch.cuda.is_available(), "| torch.version.cuda:", torch.version.cuda)
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(), "| capability:", torch.cuda.get_device_capability())
EOF
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# 3. Build the extension in place against this machine's torch, for this GPU's architecture.
if [ "${GPU_CHECK_SKIP_BUILD:-0}" = "1" ]; then
    echo "build skipped (GPU_CHECK_SKIP_BUILD=1)" >"$OUT/build.log"
else
    if [ -z "${CUDA_HOME:-}" ] && command -v nvcc >/dev/null; then
        CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
        export CUDA_HOME
    fi
    if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
        arch=$("$PY" -c "import torch; c = torch.cuda.get_device_capability(); print(f'{c[0]}.{c[1]}')" 2>/dev/null)
        [ -n "$arch" ] && export TORCH_CUDA_ARCH_LIST=$arch
    fi
    export MAX_JOBS=${MAX_JOBS:-$(nproc)}
    echo "gpu_check: building (CUDA_HOME=${CUDA_HOME:-unset}, TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-unset}), limit ${BUILD_S} s"
    if ! timeout -k 10 "$BUILD_S" "$PY" -m pip install -v --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1; then
        failed="$failed build"
        echo "gpu_check: build FAILED (see build.log); its last lines:"
        tail -25 "$OUT/build.log"
    fi
fi
"$PY" -c "import kmgan_ext as km; print('backends:', km.available_backends())" 2>&1 | tee -a "$OUT/env.txt"
echo "gpu_check: build done at $(elapsed)"

# 4. The whole test suite (SIGINT at a limit, so pytest still prints its summary): first the
#    cases only a GPU can run (ids and names with "cuda"/"gpu"), then the rest, over the cores
#    with pytest-xdist when the image has it.
run_tests() {  # limit_s, then pytest arguments
    local limit=$1
    shift
    timeout -s INT -k 20 "$limit" "$PY" -m pytest -q -rs -p no:cacheprovider "$@" 2>&1 | tee -a "$OUT/pytest.log"
    rc=${PIPESTATUS[0]}
    # 5: nothing selected (e.g. no GPU case in a narrowed run) is not a failure.
    [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ] && failed="$failed pytest(rc=$rc)"
}
: >"$OUT/pytest.log"
if [ -n "${GPU_CHECK_PYTEST_ARGS:-}" ]; then
    # shellcheck disable=SC2086
    run_tests "$TEST_S" $GPU_CHECK_PYTEST_ARGS
else
    run_tests "$TEST_S" -k "cuda or gpu" tests
    xdist=()
    "$PY" -c "import xdist" 2>/dev/null && xdist=(-n "$(( $(nproc) < 8 ? $(nproc) : 8 ))")
    run_tests "$TEST_REST_S" "${xdist[@]}" -k "not (cuda or gpu)" tests
fi
echo "gpu_check: tests done at $(elapsed)"

# 5. The full benchmarks, within their time budget.
# shellcheck disable=SC2086
timeout -k 10 "$((BENCH_S + 60))" "$PY" bench/run_all.py --out "$OUT" --budget-s "$BENCH_S" \
    ${GPU_CHECK_BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log" | grep -E "^bench:|^\| " | tail -60
rc=${PIPESTATUS[0]}
[ "$rc" -ne 0 ] && failed="$failed bench(rc=$rc)"
if compgen -G "$OUT/*.png" >/dev/null; then
    (cd "$OUT" && tar -czf plots.tar.gz -- *.png && rm -f -- *.png)
fi
echo "gpu_check: benchmarks done at $(elapsed)"

# 6. The scaling sweep on the GPU (the same checks as on CPU), within its budget.
SWEEP_DEVICE=$("$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')" 2>/dev/null || echo cpu)
rm -rf "$OUT/sweep"
# shellcheck disable=SC2086
timeout -k 10 "$((SWEEP_S + 20))" "$PY" bench/sweep.py --device "$SWEEP_DEVICE" --budget-s "$SWEEP_S" --cell-s 5 \
    --out "$OUT/sweep" ${GPU_CHECK_SWEEP_ARGS:-} >"$OUT/sweep.log" 2>&1
rc=$?
[ "$rc" -ne 0 ] && failed="$failed sweep(rc=$rc)"
tail -3 "$OUT/sweep.log"
if [ -f "$OUT/sweep/results.json" ]; then
    mv "$OUT/sweep/results.json" "$OUT/sweep.json"
    if compgen -G "$OUT/sweep/*.png" >/dev/null; then
        (cd "$OUT/sweep" && tar -czf ../sweep_plots.tar.gz -- *.png)
    fi
fi
rm -rf "$OUT/sweep"
echo "gpu_check: finished at $(elapsed); files: $(cd "$OUT" && ls | tr '\n' ' ')"
if [ -n "$failed" ]; then
    echo "gpu_check: FAILED:$failed"
    exit 1
fi
echo "gpu_check: all steps passed"
