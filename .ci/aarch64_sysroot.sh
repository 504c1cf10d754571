#!/usr/bin/env bash
# An arm64 root with Debian's CPython 3.11 for running spaedge's device side
# under qemu-aarch64-static on x86-64 (no board, no binfmt_misc needed):
#
#   bash .ci/aarch64_sysroot.sh [SYSROOT]   # default $SPAEDGE_AARCH64_SYSROOT or
#                                           # /var/cache/spaedge/aarch64-sysroot
#   qemu-aarch64-static -L SYSROOT SYSROOT/usr/bin/python3.11 -c 'import sys; print(sys.platform)'
#
# Debian's arm64 packages are fetched with apt (`dpkg --add-architecture
# arm64`, `apt-get download`) and unpacked with `dpkg -x`; nothing is
# installed on the host but the arm64 package lists. The root is kept
# between runs (outside the checkout: CI clones afresh each time): a stamp holding this script's hash marks a finished one, so
# a second run on the same machine takes no time. Needs root (apt) on a
# Debian/Ubuntu host.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${1:-${SPAEDGE_AARCH64_SYSROOT:-/var/cache/spaedge/aarch64-sysroot}}
STAMP="$ROOT/.spaedge-sysroot"
want=$(sha256sum "$0" | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  echo "aarch64 sysroot: $ROOT (cached)"
  exit 0
fi

# The interpreter, its standard library and headers (the headers are only for
# building against this root), and the shared libraries they load.
PKGS=(
  python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libpython3.11-dev libpython3.11
  libc6 libgcc-s1 libstdc++6 zlib1g libexpat1 libssl3 libffi8 libbz2-1.0 liblzma5
  libsqlite3-0 libncursesw6 libtinfo6 libreadline8 libuuid1 libdb5.3 libgdbm6
  libcrypt1 libnsl2 libtirpc3 libgssapi-krb5-2 libkrb5-3 libk5crypto3 libcom-err2
  libkrb5support0 libkeyutils1
)

if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  dpkg --add-architecture arm64
fi
# The arm64 lists: updated when missing (one apt-get update, ~10 s).
if ! apt-cache show python3.11-minimal:arm64 >/dev/null 2>&1; then
  apt-get update -qq
fi

debs=$(mktemp -d)  # apt's _apt user must be able to write here
chmod 755 "$debs"
rm -rf "$ROOT"
mkdir -p "$ROOT"
(cd "$debs" && apt-get download -qq -o APT::Sandbox::User=root "${PKGS[@]/%/:arm64}")
for d in "$debs"/*.deb; do dpkg -x "$d" "$ROOT"; done
rm -rf "$debs"

# Multiarch: the loader and libraries live in lib/aarch64-linux-gnu, which
# qemu's -L prefix finds through the root's own /lib symlink on merged-/usr.
[ -e "$ROOT/lib" ] || ln -s usr/lib "$ROOT/lib"
qemu-aarch64-static -L "$ROOT" "$ROOT/usr/bin/python3.11" -c \
  'import ssl, sqlite3, ctypes, zlib, sysconfig; assert sysconfig.get_config_var("SOABI") == "cpython-311-aarch64-linux-gnu"'
echo "$want" > "$STAMP"
echo "aarch64 sysroot: $ROOT ($(du -sh "$ROOT" | cut -f1))"
