// The avx512 table and CPU check (isas.inc). Built with the baseline flags,
// not this folder's -mavx512f: dispatch calls both before it knows the CPU
// can run AVX-512.
#include "kernels/kernels.h"
#include "kernels/x86_cpu.h"

namespace spaedge::kernels::avx512 {

// Only the convolutions are avx512's own. They use the avx2 packed layout
// (panels of 16 output channels, one zmm per panel row), so the table takes
// every other kernel, conv_pack and conv_apply included, from avx2.
fn::conv_packed_floats conv_packed_floats;
fn::conv_scratch_floats conv_scratch_floats;
fn::conv conv;
fn::conv_lowrank_packed_floats conv_lowrank_packed_floats;
fn::conv_lowrank_scratch_floats conv_lowrank_scratch_floats;
fn::conv_lowrank conv_lowrank;

bool supported() {
  if (!avx2::supported()) return false;
  unsigned int eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
  if (!(ebx & (1u << 16))) return false;  // AVX512F
  // The OS must also save/restore opmask (bit 5), ZMM0-15 upper halves (6)
  // and ZMM16-31 (7).
  return (x86::read_xcr0() & 0xE6) == 0xE6;
}

}  // namespace spaedge::kernels::avx512

#define SPAEDGE_TABLE_ISA avx512
#define SPAEDGE_TABLE_FROM avx2
#include "kernels/isa_table.inc"
