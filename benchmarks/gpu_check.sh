#!/usr/bin/env bash
# Validates a GPU machine end to end in one command (< ~8 minutes on one H100 with 16 cores):
#
#   bash benchmarks/gpu_check.sh [RESULTS_DIR]        # default: $OUT, else results/gpu
#
#   (a) nvidia-smi, python / torch / triton / nvcc versions
#   (b) build + install: pip install --no-build-isolation --no-deps -v .
#       (TORCH_CUDA_ARCH_LIST defaults to the visible GPU's capability, e.g. "9.0"; MAX_JOBS to nproc)
#   (c) python -m fastnas.info (the INSTALLED package: run with -P / from outside the checkout)
#   (d) pytest -m gpu tests -q, then the full suite pytest tests -q -x
#   (e) python benchmarks/bench_ops.py --device cuda, and --device cpu --quick
#       + benchmarks/bench_search.py --device cuda --no-md (if the file exists; it writes $FASTNAS_RESULTS;
#         torch.compile of the reference gets what is left of the budget minus 60 s, else --no-compile)
#       + benchmarks/bench_proxies.py --device cuda (SWAP, reg_swap, NWOT vs the papers' code, 16 archs)
#   (f) everything lands in RESULTS_DIR, at most 8 files (the device tool brings back 8):
#       summary.txt setup.log tests.log bench.log ops.jsonl (cuda + cpu rows) report.md
#       [search_cuda.jsonl] [proxies_cuda.jsonl]
#
# Exit status: 1 when the build or a test run failed (the benchmarks still run, to get numbers),
# 2 when only a benchmark step failed, 0 when all passed.
#
# Knobs: PYTHON (interpreter, default python3), FASTNAS_GPU_CHECK_BUDGET (seconds for the whole run,
# default 450; every step gets at most what is left, tests leave 150 s to the benchmarks),
# FASTNAS_GPU_CHECK_SKIP_BUILD=1 (reuse the installed build), TORCH_CUDA_ARCH_LIST, MAX_JOBS.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
RESULTS="${1:-${OUT:-results/gpu}}"
mkdir -p "$RESULTS" && RESULTS="$(cd "$RESULTS" && pwd)"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
BUDGET="${FASTNAS_GPU_CHECK_BUDGET:-450}"
START=$SECONDS
SUMMARY="$RESULTS/summary.txt"
unset PYTHONPATH          # test and time the installed package, never the source tree by accident
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
: > "$SUMMARY"
for f in setup tests bench; do : > "$RESULTS/$f.log"; done
rm -f "$RESULTS"/ops.jsonl "$RESULTS"/report.md "$RESULTS"/search_cuda.jsonl "$RESULTS"/proxies_cuda.jsonl

# `python -P` keeps the current directory (the checkout, whose fastnas/ has no built extension) off
# sys.path so that the installed package is imported; Python < 3.11 has no -P: use the pytest script.
if "$PY" -P -c "" 2>/dev/null; then SAFE=(-P); PYTEST=("$PY" -P -m pytest)
else SAFE=(); PYTEST=("$(dirname "$PY")/pytest"); [ -x "${PYTEST[0]}" ] || PYTEST=(pytest); fi

note() { echo "$*" | tee -a "$SUMMARY"; }

# step NAME LOG CAP RESERVE CMD...: runs CMD under `timeout`, output appended to $RESULTS/LOG.log,
# limited to CAP seconds and to what is left of the budget minus RESERVE; returns CMD's status.
step() {
  local name=$1 log="$RESULTS/$2.log" cap=$3 reserve=$4; shift 4
  local left=$(( BUDGET - (SECONDS - START) - reserve ))
  local limit=$(( cap < left ? cap : left ))
  if (( limit < 15 )); then note "$(printf '%-12s SKIPPED (time budget spent)' "$name")"; return 124; fi
  local t0=$SECONDS
  { echo; echo "======== $name: $* (limit ${limit}s)"; } >> "$log"
  local from=$(( $(wc -l < "$log") + 1 ))
  echo "==> $name (limit ${limit}s): $*"
  timeout --kill-after=15 "$limit" "$@" >> "$log" 2>&1
  local rc=$?
  note "$(printf '%-12s rc=%-3s %4ss  %s' "$name" "$rc" "$((SECONDS - t0))" "$*")"
  (( rc == 124 || rc == 137 )) && note "             (killed at the ${limit}s limit)"
  tail -n +"$from" "$log" | tail -n 12 | sed 's/^/    /'
  return $rc
}

build_failed=0; tests_failed=0; bench_failed=0

# ---- (a) environment ---------------------------------------------------------------------------
{
  echo "gpu_check: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname), checkout $ROOT"
  echo "commit: $(git -C "$ROOT" rev-parse --verify -q HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo ' (dirty)')"
  nvidia-smi 2>&1 || echo "nvidia-smi: not available"
  command -v nvcc >/dev/null && nvcc --version | tail -n 2 || echo "nvcc: not on PATH"
  echo "python: $PY ($("$PY" --version 2>&1)); cores: $(nproc)"
  "$PY" - <<'EOF' 2>&1
import torch
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}); cuda available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device 0: {p.name}, capability {p.major}.{p.minor}, {p.multi_processor_count} SMs, "
          f"{p.total_memory / 2**30:.1f} GiB")
try:
    import triton
    print(f"triton {triton.__version__}")
except Exception as exc:
    print(f"triton: not importable ({exc})")
EOF
} 2>&1 | tee -a "$RESULTS/setup.log" | tee -a "$SUMMARY"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  note "gpu_check: WARNING: torch sees no CUDA device; the GPU tests skip and the CUDA benchmark fails"
fi

# ---- (b) build and install ----------------------------------------------------------------------
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  cap="$("$PY" -c "import torch; c = torch.cuda.get_device_capability(); print(f'{c[0]}.{c[1]}')" 2>/dev/null)"
  [ -n "$cap" ] && export TORCH_CUDA_ARCH_LIST="$cap"
fi
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
note "TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-<unset>} MAX_JOBS=$MAX_JOBS"
if [ "${FASTNAS_GPU_CHECK_SKIP_BUILD:-0}" = "1" ]; then
  note "build        SKIPPED (FASTNAS_GPU_CHECK_SKIP_BUILD=1)"
else
  step build setup 300 150 "$PY" -m pip install --no-build-isolation --no-deps -v . || build_failed=1
fi

# ---- (c) what was built ---------------------------------------------------------------------------
IMPORT_CHECK='import fastnas, fastnas._C as C; print("fastnas", fastnas.__version__, fastnas.__file__, "| _C", C.__file__, "cuda_built", C.cuda_built(), "torch", C.torch_version)'
(cd "$RESULTS" && step info setup 60 150 "$PY" "${SAFE[@]}" -m fastnas.info) || build_failed=1
step import setup 60 150 "$PY" "${SAFE[@]}" -c "$IMPORT_CHECK" || build_failed=1
sed -n '/======== info/,$p' "$RESULTS/setup.log" | head -n 40 >> "$SUMMARY"

# ---- (d) tests ------------------------------------------------------------------------------------
# Run from the results folder, not the checkout: tests that start `python -m fastnas.info` in a
# subprocess would otherwise import the checkout's fastnas/ (cwd first on sys.path; no built extension
# there) instead of the installed package. pytest still finds its configuration in $ROOT/pyproject.toml.
(cd "$RESULTS" && step tests-gpu tests 150 150 "${PYTEST[@]}" -m gpu "$ROOT/tests" -q -p no:cacheprovider) \
  || tests_failed=1
(cd "$RESULTS" && step tests-all tests 240 150 "${PYTEST[@]}" "$ROOT/tests" -q -x -p no:cacheprovider) \
  || tests_failed=1

# ---- (e) benchmarks ------------------------------------------------------------------------------
BENCH_ENV=()
if ! "$PY" "${SAFE[@]}" -c "import fastnas" 2>/dev/null; then
  note "gpu_check: fastnas is not installed; benchmarking the source tree (torch backend only)"
  BENCH_ENV=(env "PYTHONPATH=$ROOT")
fi
step bench-cuda bench 240 45 "${BENCH_ENV[@]}" "$PY" benchmarks/bench_ops.py --device cuda \
  --results "$RESULTS/ops.jsonl" || bench_failed=1
step bench-cpu bench 60 0 "${BENCH_ENV[@]}" "$PY" benchmarks/bench_ops.py --device cpu --quick \
  --results "$RESULTS/ops.jsonl" --append || bench_failed=1
# The proxies score the real CIFAR-10 sample when the checkout carries it (shared/data inside it, or
# ../shared/data beside it); the device machine gets only the checkout, so otherwise synthetic data.
PROXY_DATA=synthetic
for d in "$ROOT/shared/data" "$ROOT/../shared/data"; do
  if [ -f "$d/cifar10_sample.npz" ] && [ -f "$d/nb201_dev.csv" ]; then PROXY_DATA=$d; break; fi
done
step bench-proxy bench 90 0 "${BENCH_ENV[@]}" "$PY" benchmarks/bench_proxies.py --device cuda --archs 16 \
  --proxies swap reg_swap nwot --data "$PROXY_DATA" --out "$RESULTS/proxies_cuda.jsonl" || bench_failed=1
# The end-to-end search step (fastnas vs the PC-DARTS reference, eager and torch.compile): takes --device,
# writes its JSON-lines results to $FASTNAS_RESULTS (its table goes into report.md: --no-md keeps the
# folder at 8 files) and exits non-zero on failure. Compiling the reference is the long part: it is
# given what is left of the budget minus 60 s for the eager variants and the report, or skipped.
if [ -f benchmarks/bench_search.py ]; then
  search_cap=240
  left=$(( BUDGET - (SECONDS - START) ))
  compile_s=$(( (search_cap < left ? search_cap : left) - 60 ))
  if (( compile_s >= 30 )); then COMPILE=(--compile --compile-timeout "$compile_s"); else COMPILE=(--no-compile); fi
  step bench-search bench "$search_cap" 0 env "FASTNAS_RESULTS=$RESULTS/search_cuda.jsonl" "${BENCH_ENV[@]}" \
    "$PY" benchmarks/bench_search.py --device cuda --no-md "${COMPILE[@]}" || bench_failed=1
fi

# ---- (f) report -----------------------------------------------------------------------------------
reports=()
for f in "$RESULTS/search_cuda.jsonl" "$RESULTS/ops.jsonl"; do
  [ -s "$f" ] && reports+=("$f")
done
if (( ${#reports[@]} )); then
  "$PY" benchmarks/report.py "${reports[@]}" -o "$RESULTS/report.md" >> "$RESULTS/bench.log" 2>&1 || bench_failed=1
fi

status=0
(( bench_failed )) && status=2
(( build_failed || tests_failed )) && status=1
note ""
note "gpu_check: build $( ((build_failed)) && echo FAILED || echo ok ), tests $( ((tests_failed)) && echo FAILED || echo ok ), benchmarks $( ((bench_failed)) && echo FAILED || echo ok ); $((SECONDS - START))s; exit $status"
note "gpu_check: results in $RESULTS: $(cd "$RESULTS" && ls | tr '\n' ' ')"
[ -s "$RESULTS/report.md" ] && head -n 60 "$RESULTS/report.md"
exit $status
