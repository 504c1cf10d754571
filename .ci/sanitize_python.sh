#!/usr/bin/env bash
# The Python tests that drive the extension (tests/runtime/test_runtime.py,
# test_runtime_inputs.py, test_corruption.py and test_format.py: numpy +
# safetensors, no torch) against an ASan+UBSan build of spaedge._runtime. CPython itself is not instrumented,
# so libasan is preloaded and leak checking is off (the interpreter's own
# allocations at exit would drown real reports).
set -euo pipefail
cd "$(dirname "$0")/.."
B=build/asan-python
PYBIND11_DIR=$(python3 -m pybind11 --cmakedir)
cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSPAEDGE_SANITIZE=ON \
  -DSPAEDGE_BUILD_PYTHON=ON -DSPAEDGE_BUILD_TESTS=OFF -Dpybind11_DIR="$PYBIND11_DIR" \
  -DPython_EXECUTABLE="$(command -v python3)" >/dev/null
cmake --build "$B" -j2 --target _runtime spaedge-run

# A throwaway copy of the package with the instrumented extension inside.
PKG=$(mktemp -d)
trap 'rm -rf "$PKG"' EXIT
cp -r src/spaedge "$PKG/spaedge"
rm -f "$PKG"/spaedge/_runtime*.so
cp "$B"/_runtime*.so "$PKG/spaedge/"
mkdir -p "$PKG/bin" && cp "$B/spaedge-run" "$PKG/bin/"

LIBASAN=$(g++ -print-file-name=libasan.so)
LIBUBSAN=$(g++ -print-file-name=libubsan.so)
# The import must pick the instrumented module, not an installed spaedge.
PYTHONPATH="$PKG" LD_PRELOAD="$LIBASAN $LIBUBSAN" ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1 \
  python3 -P -c "import spaedge._runtime as m, sys; assert m.__file__.startswith('$PKG'), m.__file__; print('instrumented', m.__file__)"
cd "$PKG"
PATH="$PKG/bin:$PATH" PYTHONPATH="$PKG" LD_PRELOAD="$LIBASAN $LIBUBSAN" \
  ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  python3 -m pytest -q -p no:cacheprovider "$OLDPWD/tests/runtime/test_runtime.py" "$OLDPWD/tests/runtime/test_runtime_inputs.py" \
  "$OLDPWD/tests/runtime/test_corruption.py" "$OLDPWD/tests/runtime/test_format.py" -k "not torch"
