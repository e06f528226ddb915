#!/usr/bin/env bash
# The GPU check, in one command, from a fresh checkout on a machine with an NVIDIA GPU (no internet
# needed): builds fastconv in place for the local GPU with all cores, prints its build info, runs the
# CUDA tests, runs compute-sanitizer (memcheck over every CUDA kernel, racecheck over the shared-memory
# kernels), runs a small GPU benchmark (scripts/gpu_bench.py), then, if time is left, the project's
# benchmark runner on the GPU and the CPU tests. Every log and result goes to OUTDIR. The whole run stays
# under 8 minutes: each step has its own timeout, cut to the time left; a failing step does not stop the
# next. Ends with a summary (also in OUTDIR/summary.txt); the exit status is 0 only if every required
# step passed (the two extras are reported, not required).
#
#   bash scripts/gpu_check.sh OUTDIR
#
# It writes about twenty files; where only a few files can be copied back, write to a scratch folder and
# archive it:  bash scripts/gpu_check.sh /tmp/check; tar -czf RESULTS/check.tgz -C /tmp check
set -u

OUT=${1:?usage: bash scripts/gpu_check.sh OUTDIR}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
PY=python3
BUDGET_S=${GPU_CHECK_BUDGET_S:-465}  # 8 minutes, less a margin for the summary
T0=$(date +%s)
SUMMARY=()
FAILED=0

remaining() { echo $((BUDGET_S - ($(date +%s) - T0))); }

note() {  # note NAME STATUS: a summary line for a step that did not run
  SUMMARY+=("$(printf '%-16s %s' "$1" "$2")")
  [[ $2 == SKIPPED* ]] || FAILED=1
}

# step NAME LIMIT_S COMMAND...: COMMAND's stdout and stderr go to OUT/NAME.log; it runs under a timeout
# of LIMIT_S seconds, or less when less of the budget is left.
step() {
  local name=$1 limit=$2
  shift 2
  local left
  left=$(remaining)
  if ((left < 20)); then
    note "$name" "SKIPPED (out of time)"
    return 1
  fi
  ((limit > left - 10)) && limit=$((left - 10))
  echo "=== $name (timeout ${limit}s, $(date +%T))"
  local started rc status
  started=$(date +%s)
  timeout -k 10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status=PASS ;;
    124 | 137) status="TIMEOUT (${limit}s)" ;;
    *) status="FAIL (exit $rc)" ;;
  esac
  if ((rc != 0)); then
    # Optional steps (OPTIONAL=1: extras run when time is left) are reported but do not fail the check.
    if [[ ${OPTIONAL:-0} == 1 ]]; then
      status="$status, optional"
    else
      FAILED=1
    fi
  fi
  SUMMARY+=("$(printf '%-16s %-18s %4ss  %s' "$name" "$status" "$(($(date +%s) - started))" "$OUT/$name.log")")
  tail -n 4 "$OUT/$name.log"
  return $rc
}

has_module() { "$PY" -c "import $1" >/dev/null 2>&1; }

# --- environment ------------------------------------------------------------------------------------
step environment 60 bash -c '
  date; hostname; nproc; free -g | head -2
  nvidia-smi || true
  python3 -c "import sys, torch; print(sys.version); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"cudnn\", torch.backends.cudnn.version()); print(torch.cuda.get_device_name(), torch.cuda.get_device_capability())"
  command -v nvcc && nvcc --version | tail -n 2
  command -v ninja || echo "ninja: not on PATH"
  for m in pytest hypothesis pytest_benchmark numpy torchvision; do python3 -c "import $m" 2>/dev/null && echo "python module $m: yes" || echo "python module $m: no"; done
  git rev-parse HEAD 2>/dev/null && git status --short 2>/dev/null | head -20
'

ARCH=$(timeout 60 "$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null)
if [[ -z $ARCH ]]; then
  echo "no CUDA device visible to torch; the steps below will fail"
  ARCH=9.0
fi
SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer /usr/local/cuda*/compute-sanitizer/compute-sanitizer 2>/dev/null | head -n 1)

# --- build ------------------------------------------------------------------------------------------
step build 300 env FASTCONV_CUDA=1 TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS="$(nproc)" "$PY" setup.py build_ext --inplace
step fastconv_info 60 "$PY" -m fastconv

# --- CUDA tests -------------------------------------------------------------------------------------
if has_module pytest; then
  step cuda_tests 240 env FASTCONV_SLOW=1 FASTCONV_REQUIRE_CUDA=1 "$PY" -m pytest -q -rs -p no:cacheprovider --durations=10 \
    --junitxml="$OUT/cuda_tests.xml" tests/test_cuda.py
else
  note cuda_tests "FAIL (pytest is not installed)"
fi

# --- compute-sanitizer ------------------------------------------------------------------------------
if [[ -n $SANITIZER ]]; then
  # No caching allocator: each tensor is its own allocation, so an access past its end is caught.
  step memcheck 150 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool memcheck --error-exitcode 1 \
    --report-api-errors no "$PY" scripts/sanitize_cuda.py
else
  note memcheck "FAIL (compute-sanitizer not found)"
fi

# --- benchmark (scripts/gpu_bench.py: a minute; benchmarks/run.py --device cuda runs at the end if time is left)
step benchmark 120 "$PY" scripts/gpu_bench.py --quick --out "$OUT/bench"

if [[ -n $SANITIZER ]]; then
  step racecheck 120 "$SANITIZER" --tool racecheck --error-exitcode 1 --report-api-errors no \
    "$PY" scripts/sanitize_cuda.py --shared-memory-only
else
  note racecheck "FAIL (compute-sanitizer not found)"
fi

# --- if time is left (optional): the project's GPU benchmark report, the CPU tests -------------------
if [[ -f benchmarks/run.py ]] && (($(remaining) > 60)); then
  OPTIONAL=1 step benchmarks_run 150 "$PY" benchmarks/run.py --device cuda --quick --out "$OUT/benchmarks-run"
fi
if has_module pytest && (($(remaining) > 60)); then
  OPTIONAL=1 step cpu_tests 150 "$PY" -m pytest -q -rs -p no:cacheprovider --ignore=tests/test_cuda.py tests
else
  note cpu_tests "SKIPPED (not enough time left, or no pytest)"
fi

# --- summary ----------------------------------------------------------------------------------------
{
  echo "fastconv GPU check, $(date), $(($(date +%s) - T0))s in total, GPU arch $ARCH"
  printf '%s\n' "${SUMMARY[@]}"
  if ((FAILED)); then echo "RESULT: FAILED"; else echo "RESULT: ALL PASSED"; fi
} | tee "$OUT/summary.txt"
exit $FAILED
