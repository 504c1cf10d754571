// What the x86-64 ISAs' CPU checks share (avx2/table.cpp, avx512/table.cpp;
// baseline flags only).
#pragma once

#include <cpuid.h>

namespace spaedge::kernels::x86 {

// XCR0: the register state the OS saves and restores (XGETBV; valid once
// CPUID.1:ECX.OSXSAVE is set).
inline unsigned long long read_xcr0() {
  unsigned int eax = 0, edx = 0;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<unsigned long long>(edx) << 32) | eax;
}

}  // namespace spaedge::kernels::x86
