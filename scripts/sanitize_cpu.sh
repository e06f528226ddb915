#!/usr/bin/env bash
# Builds fastconv's CPU kernels with AddressSanitizer and UndefinedBehaviorSanitizer and runs the test
# suite against that build.
#
#   bash scripts/sanitize_cpu.sh [pytest arguments]        (or: make sanitize)
#
#   PYTHON=...        the Python whose torch to build against and test with (default: python3)
#   SANITIZE_DIR=...  where the sanitized copy is built (default: build/sanitize, git-ignored)
#
# What it does:
#   1. Copies the working tree (what git does not ignore) into $SANITIZE_DIR/src, so the normal
#      in-place build (fastconv/_C*.so) is left untouched, and builds the extension there (CPU only)
#      with -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined.
#      Object files are kept between runs, so a rerun recompiles only what changed.
#   2. Checks that the built module really links the ASan runtime.
#   3. Runs pytest in that copy with the compiler's libasan (and libstdc++) LD_PRELOADed (torch and
#      Python are not ASan-built, so the runtime must be loaded first), leak detection off (the interpreter and torch
#      keep allocations alive until exit), and every UBSan finding fatal. FASTCONV_SANITIZE=1 makes the
#      tests that measure resident memory skip themselves: ASan's shadow memory and quarantine make
#      those numbers meaningless. Slow tests run too when FASTCONV_SLOW=1 is set.
#   4. Fails if pytest fails or if any sanitizer report was written ($SANITIZE_DIR/asan.*, ubsan.*, and
#      the pytest log $SANITIZE_DIR/pytest.log).
#
# Duration on the 2-core development machine (quiet, 2026-11-27): a first build takes about 2.5 minutes
# (138 s), a rebuild under a minute (43 s); the default suite then takes about 3 minutes under the
# sanitizers (607 passed, 12 skipped: 163-186 s), so 4 to 5 minutes in all.
# Pytest arguments replace the default suite, e.g.  bash scripts/sanitize_cpu.sh tests/test_conv.py
# For the long property-based mode under the sanitizers:
#   FASTCONV_HYPOTHESIS_EXAMPLES=3000 bash scripts/sanitize_cpu.sh tests/test_properties.py
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
# A relative interpreter path (make passes .venv/bin/python) must survive the cd into the build copy.
if [[ $PY == */* ]]; then PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"; fi
OUT="${SANITIZE_DIR:-$ROOT/build/sanitize}"
SRC="$OUT/src"
CXX_BIN="${CXX:-c++}"

LIBASAN="$("$CXX_BIN" -print-file-name=libasan.so)"
# Preloaded after libasan so that ASan finds the real __cxa_throw at start-up: Python does not link
# libstdc++ itself, and without it the first C++ exception thrown by a pybind11 module (triton, which
# torch.compile imports) trips an ASan CHECK.
LIBSTDCXX="$("$CXX_BIN" -print-file-name=libstdc++.so)"
if [[ ! -e "$LIBASAN" ]]; then
  echo "sanitize_cpu.sh: $CXX_BIN has no libasan.so (install the compiler's ASan runtime, e.g. libasan8)" >&2
  exit 2
fi

start=$(date +%s)
echo "== copying the source tree to $SRC"
rm -rf "$SRC.new" "$OUT"/asan.* "$OUT"/ubsan.*
mkdir -p "$SRC.new"
# Every file of the working tree that git does not ignore (tests import benchmarks/ and examples/ too);
# outside a git checkout, the whole tree less build outputs.
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  (cd "$ROOT" && git ls-files -co --exclude-standard -z | while IFS= read -r -d '' f; do
     [[ -f "$f" ]] && printf '%s\0' "$f"; done | tar --null -T - -cf -) | tar -C "$SRC.new" -xf -
else
  (cd "$ROOT" && tar --exclude=./build --exclude=./.git --exclude=./.venv --exclude='*.so' \
     --exclude='__pycache__' -cf - .) | tar -C "$SRC.new" -xf -
fi
# Keep the previous run's object files: tar kept the sources' times, so only changed files recompile.
[[ -d "$SRC/build" ]] && mv "$SRC/build" "$SRC.new/build"
rm -rf "$SRC"
mv "$SRC.new" "$SRC"

echo "== building with -fsanitize=address,undefined (log: $OUT/build.log)"
SAN_FLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined -g"
(
  cd "$SRC"
  CFLAGS="$SAN_FLAGS" CXXFLAGS="$SAN_FLAGS" LDFLAGS="-fsanitize=address,undefined" FASTCONV_CUDA=0 \
    "$PY" setup.py build_ext --inplace
) >"$OUT/build.log" 2>&1 || { tail -n 40 "$OUT/build.log"; echo "sanitize_cpu.sh: build failed" >&2; exit 1; }
built=$(date +%s)

SO="$(ls "$SRC"/fastconv/_C*.so)"
# grep reads all of ldd's output (grep -q would stop early, and ldd's SIGPIPE then fails the pipeline).
if ! ldd "$SO" | grep libasan >/dev/null; then
  echo "sanitize_cpu.sh: $SO does not link libasan: the sanitizer flags did not reach the compiler" >&2
  exit 1
fi
echo "== built in $((built - start)) s: $SO"

echo "== running the tests under ASan + UBSan (log: $OUT/pytest.log)"
status=0
(
  cd "$SRC"
  export LD_PRELOAD="$LIBASAN $LIBSTDCXX${LD_PRELOAD:+ $LD_PRELOAD}"
  # Reports go to files as well as stderr: pytest captures a test's stderr, and a report that aborts
  # the process would otherwise be lost with it.
  # allocator_may_return_null: tests ask for impossible outputs on purpose (huge paddings); torch
  # then raises its usual out-of-memory error instead of ASan aborting.
  export ASAN_OPTIONS="detect_leaks=0:alloc_dealloc_mismatch=0:allocator_may_return_null=1:abort_on_error=1:symbolize=1:log_path=$OUT/asan"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$OUT/ubsan"
  export FASTCONV_SANITIZE=1
  export PYTHONPATH="$SRC${PYTHONPATH:+:$PYTHONPATH}"
  "$PY" -c "import fastconv, sys; assert fastconv.__file__.startswith('$SRC'), fastconv.__file__"
  "$PY" -m pytest -q -p no:cacheprovider "$@"  # no arguments: the default suite (testpaths)
) 2>&1 | tee "$OUT/pytest.log" || status=$?
done_at=$(date +%s)

# (Files holding only ASan's "failed to allocate" warnings, from allocator_may_return_null, are no finding.)
reports=$(grep -lE "ERROR: AddressSanitizer|runtime error:|SUMMARY: " "$OUT"/asan.* "$OUT"/ubsan.* 2>/dev/null || true)
if [[ -n "$reports" ]]; then
  for f in $reports; do echo "---- $f"; head -n 30 "$f"; done
  echo "sanitize_cpu.sh: sanitizer reports: $(echo $reports)" >&2
  status=1
fi
if grep -qE "ERROR: AddressSanitizer|runtime error:|SUMMARY: (Address|UndefinedBehavior)Sanitizer" "$OUT/pytest.log"; then
  echo "sanitize_cpu.sh: sanitizer findings in $OUT/pytest.log" >&2
  status=1
fi
echo "== build $((built - start)) s, tests $((done_at - built)) s, total $((done_at - start)) s; exit status $status"
exit "$status"
