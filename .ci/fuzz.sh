#!/usr/bin/env bash
# Coverage-guided fuzzing of the bundle reader and task application
# (tests/fuzz/fuzz_bundle.cpp) with libFuzzer + ASan + UBSan, for a bounded time.
#
#   bash .ci/fuzz.sh                      # CI: 60 s
#   FUZZ_SECONDS=3600 bash .ci/fuzz.sh    # longer; the corpus grows in build/fuzz/corpus
#   FUZZ_RUNS=1000000 bash .ci/fuzz.sh    # a fixed number of executions instead
#
# A crash leaves crash-*/leak-*/timeout-* files in build/fuzz/artifacts and
# exits nonzero; copy the file into tests/fuzz/regressions/ once fixed (ctest
# 'fuzz_regressions' replays that directory in every build).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

need=()
for p in clang libclang-rt-14-dev ninja-build cmake; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
CC_BIN=$(command -v clang || command -v clang-14)
CXX_BIN=$(command -v clang++ || command -v clang++-14)

B=build/fuzz
cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER="$CC_BIN" -DCMAKE_CXX_COMPILER="$CXX_BIN" \
  -DSPAEDGE_FUZZ=ON -DSPAEDGE_SANITIZE=ON -DSPAEDGE_BUILD_TESTS=OFF -DSPAEDGE_BUILD_PYTHON=OFF >/dev/null
cmake --build "$B" -j2 --target fuzz_bundle

mkdir -p "$B/corpus" "$B/artifacts"
# Committed seeds (made by tests/fuzz/make_seeds.py from the toolchain) and past findings.
cp -n tests/fuzz/seeds/*.safetensors "$B/corpus/" 2>/dev/null || true
extra=()
[ -d tests/fuzz/regressions ] && extra+=(tests/fuzz/regressions)

export SPAEDGE_FUZZ_BASE=tests/fuzz/seeds/base.safetensors
export ASAN_OPTIONS=halt_on_error=1:detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
limit=(-max_total_time="${FUZZ_SECONDS:-60}")
[ -n "${FUZZ_RUNS:-}" ] && limit=(-runs="$FUZZ_RUNS")
"$B/fuzz_bundle" "$B/corpus" "${extra[@]}" "${limit[@]}" \
  -max_len=65536 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
  -dict=tests/fuzz/bundle.dict -artifact_prefix="$B/artifacts/" ${FUZZ_FLAGS:-}
