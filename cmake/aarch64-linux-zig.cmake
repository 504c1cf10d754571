# Cross-build for 64-bit ARM Linux with zig's clang against glibc 2.17, so the
# result runs on every aarch64 glibc distribution since 2014 (Raspberry Pi OS
# bullseye has 2.31, bookworm 2.36): the manylinux2014 wheel that
# .ci/build_aarch64_wheel.sh builds. zig comes from PyPI (`pip install ziglang`);
# SPAEDGE_ZIG names its binary. zig links its libc++ statically, so the
# binaries need no libstdc++ on the board.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(CMAKE_CXX_COMPILER ${CMAKE_CURRENT_LIST_DIR}/zig/c++)
set(CMAKE_AR ${CMAKE_CURRENT_LIST_DIR}/zig/ar CACHE FILEPATH "zig ar")
set(CMAKE_RANLIB ${CMAKE_CURRENT_LIST_DIR}/zig/ranlib CACHE FILEPATH "zig ranlib")
# zig rejects -march=armv8.2-a+dotprod; its spelling of the same target.
set(SPAEDGE_DOTPROD_FLAGS "-mcpu=generic+v8_2a+dotprod" CACHE STRING "dot product, zig's flags")

# The binaries run under qemu with nothing but the glibc zig linked against;
# a root with an aarch64 loader (Debian's cross libc or the CI's sysroot) is needed.
if(DEFINED ENV{SPAEDGE_AARCH64_ROOT})
  set(CMAKE_CROSSCOMPILING_EMULATOR "qemu-aarch64-static;-L;$ENV{SPAEDGE_AARCH64_ROOT}")
else()
  set(CMAKE_CROSSCOMPILING_EMULATOR "qemu-aarch64-static;-L;/usr/aarch64-linux-gnu")
endif()
