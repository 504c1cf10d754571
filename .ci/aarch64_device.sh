#!/usr/bin/env bash
# spaedge's device side on aarch64, without a board: the aarch64 wheel
# (.ci/build_aarch64_wheel.sh) installed in a fresh venv of Debian's arm64
# CPython 3.11 (.ci/aarch64_sysroot.sh), all run under qemu-aarch64-static:
#
#   1. tests/device (the runtime and `spaedge run`/`info`/`bench` against
#      PyTorch's logits, the NEON kernels in use) and the runtime's numpy-
#      reference tests, on fixtures made here on x86 (tests/device/make_fixtures.py);
#   2. the README's Raspberry Pi commands, as written, from that fresh venv.
#
#   bash .ci/aarch64_device.sh WHEEL
#
# binfmt_misc is not needed (nor available here): the emulated Python cannot
# start processes, so entry points run as `python -m spaedge.cli ...`, the
# venv is made --without-pip and pip runs from its wheel, and the few tests
# that start a subprocess are left to the x86 run (named below).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEEL=$(realpath "${1:?usage: .ci/aarch64_device.sh WHEEL}")
SYSROOT=${SPAEDGE_AARCH64_SYSROOT:-/var/cache/spaedge/aarch64-sysroot}
WORK=$PWD/build/aarch64-device
WHEELS=$PWD/build/aarch64-wheels
QEMU=(qemu-aarch64-static -L "$SYSROOT")

bash .ci/aarch64_sysroot.sh "$SYSROOT"
# The device's dependencies as aarch64 wheels (pip keeps them in its cache), and
# pip itself to run from its wheel.
mkdir -p "$WHEELS"
python3 -m pip download -q -d "$WHEELS" --platform manylinux2014_aarch64 --only-binary=:all: \
  --python-version 3.11 numpy safetensors pillow pytest pip 2>&1 | grep -v "^WARNING: Location" || true
PIP_WHEEL=$(ls "$WHEELS"/pip-*.whl | head -1)

rm -rf "$WORK"
mkdir -p "$WORK"
python3 tests/device/make_fixtures.py "$WORK/fixtures" >/dev/null

# A fresh venv with the wheel; offline (--no-index): the wheels fetched above.
venv() { # venv DIR: an arm64 venv with the wheel, numpy, safetensors, Pillow (+ EXTRA)
  "${QEMU[@]}" "$SYSROOT/usr/bin/python3.11" -m venv --without-pip "$1"
  "${QEMU[@]}" "$1/bin/python" "$PIP_WHEEL/pip" install -q --no-index --find-links "$WHEELS" \
    --no-compile "$WHEEL" pillow "${@:2}"
}

echo "--- pytest under qemu-aarch64 (device tests, runtime against the numpy reference)"
venv "$WORK/test-env" pytest
"${QEMU[@]}" "$WORK/test-env/bin/python" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is not None)'
# Not here: tests that start a process (forced ISAs, the spaedge-run binary's own
# tests): the emulated Python cannot; the README commands below run spaedge-run.
SPAEDGE_DEVICE_FIXTURES=$WORK/fixtures "${QEMU[@]}" "$WORK/test-env/bin/python" -m pytest -q \
  -p no:cacheprovider tests/device tests/runtime/test_runtime.py tests/runtime/test_runtime_inputs.py \
  -k "not every_forced_isa and not spaedge_run"

echo "--- the README's Raspberry Pi commands under qemu-aarch64"
# The fenced block after the marker in README.md, one command a line, run in a
# home with the fixtures where the README says the user has them. Translated
# only where emulation needs it: `python3`/`spaedge` through the emulated
# interpreter, `spaedge-run` through qemu, `pip` from its wheel and offline.
home=$WORK/home
mkdir -p "$home"
cp -r "$WORK/fixtures/bundles" "$home/bundles"
cp "$WORK/fixtures/test.npz" "$home/digits-test.npz"
cp "$WORK/fixtures/digit.png" "$WORK/fixtures/digit.pgm" "$WHEEL" "$home/"
commands=$(awk '/<!-- pi-commands: run under qemu by .ci\/aarch64_device.sh -->/ {f=1; next}
                f && /^```bash/ {inblock=1; next} inblock && /^```/ {exit} inblock {print}' README.md)
[ -n "$commands" ] || { echo "README.md: no Raspberry Pi command block after the pi-commands marker" >&2; exit 1; }
env_dir=""
export HOME=$home # the README's ~
while IFS= read -r line; do
  cmd=${line%%#*}                          # comments off
  cmd=$(echo "$cmd" | sed 's/[[:space:]]*$//')
  [ -n "$cmd" ] || continue
  echo "\$ $cmd"
  eval "words=($cmd)" # the shell's own quoting and ~
  case "${words[0]}" in
    python3)
      if [ "${words[1]}" = "-m" ] && [ "${words[2]}" = "venv" ]; then
        env_dir=${words[3]}
        "${QEMU[@]}" "$SYSROOT/usr/bin/python3.11" -m venv --without-pip "$env_dir"
      else
        (cd "$home" && "${QEMU[@]}" "$env_dir/bin/python" "${words[@]:1}")
      fi ;;
    .) [ "${words[1]}" = "$env_dir/bin/activate" ] || { echo "activates another venv" >&2; exit 1; } ;;
    pip)
      [ "${words[1]}" = install ] || { echo "only pip install is run here" >&2; exit 1; }
      (cd "$home" && "${QEMU[@]}" "$env_dir/bin/python" "$PIP_WHEEL/pip" install -q --no-index \
        --find-links "$WHEELS" --no-compile "${words[@]:2}") ;;
    spaedge) (cd "$home" && "${QEMU[@]}" "$env_dir/bin/python" -m spaedge.cli "${words[@]:1}") ;;
    spaedge-run) (cd "$home" && "${QEMU[@]}" "$env_dir/bin/spaedge-run" "${words[@]:1}") ;;
    *) echo "README.md: the Pi block runs only python3, pip, spaedge, spaedge-run here: $cmd" >&2; exit 1 ;;
  esac
done <<<"$commands"
[ -n "$env_dir" ] || { echo "README.md: the Pi block makes no venv" >&2; exit 1; }
