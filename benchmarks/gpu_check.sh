#!/usr/bin/env bash
# One-call check on a bare GPU machine (torch + triton preinstalled, no internet; run from the repo root):
#
#     bash benchmarks/gpu_check.sh [OUT_DIR]          # OUT_DIR: first argument, else $OUT, else ./gpu_check_out
#
# Stages, each under its own `timeout` (seconds; override by environment) and all within
# TOTAL_BUDGET=285 seconds (a stage gets at most what is left of it, less 40 s for the last stages):
#   1. install   INSTALL_TIMEOUT=60   pip install --no-deps --no-build-isolation -e .
#   2. env       ENV_TIMEOUT=20       nvidia-smi, versions, backend availability
#   3. tests     TEST_TIMEOUT=120     pytest -x -q tests -m "not slow"            (PYTEST_ARGS overrides)
#   4. sinkhorn  SINKHORN_TIMEOUT=60  benchmarks/sinkhorn.py at M=45,056 K=3000 D=256 eps=0.03, 10 iters
#   5. loss      LOSS_TIMEOUT=60      benchmarks/loss.py at M=22,528 K=3000 D=256 eps=0.05, hard and soft
#   6. cuda      the explicit `cuda` backend (the extension's CUDA kernels), after the Triton stages:
#                when the extension has its CUDA part (GPU_CHECK_BUILD=1), or, with
#                GPU_CHECK_CUDA_BACKEND=1, after building it in place (BUILD_TIMEOUT); its tests
#                (CUDA_TEST_TIMEOUT=60) and the Sinkhorn benchmark rows (CUDA_BENCH_TIMEOUT=90)
#   7. model     measured against the cost model's floor for every row (benchmarks/gpu_model.py
#                --compare; the model as committed before the run), copied into summary.txt
#   8. table     results.md from the CSVs of this run (benchmarks/make_table.py)
# Outputs in OUT_DIR, at most 8 files: summary.txt, logs.txt (every stage's log, one after the
# other), results.md and the benchmark CSVs (no PNGs). A stage that fails or times out is
# recorded in summary.txt and the next stage still runs; benchmark CSVs are written row by row, so
# a timed-out benchmark keeps the rows it finished.
#
# Build choice: by default the package is installed WITHOUT the compiled extension
# (SIGMA_NO_EXTENSION=1): the GPU path is the Triton backend (JIT-compiled at first use), and an
# extension build (C++ and nvcc) could alone eat most of the 8 minutes. Set GPU_CHECK_BUILD=1 to
# build it (BUILD_TIMEOUT=240): first with CUDA, then with SIGMA_NO_CUDA=1, then without it.
# If pip fails altogether, the stages run from the source tree via PYTHONPATH.
#
# Needs pytest + hypothesis for the tests stage (it says so in summary.txt when they are missing).
# A machine without internet can take them from a wheel folder made beforehand and carried along:
#     pip download --only-binary :all: -d .wheels pytest hypothesis     (pure-Python wheels; .wheels is gitignored)
# the script installs from WHEELS_DIR (default .wheels) when they are not importable;
# POT, matplotlib and flash-sinkhorn are optional (skipped with a note). Without .git in the copied
# tree, pass the commit: SIGMA_BENCH_COMMIT=$(git rev-parse --short HEAD) bash benchmarks/gpu_check.sh
#
# For a dry run on a machine without a GPU: GPU_CHECK_ALLOW_CPU=1 GPU_CHECK_SKIP_INSTALL=1 and
# small SINKHORN_ARGS / LOSS_ARGS / PYTEST_ARGS.
set -u

OUT_DIR="${1:-${OUT:-$PWD/gpu_check_out}}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
SUMMARY="$OUT_DIR/summary.txt"
PY="${PYTHON:-$(command -v python || command -v python3)}"
START_TS=$(date +%s)
TOTAL_BUDGET="${TOTAL_BUDGET:-285}"
: > "$SUMMARY"

note() { echo "[$(date -u +%H:%M:%S) +$(( $(date +%s) - START_TS ))s] $*" | tee -a "$SUMMARY"; }

# run_stage NAME TIMEOUT CMD...: output to OUT_DIR/NAME.log, one summary line with rc and duration.
run_stage() {
    local name="$1" limit="$2"; shift 2
    local t0=$(date +%s)
    # the whole run stays within TOTAL_BUDGET; 40 s are kept for the model and table stages
    local left=$(( TOTAL_BUDGET - (t0 - START_TS) - 40 ))
    case "$name" in model|table) left=$(( left + 40 )) ;; esac
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 5 ]; then
        note "stage $name: SKIPPED (the ${TOTAL_BUDGET}s budget is spent)"
        return 124
    fi
    note "stage $name (timeout ${limit}s): $*"
    timeout -k 10 "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
    local rc=$?
    local what="ok"
    [ $rc -ne 0 ] && what="FAILED"
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && what="TIMED OUT"
    note "stage $name: $what (rc=$rc, $(( $(date +%s) - t0 ))s); tail of $name.log:"
    tail -n "${TAIL_LINES:-5}" "$OUT_DIR/$name.log" | sed 's/^/    /' | tee -a "$SUMMARY"
    return $rc
}

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    if [ "${GPU_CHECK_ALLOW_CPU:-0}" != "1" ]; then
        note "no CUDA device visible to torch: nothing to check here (GPU_CHECK_ALLOW_CPU=1 for a dry run)"
        exit 2
    fi
    note "no CUDA device: dry run on CPU"
fi

# 1. install
if [ "${GPU_CHECK_SKIP_INSTALL:-0}" = "1" ]; then
    note "install skipped (GPU_CHECK_SKIP_INSTALL=1)"
elif [ "${GPU_CHECK_BUILD:-0}" = "1" ]; then
    BUILD_TIMEOUT="${BUILD_TIMEOUT:-240}"
    run_stage install "$BUILD_TIMEOUT" env MAX_JOBS="${MAX_JOBS:-16}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" \
        "$PY" -m pip install --no-deps --no-build-isolation -e . \
    || run_stage install-no-cuda "$BUILD_TIMEOUT" env SIGMA_NO_CUDA=1 MAX_JOBS="${MAX_JOBS:-16}" \
        "$PY" -m pip install --no-deps --no-build-isolation -e . \
    || run_stage install-no-ext "${INSTALL_TIMEOUT:-60}" env SIGMA_NO_EXTENSION=1 \
        "$PY" -m pip install --no-deps --no-build-isolation -e . \
    || { note "pip install failed: using PYTHONPATH=$PWD"; export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"; }
else
    run_stage install "${INSTALL_TIMEOUT:-60}" env SIGMA_NO_EXTENSION=1 \
        "$PY" -m pip install --no-deps --no-build-isolation -e . \
    || { note "pip install failed: using PYTHONPATH=$PWD"; export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"; }
fi

# 2. environment
run_stage env "${ENV_TIMEOUT:-20}" bash -c 'nvidia-smi || echo "nvidia-smi not available";
    echo "git commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"; git status --short 2>/dev/null | head -20;
    "$0" benchmarks/env_report.py' "$PY"

# 3. tests
WHEELS_DIR="${WHEELS_DIR:-.wheels}"
if ! "$PY" -c "import pytest, hypothesis" 2>/dev/null && [ -d "$WHEELS_DIR" ]; then
    run_stage test-deps 60 "$PY" -m pip install --no-index --find-links "$WHEELS_DIR" pytest hypothesis
fi
"$PY" -c "import pytest, hypothesis" 2>/dev/null || note "pytest or hypothesis is not installed: the tests stage will fail"
# shellcheck disable=SC2086
run_stage tests "${TEST_TIMEOUT:-120}" "$PY" -m pytest ${PYTEST_ARGS:--x -q tests -m "not slow" --durations=15 -p no:cacheprovider}

# 4. and 5. benchmarks at the released recipe's sizes (docs/method.md)
# shellcheck disable=SC2086
run_stage sinkhorn "${SINKHORN_TIMEOUT:-60}" "$PY" benchmarks/sinkhorn.py --out "$OUT_DIR" --no-plot \
    ${SINKHORN_ARGS:---sizes ssv2-vitb-b32 --iters 10}
# shellcheck disable=SC2086
run_stage loss "${LOSS_TIMEOUT:-60}" "$PY" benchmarks/loss.py --out "$OUT_DIR" --no-plot \
    ${LOSS_ARGS:---sizes ssv2-vits --iters 10 --targets hard,soft}

# 6. the cuda backend: only with its kernels built (time to spare on a lent machine)
cuda_built() { "$PY" -c "import sys; from sigma_kernels import _C; sys.exit(0 if _C.with_cuda else 1)" 2>/dev/null; }
if ! cuda_built && [ "${GPU_CHECK_CUDA_BACKEND:-0}" = "1" ]; then
    run_stage build-cuda "${BUILD_TIMEOUT:-240}" env MAX_JOBS="${MAX_JOBS:-16}" \
        TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" "$PY" setup.py build_ext --inplace
fi
if cuda_built; then
    run_stage cuda-tests "${CUDA_TEST_TIMEOUT:-60}" "$PY" -m pytest -q -x -p no:cacheprovider tests/test_cuda_backend.py
    run_stage cuda-sinkhorn "${CUDA_BENCH_TIMEOUT:-90}" "$PY" benchmarks/sinkhorn.py --out "$OUT_DIR" --no-plot \
        --sizes ssv2-vitb-b32 --iters 10 --providers 'research-eager,triton,cuda'
else
    note "cuda backend stage skipped: the extension has no CUDA part (GPU_CHECK_BUILD=1 or GPU_CHECK_CUDA_BACKEND=1)"
fi

# 7. measured vs the cost model's floors, in full in summary.txt
TAIL_LINES=200 run_stage model 20 "$PY" benchmarks/gpu_model.py --compare "$OUT_DIR"

# 8. Markdown table of this run's CSVs
run_stage table 20 "$PY" benchmarks/make_table.py --results "$OUT_DIR" --stdout
cp "$OUT_DIR/table.log" "$OUT_DIR/results.md" 2>/dev/null

# Bundle the stage logs into one file.
for log in "$OUT_DIR"/*.log; do
    [ -e "$log" ] || continue
    { echo "===== $(basename "$log")"; cat "$log"; echo; } >> "$OUT_DIR/logs.txt"
    rm -f "$log"
done
note "done in $(( $(date +%s) - START_TS ))s; outputs in $OUT_DIR: $(cd "$OUT_DIR" && ls | tr '\n' ' ')"
