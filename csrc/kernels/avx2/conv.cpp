// AVX2+FMA convolution as a packed GEMM.
//
//   C[M x N] = A[M x K] * B[K x N],  M = out_h*out_w pixels, N = out_c,
//   K = kernel*kernel*in_c in (ky, kx, ci) order (matches OHWI weights).
//
// C is the NHWC output itself (row stride out_c). A is the NHWC input directly
// for 1x1 stride-1 unpadded convs (row stride in_c, no copy) and an im2col
// block in per-thread scratch otherwise. B is packed once at task application
// into panels of 16 output channels: packed[panel][k][16], ragged out_c
// zero-padded. The micro-kernel keeps a 6 x 16 tile of C in 12 ymm
// accumulators; per k it loads one 16-wide B row and broadcasts 6 A values.
//
// Blocking (BLIS order): K in blocks of <= kKcMax (a 16 x kc B micro-panel
// stays in L1 while a block of mc A rows streams from L2), M in blocks of
// <= kMcMax rows, N in groups of panels. Work items are (M block, panel group)
// pairs, split statically over the OpenMP threads.
//
// Epilogue: at the first K block the accumulators start from bias + residual
// (so an output aliasing the residual is read before it is overwritten); later
// K blocks accumulate onto C; ReLU is applied at the last K block.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "kernels/avx2/simd.h"

namespace spaedge::kernels::avx2 {

namespace {

constexpr int kMR = 6;
constexpr int kNR = 16;
#ifndef SPAEDGE_AVX2_KC
#define SPAEDGE_AVX2_KC 320
#endif
#ifndef SPAEDGE_AVX2_MC
#define SPAEDGE_AVX2_MC 120
#endif
#ifndef SPAEDGE_AVX2_NP
#define SPAEDGE_AVX2_NP 8
#endif
constexpr int kKcMax = SPAEDGE_AVX2_KC;
constexpr int kMcMax = SPAEDGE_AVX2_MC;    // multiple of kMR
constexpr int kPanelsMax = SPAEDGE_AVX2_NP;  // 16 * this output channels per work item

inline int ceil_div(int a, int b) { return (a + b - 1) / b; }

struct Plan {
    int M = 0, N = 0, K = 0, panels = 0;
    bool direct = false;  // 1x1, stride 1, pad 0: A is the input itself
    int mc = 0, mb = 0;   // rows per M block, number of M blocks
    int kc = 0;           // K block
    int np = 0, nb = 0;   // panels per group, number of groups
    size_t slot = 0;      // scratch floats per thread
};

Plan make_plan(const ConvGeometry& g, int threads) {
    Plan p;
    threads = std::max(threads, 1);
    p.M = g.out_h() * g.out_w();
    p.N = g.out_c;
    p.K = g.kernel * g.kernel * g.in_c;
    p.panels = ceil_div(p.N, kNR);
    p.direct = g.kernel == 1 && g.stride == 1 && g.pad == 0;

    const int kb = ceil_div(p.K, kKcMax);
    p.kc = ceil_div(p.K, kb);

    // Work items are (M block, panel group) pairs split contiguously over the
    // threads. Pick the split that minimises the busiest thread's work
    // (rows x panels, plus ~1/8 panel per row for the im2col copy), with M
    // blocks no larger than kMcMax; ties go to fewer, larger items.
    const int mb0 = ceil_div(p.M, kMcMax), nb0 = ceil_div(p.panels, kPanelsMax);
    const int mb_hi = std::min(mb0 * threads, ceil_div(p.M, kMR));
    const int nb_hi = std::min(nb0 * threads, p.panels);
    const double copy_cost = p.direct ? 0.0 : 0.125;
    double best = -1.0;
    for (int mb = mb0; mb <= mb_hi; ++mb) {
        const int mc = ceil_div(ceil_div(p.M, mb), kMR) * kMR;
        const int mbe = ceil_div(p.M, mc);
        for (int nb = nb0; nb <= nb_hi; ++nb) {
            const int np = ceil_div(p.panels, nb);
            const int nbe = ceil_div(p.panels, np);
            const int tasks = mbe * nbe;
            double worst = 0.0;
            for (int t = 0; t < threads; ++t) {
                const int t0 = static_cast<int>(static_cast<long long>(tasks) * t / threads);
                const int t1 = static_cast<int>(static_cast<long long>(tasks) * (t + 1) / threads);
                double load = 0.0;
                for (int task = t0; task < t1; ++task) {
                    const int rows = std::min(mc, p.M - (task / nbe) * mc);
                    const int pans = std::min(np, p.panels - (task % nbe) * np);
                    load += ceil_div(rows, kMR) * kMR * (pans + copy_cost);
                }
                worst = std::max(worst, load);
            }
            if (best < 0.0 || worst < best * 0.999) {
                best = worst;
                p.mc = mc;
                p.mb = mbe;
                p.np = np;
                p.nb = nbe;
            }
        }
    }

    // +16: 64-byte alignment of each thread's block; +8: im2col tail overshoot.
    p.slot = p.direct ? 0 : static_cast<size_t>(p.mc) * p.kc + 24;
    return p;
}

// Short copies dominate im2col for thin inputs (e.g. 7 runs of 21 floats per
// row for a 7x7 RGB stem), so they are inline vector loops, not memcpy calls.
// Both may write up to 7 floats past d + n (the caller leaves that slack and
// later writes overwrite it); the source is never read past s + n.
inline void copy_floats(float* d, const float* s, int n) {
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        _mm256_storeu_ps(d + i, _mm256_loadu_ps(s + i));
        _mm256_storeu_ps(d + i + 8, _mm256_loadu_ps(s + i + 8));
    }
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(d + i, _mm256_loadu_ps(s + i));
    if (i < n) _mm256_storeu_ps(d + i, _mm256_maskload_ps(s + i, tail_mask(n - i)));
}

inline void zero_floats(float* d, int n) {
    const __m256 z = _mm256_setzero_ps();
    for (int i = 0; i < n; i += 8) _mm256_storeu_ps(d + i, z);
}

// Copies rows [m0, m0+rows) x columns [p0, p0+cols) of the virtual im2col
// matrix into dst (row stride cols). Out-of-image taps are zeros. For one
// output pixel and one kernel row ky, the k*in_c columns (kx, ci) are a single
// contiguous run of the NHWC input (minus the part outside the image), so a
// row costs at most `kernel` copies.
void im2col_block(const ConvGeometry& g, const float* in, int m0, int rows, int p0, int cols,
                  float* dst) {
    const int ow = g.out_w(), ic = g.in_c, k = g.kernel;
    const int span = k * ic;  // columns per kernel row
    const int end = p0 + cols;
    const int ky0 = p0 / span, ky1 = (end - 1) / span;
    for (int r = 0; r < rows; ++r) {
        const int m = m0 + r, oy = m / ow, ox = m % ow;
        const int ix0 = ox * g.stride - g.pad;
        // In-image kx range [vx0, vx1) as column offsets within a span.
        const int v0 = std::max(0, -ix0) * ic;
        const int v1 = std::max(std::min(k, g.in_w - ix0), 0) * ic;
        float* d = dst + static_cast<size_t>(r) * cols;
        for (int ky = ky0; ky <= ky1; ++ky) {
            const int s0 = std::max(p0, ky * span) - ky * span;
            const int s1 = std::min(end, (ky + 1) * span) - ky * span;
            const int iy = oy * g.stride - g.pad + ky;
            if (iy < 0 || iy >= g.in_h || v1 <= v0) {
                zero_floats(d, s1 - s0);
                d += s1 - s0;
                continue;
            }
            const float* src = in + (static_cast<ptrdiff_t>(iy) * g.in_w + ix0) * ic;
            const int c0 = std::min(std::max(s0, v0), s1);  // [s0, c0) zeros
            const int c1 = std::max(std::min(s1, v1), c0);  // [c0, c1) copy, [c1, s1) zeros
            zero_floats(d, c0 - s0);
            d += c0 - s0;
            copy_floats(d, src + c0, c1 - c0);
            d += c1 - c0;
            zero_floats(d, s1 - c1);
            d += s1 - c1;
        }
    }
}

struct TileArgs {
    const float* a;  // first A row of the tile, at the K block start
    size_t lda;
    const float* b;  // B micro-panel, kc x 16, at the K block start
    const float* pf; // kc x 16 floats to prefetch into L1 while computing (may be b)
    float* c;        // first C element of the tile
    size_t ldc;
    int kc;
    int nr;               // valid columns (1..16)
    bool accumulate;      // start from C (later K blocks)
    const float* bias;    // first K block: + bias (or null)
    const float* res;     // first K block: + residual (or null), row stride ldc
    bool relu;            // last K block
};

// The K loop of the full 6 x 16 tile, in inline assembly so the 12
// accumulators, two B vectors and two broadcasts stay in the 16 ymm registers
// and the six A rows are addressed from two pointers plus a stride (GCC's own
// allocation spills here). acc[2r + h] holds row r, columns 8h..8h+7; it is
// loaded before and stored after the loop. Four k steps per iteration.
void kloop_6x16(int kc, const float* a, size_t lda, const float* b, const float* pf, __m256* acc) {
    const float* a0 = a;
    const float* a3 = a + 3 * lda;
    const size_t ldab = lda * sizeof(float);
    size_t n4 = static_cast<size_t>(kc) / 4;
    size_t n1 = static_cast<size_t>(kc) % 4;
#define SPAEDGE_STEP(boff, aoff)                                  \
    "prefetcht0 " #boff "(%[pf])\n\t"                              \
    "vmovups " #boff "(%[b]), %%ymm12\n\t"                         \
    "vmovups " #boff "+32(%[b]), %%ymm13\n\t"                      \
    "vbroadcastss " #aoff "(%[a0]), %%ymm14\n\t"                   \
    "vbroadcastss " #aoff "(%[a0],%[lda]), %%ymm15\n\t"            \
    "vfmadd231ps %%ymm12, %%ymm14, %%ymm0\n\t"                     \
    "vfmadd231ps %%ymm13, %%ymm14, %%ymm1\n\t"                     \
    "vbroadcastss " #aoff "(%[a0],%[lda],2), %%ymm14\n\t"          \
    "vfmadd231ps %%ymm12, %%ymm15, %%ymm2\n\t"                     \
    "vfmadd231ps %%ymm13, %%ymm15, %%ymm3\n\t"                     \
    "vbroadcastss " #aoff "(%[a3]), %%ymm15\n\t"                   \
    "vfmadd231ps %%ymm12, %%ymm14, %%ymm4\n\t"                     \
    "vfmadd231ps %%ymm13, %%ymm14, %%ymm5\n\t"                     \
    "vbroadcastss " #aoff "(%[a3],%[lda]), %%ymm14\n\t"            \
    "vfmadd231ps %%ymm12, %%ymm15, %%ymm6\n\t"                     \
    "vfmadd231ps %%ymm13, %%ymm15, %%ymm7\n\t"                     \
    "vbroadcastss " #aoff "(%[a3],%[lda],2), %%ymm15\n\t"          \
    "vfmadd231ps %%ymm12, %%ymm14, %%ymm8\n\t"                     \
    "vfmadd231ps %%ymm13, %%ymm14, %%ymm9\n\t"                     \
    "vfmadd231ps %%ymm12, %%ymm15, %%ymm10\n\t"                    \
    "vfmadd231ps %%ymm13, %%ymm15, %%ymm11\n\t"
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
        "vmovups 352(%[acc]), %%ymm11\n\t"
        "test %[n4], %[n4]\n\t"
        "jz 2f\n\t"
        ".p2align 5\n\t"
        "1:\n\t"
        SPAEDGE_STEP(0, 0)
        SPAEDGE_STEP(64, 4)
        SPAEDGE_STEP(128, 8)
        SPAEDGE_STEP(192, 12)
        "add $256, %[b]\n\t"
        "add $256, %[pf]\n\t"
        "add $16, %[a0]\n\t"
        "add $16, %[a3]\n\t"
        "dec %[n4]\n\t"
        "jnz 1b\n\t"
        "2:\n\t"
        "test %[n1], %[n1]\n\t"
        "jz 4f\n\t"
        "3:\n\t"
        SPAEDGE_STEP(0, 0)
        "add $64, %[b]\n\t"
        "add $64, %[pf]\n\t"
        "add $4, %[a0]\n\t"
        "add $4, %[a3]\n\t"
        "dec %[n1]\n\t"
        "jnz 3b\n\t"
        "4:\n\t"
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
        : [a0] "+r"(a0), [a3] "+r"(a3), [b] "+r"(b), [pf] "+r"(pf), [n4] "+r"(n4), [n1] "+r"(n1)
        : [lda] "r"(ldab), [acc] "r"(acc)
        : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
          "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "memory", "cc");
#undef SPAEDGE_STEP
}

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
                c1[r] = _mm256_add_ps(c1[r],
                                      full ? _mm256_loadu_ps(rr + 8) : _mm256_maskload_ps(rr + 8, m1));
            }
        }
    }

    if constexpr (MR == 6) {
        alignas(32) __m256 acc[12];
        for (int r = 0; r < 6; ++r) {
            acc[2 * r] = c0[r];
            acc[2 * r + 1] = c1[r];
        }
        kloop_6x16(t.kc, t.a, t.lda, t.b, t.pf, acc);
        for (int r = 0; r < 6; ++r) {
            c0[r] = acc[2 * r];
            c1[r] = acc[2 * r + 1];
        }
    } else {
        const float* a[MR];
        for (int r = 0; r < MR; ++r) a[r] = t.a + r * t.lda;
        const float* b = t.b;
        for (int k = 0; k < t.kc; ++k, b += kNR) {
            const __m256 b0 = _mm256_loadu_ps(b);
            const __m256 b1 = _mm256_loadu_ps(b + 8);
#pragma GCC unroll 8
            for (int r = 0; r < MR; ++r) {
                const __m256 av = _mm256_broadcast_ss(a[r] + k);
                c0[r] = _mm256_fmadd_ps(av, b0, c0[r]);
                c1[r] = _mm256_fmadd_ps(av, b1, c1[r]);
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

void micro_rows(int rows, const TileArgs& t) {
    switch (rows) {
        case 6: micro<6>(t); break;
        case 5: micro<5>(t); break;
        case 4: micro<4>(t); break;
        case 3: micro<3>(t); break;
        case 2: micro<2>(t); break;
        default: micro<1>(t); break;
    }
}

}  // namespace

size_t conv_packed_floats(const ConvGeometry& g) {
    const size_t K = static_cast<size_t>(g.kernel) * g.kernel * g.in_c;
    return static_cast<size_t>(ceil_div(g.out_c, kNR)) * K * kNR;
}

void conv_pack(const ConvGeometry& g, const float* w_ohwi, float* packed) {
    const size_t K = static_cast<size_t>(g.kernel) * g.kernel * g.in_c;
    const int panels = ceil_div(g.out_c, kNR);
    for (int p = 0; p < panels; ++p) {
        float* dst = packed + static_cast<size_t>(p) * K * kNR;
        for (size_t k = 0; k < K; ++k) {
            for (int j = 0; j < kNR; ++j) {
                const int o = p * kNR + j;
                dst[k * kNR + j] = o < g.out_c ? w_ohwi[static_cast<size_t>(o) * K + k] : 0.0f;
            }
        }
    }
}

size_t conv_scratch_floats(const ConvGeometry& g, int threads) {
    const Plan p = make_plan(g, threads);
    return p.slot * static_cast<size_t>(std::max(threads, 1));
}

void conv(const ConvGeometry& g, const float* packed, const float* in, float* out,
          const Epilogue& ep, float* scratch, int threads) {
    threads = std::max(threads, 1);
    const Plan p = make_plan(g, threads);
    if (p.M <= 0 || p.N <= 0) return;
    const int tasks = p.mb * p.nb;
    const size_t ldc = static_cast<size_t>(p.N);

#pragma omp parallel num_threads(threads) if (threads > 1 && tasks > 1)
    {
        int tid = 0, nthr = 1;
#ifdef _OPENMP
        tid = omp_get_thread_num();
        nthr = omp_get_num_threads();
#endif
        float* abuf = nullptr;
        if (!p.direct) {
            float* slot = scratch + p.slot * tid;
            abuf = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(slot) + 63) & ~uintptr_t(63));
        }
        // Static contiguous split: consecutive tasks share an M block.
        const int t0 = static_cast<int>(static_cast<long long>(tasks) * tid / nthr);
        const int t1 = static_cast<int>(static_cast<long long>(tasks) * (tid + 1) / nthr);
        for (int task = t0; task < t1; ++task) {
            const int mblk = task / p.nb, nblk = task % p.nb;
            const int m0 = mblk * p.mc, rows = std::min(p.mc, p.M - m0);
            const int pan0 = nblk * p.np, pan1 = std::min(p.panels, pan0 + p.np);
            for (int k0 = 0; k0 < p.K; k0 += p.kc) {
                const int kc = std::min(p.kc, p.K - k0);
                const float* a;
                size_t lda;
                if (p.direct) {
                    a = in + static_cast<size_t>(m0) * g.in_c + k0;
                    lda = static_cast<size_t>(g.in_c);
                } else {
                    im2col_block(g, in, m0, rows, k0, kc, abuf);
                    a = abuf;
                    lda = static_cast<size_t>(kc);
                }
                TileArgs t;
                t.lda = lda;
                t.ldc = ldc;
                t.kc = kc;
                t.accumulate = k0 > 0;
                t.relu = ep.relu && k0 + kc == p.K;
                for (int pan = pan0; pan < pan1; ++pan) {
                    const int n0 = pan * kNR;
                    t.b = packed + (static_cast<size_t>(pan) * p.K + k0) * kNR;
                    t.nr = std::min(kNR, p.N - n0);
                    // Next B micro-panel this task will use: the next panel in
                    // this K block, else the group's first panel in the next one.
                    const float* next_b =
                        pan + 1 < pan1 ? t.b + static_cast<size_t>(p.K) * kNR
                        : k0 + kc < p.K
                            ? packed + (static_cast<size_t>(pan0) * p.K + k0 + kc) * kNR
                            : t.b;
                    t.bias = (k0 == 0 && ep.bias) ? ep.bias + n0 : nullptr;
                    for (int r0 = 0; r0 < rows; r0 += kMR) {
                        const int mr = std::min(kMR, rows - r0);
                        const size_t crow = static_cast<size_t>(m0 + r0);
                        t.a = a + r0 * lda;
                        // The first tile of a panel pulls the next panel's B
                        // micro-panel towards L1; the other tiles touch their own.
                        t.pf = r0 == 0 ? next_b : t.b;
                        t.c = out + crow * ldc + n0;
                        t.res = (k0 == 0 && ep.residual) ? ep.residual + crow * ldc + n0 : nullptr;
                        micro_rows(mr, t);
                    }
                }
            }
        }
    }
}

}  // namespace spaedge::kernels::avx2
