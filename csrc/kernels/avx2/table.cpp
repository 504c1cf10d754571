// The avx2 table and CPU check (isas.inc). Built with the baseline flags, not
// this folder's -mavx2 -mfma: dispatch calls both before it knows the CPU can
// run AVX2.
#include "kernels/kernels.h"
#include "kernels/x86_cpu.h"

namespace spaedge::kernels::avx2 {

bool supported() {
  unsigned int eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return false;
  const bool fma = ecx & (1u << 12);
  const bool osxsave = ecx & (1u << 27);
  const bool avx = ecx & (1u << 28);
  if (!(fma && osxsave && avx)) return false;
  // The OS must save/restore XMM (bit 1) and YMM (bit 2) state.
  if ((x86::read_xcr0() & 0x6) != 0x6) return false;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
  return ebx & (1u << 5);  // AVX2
}

}  // namespace spaedge::kernels::avx2

#define SPAEDGE_TABLE_ISA avx2
#include "kernels/isa_table.inc"
