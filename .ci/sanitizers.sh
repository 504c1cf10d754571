#!/usr/bin/env bash
# The C++ tests under AddressSanitizer + UndefinedBehaviorSanitizer (and
# LeakSanitizer), in a separate build directory. Exits nonzero on any report.
#
#   bash .ci/sanitizers.sh
#   SANITIZE_PYTHON=1 bash .ci/sanitizers.sh   # also tests/runtime/test_runtime*.py against
#                                              # an ASan build of spaedge._runtime
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

need=()
for p in ninja-build cmake g++; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

B=build/asan
cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DSPAEDGE_SANITIZE=ON -DSPAEDGE_BUILD_PYTHON=OFF >/dev/null
cmake --build "$B" -j2

# LeakSanitizer needs ptrace-like access that some containers forbid; use it
# when a trivial leak is actually detected, otherwise say so and go on without.
leaks=0
probe=$(mktemp -d)
printf '#include <cstdlib>\nint main(){ void* volatile p = std::malloc(7); p = nullptr; return 0; }\n' > "$probe/l.cpp"
if g++ -fsanitize=address -g "$probe/l.cpp" -o "$probe/l" 2>/dev/null; then
  if ! ASAN_OPTIONS=detect_leaks=1 "$probe/l" >/dev/null 2>&1; then leaks=1; fi
fi
rm -rf "$probe"
[ "$leaks" = 1 ] || echo "sanitizers.sh: LeakSanitizer does not work here; running with detect_leaks=0"

export ASAN_OPTIONS="halt_on_error=1:abort_on_error=1:detect_leaks=$leaks:strict_string_checks=1:detect_stack_use_after_return=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
(cd "$B" && ctest --output-on-failure -j1)

if [ "${SANITIZE_PYTHON:-0}" = 1 ]; then
  bash .ci/sanitize_python.sh
fi
