// The avx512 table and CPU check (isas.inc). Built with the baseline flags,
// not this folder's -mavx512f: dispatch calls both before it knows the CPU
// can run AVX-512.
#include "kernels/kernels.h"
#include "kernels/x86_cpu.h"

namespace spaedge::kernels {
namespace avx2 {
fn::qconv qconv;
fn::qconv_variant qconv_variant;
}  // namespace avx2

namespace avx512 {

// Only the convolutions are avx512's own. They use the avx2 packed layout
// (panels of 16 output channels, one zmm per panel row), so the table takes
// every other kernel, conv_pack and conv_apply included, from avx2.
fn::conv_packed_floats conv_packed_floats;
fn::conv_scratch_floats conv_scratch_floats;
fn::conv conv;
fn::conv_lowrank_packed_floats conv_lowrank_packed_floats;
fn::conv_lowrank_scratch_floats conv_lowrank_scratch_floats;
fn::conv_lowrank conv_lowrank;

// int8: the packed layout and scratch are avx2's (the same panels for every
// ISA; avx2's int16 scratch is the larger). qconv is VNNI's (qconv.cpp,
// built with -mavx512vnni) when cpuid reports AVX512BW, AVX512VL and
// AVX512_VNNI, else avx2's. Chosen here, in code built with the baseline
// flags, so a CPU without VNNI never runs an instruction it lacks.
fn::qconv qconv_vnni;

bool vnni_supported() {
  static const bool yes = [] {
    unsigned int eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!supported() || !__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
    const bool bw = ebx & (1u << 30), vl = ebx & (1u << 31), vnni = ecx & (1u << 11);
    return bw && vl && vnni;
  }();
  return yes;
}

void qconv(const ConvGeometry& g, const void* packed, const uint8_t* in, uint8_t* out,
           const QEpilogue& ep, void* scratch, const Parallel* par) {
  if (vnni_supported())
    qconv_vnni(g, packed, in, out, ep, scratch, par);
  else
    avx2::qconv(g, packed, in, out, ep, scratch, par);
}

const char* qconv_variant() {
  return vnni_supported() ? "avx512vnni" : avx2::qconv_variant();
}

bool supported() {
  if (!avx2::supported()) return false;
  unsigned int eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
  if (!(ebx & (1u << 16))) return false;  // AVX512F
  // The OS must also save/restore opmask (bit 5), ZMM0-15 upper halves (6)
  // and ZMM16-31 (7).
  return (x86::read_xcr0() & 0xE6) == 0xE6;
}

}  // namespace avx512
}  // namespace spaedge::kernels

#define SPAEDGE_TABLE_ISA avx512
#define SPAEDGE_TABLE_FROM avx2
#include "kernels/isa_table.inc"
