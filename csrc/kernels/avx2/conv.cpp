// AVX2+FMA convolution: the shared blocked GEMM (kernels/gemm_conv.h) with a
// 6 x 16 micro-kernel. The C tile lives in 12 ymm accumulators; per k the
// kernel loads one 16-wide row of the packed weights and broadcasts 6 A values.
// Weights are packed in panels of 16 output channels.
#include <algorithm>
#include <cstddef>

#include "kernels/avx2/simd.h"
#include "kernels/gemm_conv.h"

namespace spaedge::kernels::avx2 {

using gemm::TileArgs;

namespace {

constexpr int kNR = 16;

// Copies for the zero-bordered input copy (whole input rows).
inline void copy_floats(float* d, const float* s, int n) {
  int i = 0;
  for (; i + 32 <= n; i += 32) {
    _mm256_storeu_ps(d + i, _mm256_loadu_ps(s + i));
    _mm256_storeu_ps(d + i + 8, _mm256_loadu_ps(s + i + 8));
    _mm256_storeu_ps(d + i + 16, _mm256_loadu_ps(s + i + 16));
    _mm256_storeu_ps(d + i + 24, _mm256_loadu_ps(s + i + 24));
  }
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(d + i, _mm256_loadu_ps(s + i));
  for (; i < n; ++i) d[i] = s[i];
}

inline void zero_floats(float* d, int n) {
  const __m256 z = _mm256_setzero_ps();
  int i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(d + i, z);
  for (; i < n; ++i) d[i] = 0.0f;
}

// The K loop of the full 6 x 16 tile, in inline assembly so the 12
// accumulators, two B vectors and two broadcasts stay in the 16 ymm registers
// (GCC's own allocation spills here). Six independent A row pointers; each
// segment runs seg k steps (four per iteration, then single steps), then all
// row pointers jump to the next span. Accumulator j (0..11) is ymm<j>: row
// j / 2, columns 8 (j % 2) .. 8 (j % 2) + 7. The asm text, its operands and
// its clobbers are defined once here for the two asm blocks below; the
// operands are the locals SPAEDGE_KLOOP_LOCALS declares from the tile's
// arguments.
#define SPAEDGE_KLOOP_LOCALS(t)                     \
  const float* a0 = t.a[0];                         \
  const float* a1 = t.a[1];                         \
  const float* a2 = t.a[2];                         \
  const float* a3 = t.a[3];                         \
  const float* a4 = t.a[4];                         \
  const float* a5 = t.a[5];                         \
  const float* b = t.b;                             \
  const float* pf = t.pf;                           \
  size_t nseg = static_cast<size_t>(t.nseg);        \
  const size_t n4 = static_cast<size_t>(t.seg) / 4; \
  const size_t n1 = static_cast<size_t>(t.seg) % 4; \
  const ptrdiff_t jump = t.jump * static_cast<ptrdiff_t>(sizeof(float))

// One k step: B row at boff bytes, A values at aoff bytes of each row pointer.
#define SPAEDGE_STEP(boff, aoff)              \
  "prefetcht0 " #boff                         \
  "(%[pf])\n\t"                               \
  "vmovups " #boff                            \
  "(%[b]), %%ymm12\n\t"                       \
  "vmovups " #boff                            \
  "+32(%[b]), %%ymm13\n\t"                    \
  "vbroadcastss " #aoff                       \
  "(%[a0]), %%ymm14\n\t"                      \
  "vbroadcastss " #aoff                       \
  "(%[a1]), %%ymm15\n\t"                      \
  "vfmadd231ps %%ymm12, %%ymm14, %%ymm0\n\t"  \
  "vfmadd231ps %%ymm13, %%ymm14, %%ymm1\n\t"  \
  "vbroadcastss " #aoff                       \
  "(%[a2]), %%ymm14\n\t"                      \
  "vfmadd231ps %%ymm12, %%ymm15, %%ymm2\n\t"  \
  "vfmadd231ps %%ymm13, %%ymm15, %%ymm3\n\t"  \
  "vbroadcastss " #aoff                       \
  "(%[a3]), %%ymm15\n\t"                      \
  "vfmadd231ps %%ymm12, %%ymm14, %%ymm4\n\t"  \
  "vfmadd231ps %%ymm13, %%ymm14, %%ymm5\n\t"  \
  "vbroadcastss " #aoff                       \
  "(%[a4]), %%ymm14\n\t"                      \
  "vfmadd231ps %%ymm12, %%ymm15, %%ymm6\n\t"  \
  "vfmadd231ps %%ymm13, %%ymm15, %%ymm7\n\t"  \
  "vbroadcastss " #aoff                       \
  "(%[a5]), %%ymm15\n\t"                      \
  "vfmadd231ps %%ymm12, %%ymm14, %%ymm8\n\t"  \
  "vfmadd231ps %%ymm13, %%ymm14, %%ymm9\n\t"  \
  "vfmadd231ps %%ymm12, %%ymm15, %%ymm10\n\t" \
  "vfmadd231ps %%ymm13, %%ymm15, %%ymm11\n\t"
// Every A row pointer `n` bytes on (`n` a literal) or by an operand.
#define SPAEDGE_ADVANCE(n) \
  "add $" #n               \
  ", %[a0]\n\t"            \
  "add $" #n               \
  ", %[a1]\n\t"            \
  "add $" #n               \
  ", %[a2]\n\t"            \
  "add $" #n               \
  ", %[a3]\n\t"            \
  "add $" #n               \
  ", %[a4]\n\t"            \
  "add $" #n ", %[a5]\n\t"
#define SPAEDGE_ADVANCE_BY(op) \
  "add " op                    \
  ", %[a0]\n\t"                \
  "add " op                    \
  ", %[a1]\n\t"                \
  "add " op                    \
  ", %[a2]\n\t"                \
  "add " op                    \
  ", %[a3]\n\t"                \
  "add " op                    \
  ", %[a4]\n\t"                \
  "add " op ", %[a5]\n\t"
// The loop over segments (labels 1-5), accumulating into ymm0-11.
#define SPAEDGE_KLOOP \
  "5:\n\t"                       /* segment loop */              \
    "mov %[n4], %[cnt]\n\t"                                        \
    "test %[cnt], %[cnt]\n\t"                                      \
    "jz 2f\n\t"                                                    \
    ".p2align 5\n\t"                                               \
    "1:\n\t"                       /* four k steps */              \
    SPAEDGE_STEP(0, 0)                                             \
    SPAEDGE_STEP(64, 4)                                            \
    SPAEDGE_STEP(128, 8)                                           \
    SPAEDGE_STEP(192, 12)                                          \
    "add $256, %[b]\n\t"                                           \
    "add $256, %[pf]\n\t"                                          \
    SPAEDGE_ADVANCE(16)                                            \
    "dec %[cnt]\n\t"                                               \
    "jnz 1b\n\t"                                                   \
    "2:\n\t"                                                       \
    "mov %[n1], %[cnt]\n\t"                                        \
    "test %[cnt], %[cnt]\n\t"                                      \
    "jz 4f\n\t"                                                    \
    "3:\n\t"                       /* single k steps */            \
    SPAEDGE_STEP(0, 0)                                             \
    "add $64, %[b]\n\t"                                            \
    "add $64, %[pf]\n\t"                                           \
    SPAEDGE_ADVANCE(4)                                             \
    "dec %[cnt]\n\t"                                               \
    "jnz 3b\n\t"                                                   \
    "4:\n\t"                       /* next span */                 \
    SPAEDGE_ADVANCE_BY("%[jump]")                                  \
    "decq %[nseg]\n\t"                                             \
    "jnz 5b\n\t"
#define SPAEDGE_KLOOP_OUTPUTS                                                               \
  [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3), [a4] "+r"(a4), [a5] "+r"(a5), \
      [b] "+r"(b), [pf] "+r"(pf), [cnt] "=&r"(cnt), [nseg] "+m"(nseg)
#define SPAEDGE_KLOOP_INPUTS [n4] "m"(n4), [n1] "m"(n1), [jump] "m"(jump)
#define SPAEDGE_KLOOP_CLOBBERS                                                             \
  "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", \
      "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "memory", "cc"

// The K loop alone; acc[j] is loaded before and stored after it.
void kloop_6x16(const TileArgs& t, __m256* acc) {
  SPAEDGE_KLOOP_LOCALS(t);
  size_t cnt;
  __asm__ volatile(
      "vmovups 0(%[acc]), %%ymm0\n\t"
      "vmovups 32(%[acc]), %%ymm1\n\t"
      "vmovups 64(%[acc]), %%ymm2\n\t"
      "vmovups 96(%[acc]), %%ymm3\n\t"
      "vmovups 128(%[acc]), %%ymm4\n\t"
      "vmovups 160(%[acc]), %%ymm5\n\t"
      "vmovups 192(%[acc]), %%ymm6\n\t"
      "vmovups 224(%[acc]), %%ymm7\n\t"
      "vmovups 256(%[acc]), %%ymm8\n\t"
      "vmovups 288(%[acc]), %%ymm9\n\t"
      "vmovups 320(%[acc]), %%ymm10\n\t"
      "vmovups 352(%[acc]), %%ymm11\n\t" SPAEDGE_KLOOP
      "vmovups %%ymm0, 0(%[acc])\n\t"
      "vmovups %%ymm1, 32(%[acc])\n\t"
      "vmovups %%ymm2, 64(%[acc])\n\t"
      "vmovups %%ymm3, 96(%[acc])\n\t"
      "vmovups %%ymm4, 128(%[acc])\n\t"
      "vmovups %%ymm5, 160(%[acc])\n\t"
      "vmovups %%ymm6, 192(%[acc])\n\t"
      "vmovups %%ymm7, 224(%[acc])\n\t"
      "vmovups %%ymm8, 256(%[acc])\n\t"
      "vmovups %%ymm9, 288(%[acc])\n\t"
      "vmovups %%ymm10, 320(%[acc])\n\t"
      "vmovups %%ymm11, 352(%[acc])\n\t"
      : SPAEDGE_KLOOP_OUTPUTS
      : SPAEDGE_KLOOP_INPUTS, [acc] "r"(acc)
      : SPAEDGE_KLOOP_CLOBBERS);
}

// The whole full 6 x 16 tile in one asm block: start (C, or bias + residual),
// the K loop of kloop_6x16, ReLU, store. Short-K convs (1x1 over 64 channels:
// 64 k steps per tile) lose noticeably to the C++ start/finish of micro<6>,
// which has to pass the accumulators through memory around the asm K loop
// (docs/benchmarks.md, "Measurements behind the kernel and runtime design").
void tile_6x16_full(const TileArgs& t) {
  SPAEDGE_KLOOP_LOCALS(t);
  float* const c = t.c;
  const size_t ldc = t.ldc * sizeof(float);
  const float* const bias = t.bias;
  const float* const res = t.res;
  const size_t accumulate = t.accumulate ? 1 : 0;
  const size_t relu = t.relu ? 1 : 0;
  size_t cnt, p1, p2;
// OP each of the six 16-float rows at p1 (row stride p2) with ymm(2r), ymm(2r+1).
#define SPAEDGE_ROWS(OP)                                  \
  OP("(%[p1])", "32(%[p1])", 0, 1)                        \
  OP("(%[p1],%[p2])", "32(%[p1],%[p2])", 2, 3)            \
  OP("(%[p1],%[p2],2)", "32(%[p1],%[p2],2)", 4, 5)        \
  "lea (%[p1],%[p2],2), %[p1]\n\t"                        \
  "add %[p2], %[p1]\n\t" OP("(%[p1])", "32(%[p1])", 6, 7) \
      OP("(%[p1],%[p2])", "32(%[p1],%[p2])", 8, 9)        \
          OP("(%[p1],%[p2],2)", "32(%[p1],%[p2],2)", 10, 11)
#define SPAEDGE_LOAD(m0, m1, r0, r1) \
  "vmovups " m0 ", %%ymm" #r0        \
  "\n\t"                             \
  "vmovups " m1 ", %%ymm" #r1 "\n\t"
#define SPAEDGE_ADDM(m0, m1, r0, r1)       \
  "vaddps " m0 ", %%ymm" #r0 ", %%ymm" #r0 \
  "\n\t"                                   \
  "vaddps " m1 ", %%ymm" #r1 ", %%ymm" #r1 "\n\t"
#define SPAEDGE_STORE(m0, m1, r0, r1) \
  "vmovups %%ymm" #r0 ", " m0         \
  "\n\t"                              \
  "vmovups %%ymm" #r1 ", " m1 "\n\t"
  __asm__ volatile(
        // ---- start: C (later K blocks) or bias + residual (first block)
        "mov %[ldc], %[p2]\n\t"
        "cmpq $0, %[accumulate]\n\t"
        "je 10f\n\t"
        "mov %[c], %[p1]\n\t"
        SPAEDGE_ROWS(SPAEDGE_LOAD)
        "jmp 5f\n\t"
        "10:\n\t"
        "mov %[bias], %[p1]\n\t"
        "test %[p1], %[p1]\n\t"
        "jz 11f\n\t"
        "vmovups (%[p1]), %%ymm0\n\t"
        "vmovups 32(%[p1]), %%ymm1\n\t"
        "jmp 12f\n\t"
        "11:\n\t"
        "vxorps %%ymm0, %%ymm0, %%ymm0\n\t"
        "vxorps %%ymm1, %%ymm1, %%ymm1\n\t"
        "12:\n\t"
        "vmovaps %%ymm0, %%ymm2\n\t"
        "vmovaps %%ymm1, %%ymm3\n\t"
        "vmovaps %%ymm0, %%ymm4\n\t"
        "vmovaps %%ymm1, %%ymm5\n\t"
        "vmovaps %%ymm0, %%ymm6\n\t"
        "vmovaps %%ymm1, %%ymm7\n\t"
        "vmovaps %%ymm0, %%ymm8\n\t"
        "vmovaps %%ymm1, %%ymm9\n\t"
        "vmovaps %%ymm0, %%ymm10\n\t"
        "vmovaps %%ymm1, %%ymm11\n\t"
        "mov %[res], %[p1]\n\t"
        "test %[p1], %[p1]\n\t"
        "jz 5f\n\t"
        SPAEDGE_ROWS(SPAEDGE_ADDM)
        // ---- K loop over segments
        SPAEDGE_KLOOP
        // ---- finish: ReLU (last block), store
        "cmpq $0, %[relu]\n\t"
        "je 20f\n\t"
        "vxorps %%ymm12, %%ymm12, %%ymm12\n\t"
        "vmaxps %%ymm12, %%ymm0, %%ymm0\n\t"
        "vmaxps %%ymm12, %%ymm1, %%ymm1\n\t"
        "vmaxps %%ymm12, %%ymm2, %%ymm2\n\t"
        "vmaxps %%ymm12, %%ymm3, %%ymm3\n\t"
        "vmaxps %%ymm12, %%ymm4, %%ymm4\n\t"
        "vmaxps %%ymm12, %%ymm5, %%ymm5\n\t"
        "vmaxps %%ymm12, %%ymm6, %%ymm6\n\t"
        "vmaxps %%ymm12, %%ymm7, %%ymm7\n\t"
        "vmaxps %%ymm12, %%ymm8, %%ymm8\n\t"
        "vmaxps %%ymm12, %%ymm9, %%ymm9\n\t"
        "vmaxps %%ymm12, %%ymm10, %%ymm10\n\t"
        "vmaxps %%ymm12, %%ymm11, %%ymm11\n\t"
        "20:\n\t"
        "mov %[c], %[p1]\n\t"
        "mov %[ldc], %[p2]\n\t"
        SPAEDGE_ROWS(SPAEDGE_STORE)
        : SPAEDGE_KLOOP_OUTPUTS, [p1] "=&r"(p1), [p2] "=&r"(p2)
        : SPAEDGE_KLOOP_INPUTS, [c] "m"(c), [ldc] "m"(ldc), [bias] "m"(bias), [res] "m"(res),
          [accumulate] "m"(accumulate), [relu] "m"(relu)
        : SPAEDGE_KLOOP_CLOBBERS);
#undef SPAEDGE_ROWS
#undef SPAEDGE_LOAD
#undef SPAEDGE_ADDM
#undef SPAEDGE_STORE
}

#undef SPAEDGE_STEP
#undef SPAEDGE_ADVANCE
#undef SPAEDGE_ADVANCE_BY
#undef SPAEDGE_KLOOP
#undef SPAEDGE_KLOOP_LOCALS
#undef SPAEDGE_KLOOP_OUTPUTS
#undef SPAEDGE_KLOOP_INPUTS
#undef SPAEDGE_KLOOP_CLOBBERS

// MR x 16 micro-kernel.
template <int MR>
void micro(const TileArgs& t) {
  __m256 c0[6], c1[6];
  const bool full = t.nr == kNR;
  const __m256i m0 = tail_mask(std::min(t.nr, 8));
  const __m256i m1 = tail_mask(std::max(t.nr - 8, 0));

  if (t.accumulate) {
    for (int r = 0; r < MR; ++r) {
      const float* cr = t.c + r * t.ldc;
      c0[r] = full ? _mm256_loadu_ps(cr) : _mm256_maskload_ps(cr, m0);
      c1[r] = full ? _mm256_loadu_ps(cr + 8) : _mm256_maskload_ps(cr + 8, m1);
    }
  } else {
    __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps();
    if (t.bias) {
      b0 = full ? _mm256_loadu_ps(t.bias) : _mm256_maskload_ps(t.bias, m0);
      b1 = full ? _mm256_loadu_ps(t.bias + 8) : _mm256_maskload_ps(t.bias + 8, m1);
    }
    for (int r = 0; r < MR; ++r) {
      c0[r] = b0;
      c1[r] = b1;
    }
    if (t.res) {
      for (int r = 0; r < MR; ++r) {
        const float* rr = t.res + r * t.ldc;
        c0[r] = _mm256_add_ps(c0[r], full ? _mm256_loadu_ps(rr) : _mm256_maskload_ps(rr, m0));
        c1[r] =
            _mm256_add_ps(c1[r], full ? _mm256_loadu_ps(rr + 8) : _mm256_maskload_ps(rr + 8, m1));
      }
    }
  }

  if constexpr (MR == 6) {
    alignas(32) __m256 acc[12];
    for (int r = 0; r < 6; ++r) {
      acc[2 * r] = c0[r];
      acc[2 * r + 1] = c1[r];
    }
    kloop_6x16(t, acc);
    for (int r = 0; r < 6; ++r) {
      c0[r] = acc[2 * r];
      c1[r] = acc[2 * r + 1];
    }
  } else {
    // Edge tiles (M remainders). With few rows the FMA chains, not the
    // FMA units, are the limit (4-cycle latency, 2 per cycle: 8 chains
    // needed), so 1-3 row tiles keep U partial sums over interleaved k.
    constexpr int U = MR == 1 ? 4 : MR <= 3 ? 2 : 1;
    __m256 p0[U][MR], p1[U][MR];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      p0[0][r] = c0[r];
      p1[0][r] = c1[r];
#pragma GCC unroll 4
      for (int u = 1; u < U; ++u) p0[u][r] = p1[u][r] = _mm256_setzero_ps();
    }
    const float* a[MR];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) a[r] = t.a[r];
    const float* b = t.b;
    for (int s = 0; s < t.nseg; ++s) {
      int k = 0;
      for (; k + U <= t.seg; k += U) {
#pragma GCC unroll 4
        for (int u = 0; u < U; ++u) {
          const __m256 b0 = _mm256_loadu_ps(b + (k + u) * kNR);
          const __m256 b1 = _mm256_loadu_ps(b + (k + u) * kNR + 8);
#pragma GCC unroll 8
          for (int r = 0; r < MR; ++r) {
            const __m256 av = _mm256_broadcast_ss(a[r] + k + u);
            p0[u][r] = _mm256_fmadd_ps(av, b0, p0[u][r]);
            p1[u][r] = _mm256_fmadd_ps(av, b1, p1[u][r]);
          }
        }
      }
      for (; k < t.seg; ++k) {
        const __m256 b0 = _mm256_loadu_ps(b + k * kNR);
        const __m256 b1 = _mm256_loadu_ps(b + k * kNR + 8);
#pragma GCC unroll 8
        for (int r = 0; r < MR; ++r) {
          const __m256 av = _mm256_broadcast_ss(a[r] + k);
          p0[0][r] = _mm256_fmadd_ps(av, b0, p0[0][r]);
          p1[0][r] = _mm256_fmadd_ps(av, b1, p1[0][r]);
        }
      }
      b += t.seg * kNR;
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) a[r] += t.seg + t.jump;
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      c0[r] = p0[0][r];
      c1[r] = p1[0][r];
#pragma GCC unroll 4
      for (int u = 1; u < U; ++u) {
        c0[r] = _mm256_add_ps(c0[r], p0[u][r]);
        c1[r] = _mm256_add_ps(c1[r], p1[u][r]);
      }
    }
  }

  if (t.relu) {
    const __m256 z = _mm256_setzero_ps();
    for (int r = 0; r < MR; ++r) {
      c0[r] = _mm256_max_ps(c0[r], z);
      c1[r] = _mm256_max_ps(c1[r], z);
    }
  }
  for (int r = 0; r < MR; ++r) {
    float* cr = t.c + r * t.ldc;
    if (full) {
      _mm256_storeu_ps(cr, c0[r]);
      _mm256_storeu_ps(cr + 8, c1[r]);
    } else {
      store_n(cr, c0[r], std::min(t.nr, 8));
      store_n(cr + 8, c1[r], t.nr - 8);
    }
  }
}

struct Avx2 {
  static constexpr int MR = 6;
  static constexpr int NR = kNR;
#ifndef SPAEDGE_AVX2_KC  // tuning hooks for the benchmark; not configuration
#define SPAEDGE_AVX2_KC 1600
#endif
#ifndef SPAEDGE_AVX2_MC
#define SPAEDGE_AVX2_MC 120
#endif
#ifndef SPAEDGE_AVX2_NP
#define SPAEDGE_AVX2_NP 8
#endif
  static constexpr int KC_MAX = SPAEDGE_AVX2_KC;  // B streams from L2; bigger blocks save C passes
  static constexpr int MC_MAX = SPAEDGE_AVX2_MC;
  static constexpr int PANELS_MAX = SPAEDGE_AVX2_NP;
  static void copy(float* d, const float* s, int n) { copy_floats(d, s, n); }
  static void zero(float* d, int n) { zero_floats(d, n); }
  static void tile(int rows, const TileArgs& t) {
    switch (rows) {
      case 6:
        if (t.nr == kNR)
          tile_6x16_full(t);
        else
          micro<6>(t);
        break;
      case 5:
        micro<5>(t);
        break;
      case 4:
        micro<4>(t);
        break;
      case 3:
        micro<3>(t);
        break;
      case 2:
        micro<2>(t);
        break;
      default:
        micro<1>(t);
        break;
    }
  }
};

}  // namespace

SPAEDGE_GEMM_CONV_KERNELS(Avx2)
SPAEDGE_GEMM_PACK_KERNELS(Avx2)

}  // namespace spaedge::kernels::avx2
