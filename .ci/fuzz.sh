#!/usr/bin/env bash
# Coverage-guided fuzzing of the bundle reader and task application
# (tests/fuzz/fuzz_bundle.cpp) with libFuzzer + ASan + UBSan, for a bounded time.
#
#   bash .ci/fuzz.sh                      # CI: 60 s
#   FUZZ_SECONDS=3600 bash .ci/fuzz.sh    # longer; the corpus grows in build/fuzz/corpus
#   FUZZ_RUNS=1000000 bash .ci/fuzz.sh    # a fixed number of executions instead
#
# A crash leaves crash-*/leak-*/timeout-* files in build/fuzz/artifacts and
# exits nonzero; copy the file into tests/fuzz/regressions/ once fixed, with a
# line in its README (ctest 'fuzz_regressions' replays that directory in every
# build).
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
cmake --build "$B" -j2 --target fuzz_bundle fuzz_dict

mkdir -p "$B/corpus" "$B/artifacts"
# Committed seeds (made by tests/fuzz/make_seeds.py from the toolchain) and
# past findings, read from a fresh copy on every run so a changed or removed
# seed is never left stale; the fuzzer adds what it finds to $B/corpus only.
# (Runs before this one copied seeds into $B/corpus under their own names.)
rm -f "$B/corpus/"*.safetensors
rm -rf "$B/seeds" && cp -r tests/fuzz/seeds "$B/seeds"
extra=("$B/seeds" tests/fuzz/regressions)
# The dictionary: the format's tokens and the tensor families' (from the runtime's list).
cat tests/fuzz/bundle.dict > "$B/bundle.dict"
"$B/fuzz_dict" >> "$B/bundle.dict"

export SPAEDGE_FUZZ_BASE=tests/fuzz/seeds/base.safetensors
export ASAN_OPTIONS=halt_on_error=1:detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
limit=(-max_total_time="${FUZZ_SECONDS:-60}")
[ -n "${FUZZ_RUNS:-}" ] && limit=(-runs="$FUZZ_RUNS")
"$B/fuzz_bundle" "$B/corpus" "${extra[@]}" "${limit[@]}" \
  -max_len=65536 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
  -dict="$B/bundle.dict" -artifact_prefix="$B/artifacts/" ${FUZZ_FLAGS:-}
