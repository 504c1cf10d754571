// Convolution as a blocked GEMM, shared by the SIMD paths (internal header:
// include only from <isa>/conv.cpp; everything here has internal linkage so
// each ISA's copy is compiled with that ISA's flags and never mixed up).
//
//   C[M x N] = A[M x K] * B[K x N],  M = out_h*out_w pixels, N = out_c,
//   K = kernel*kernel*in_c in (ky, kx, ci) order (matches OHWI weights).
//
// C is the NHWC output itself (row stride out_c). A is the NHWC input directly
// for 1x1 stride-1 unpadded convs (row stride in_c, no copy) and an im2col
// block in per-thread scratch otherwise. B is packed once at task application
// into panels of NR output channels, packed[panel][k][NR], ragged out_c
// zero-padded. The ISA supplies an MR x NR micro-kernel over row-major A.
//
// Blocking (BLIS order): K in blocks of <= KC_MAX (an NR x kc B micro-panel
// stays in L1 while a block of mc A rows streams from L2), M in blocks of
// <= MC_MAX rows, N in groups of panels. Work items are (M block, panel group)
// pairs, split statically over the OpenMP threads.
//
// Epilogue: at the first K block the accumulators start from bias + residual
// (so an output aliasing the residual is read before it is overwritten); later
// K blocks accumulate onto C; ReLU is applied at the last K block.
//
// The ISA type provides:
//   static constexpr int MR, NR, KC_MAX, MC_MAX, PANELS_MAX;
//   static constexpr int SLACK;   // floats copy/zero may write past d + n
//   static void copy(float* d, const float* s, int n);  // never reads past s + n
//   static void zero(float* d, int n);
//   static void tile(int rows, const TileArgs& t);      // 1 <= rows <= MR
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "kernels/kernels.h"

namespace spaedge::kernels::gemm {
namespace {

inline int ceil_div(int a, int b) { return (a + b - 1) / b; }

struct TileArgs {
    const float* a;     // first A row of the tile, at the K block start
    size_t lda;         // A row stride (floats)
    const float* b;     // B micro-panel, kc x NR, at the K block start
    const float* pf;    // kc x NR floats worth pulling towards L1 meanwhile (may be b)
    float* c;           // first C element of the tile
    size_t ldc;         // C (and residual) row stride
    int kc;             // K steps
    int nr;             // valid columns (1..NR)
    bool accumulate;    // start from C (later K blocks)
    const float* bias;  // first K block: + bias (or null)
    const float* res;   // first K block: + residual (or null)
    bool relu;          // last K block
};

struct Plan {
    int M = 0, N = 0, K = 0, panels = 0;
    bool direct = false;  // 1x1, stride 1, pad 0: A is the input itself
    int mc = 0, mb = 0;   // rows per M block, number of M blocks
    int kc = 0;           // K block
    int np = 0, nb = 0;   // panels per group, number of groups
    size_t slot = 0;      // scratch floats per thread
};

template <class Isa>
Plan make_plan(const ConvGeometry& g, int threads) {
    constexpr int MR = Isa::MR, NR = Isa::NR;
    Plan p;
    threads = std::max(threads, 1);
    p.M = g.out_h() * g.out_w();
    p.N = g.out_c;
    p.K = g.kernel * g.kernel * g.in_c;
    p.panels = ceil_div(p.N, NR);
    p.direct = g.kernel == 1 && g.stride == 1 && g.pad == 0;
    if (p.M <= 0 || p.N <= 0 || p.K <= 0) return p;

    const int kb = ceil_div(p.K, Isa::KC_MAX);
    p.kc = ceil_div(p.K, kb);

    // Work items are (M block, panel group) pairs split contiguously over the
    // threads. Pick the split that minimises the busiest thread's work
    // (rows x panels, plus ~1/8 panel per row for the im2col copy), with M
    // blocks no larger than MC_MAX; ties go to fewer, larger items.
    const int mb0 = ceil_div(p.M, Isa::MC_MAX), nb0 = ceil_div(p.panels, Isa::PANELS_MAX);
    const int mb_hi = std::min(mb0 * threads, ceil_div(p.M, MR));
    const int nb_hi = std::min(nb0 * threads, p.panels);
    const double copy_cost = p.direct ? 0.0 : 0.125;
    double best = -1.0;
    for (int mb = mb0; mb <= mb_hi; ++mb) {
        const int mc = ceil_div(ceil_div(p.M, mb), MR) * MR;
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
                    load += ceil_div(rows, MR) * MR * (pans + copy_cost);
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

    // +16: 64-byte alignment of each thread's block; + SLACK: copy overshoot.
    p.slot = p.direct ? 0 : static_cast<size_t>(p.mc) * p.kc + 16 + Isa::SLACK;
    return p;
}

// Copies rows [m0, m0+rows) x columns [p0, p0+cols) of the virtual im2col
// matrix into dst (row stride cols). Out-of-image taps are zeros. For one
// output pixel and one kernel row ky, the k*in_c columns (kx, ci) are a single
// contiguous run of the NHWC input (minus the part outside the image), so a
// row costs at most `kernel` copies. Runs are written left to right, so the
// copy overshoot of one run is overwritten by the next (the last lands in the
// slot's slack).
template <class Isa>
void im2col_block(const ConvGeometry& g, const float* in, int m0, int rows, int p0, int cols,
                  float* dst) {
    const int ow = g.out_w(), ic = g.in_c, k = g.kernel;
    const int span = k * ic;  // columns per kernel row
    const int end = p0 + cols;
    const int ky0 = p0 / span, ky1 = (end - 1) / span;
    for (int r = 0; r < rows; ++r) {
        const int m = m0 + r, oy = m / ow, ox = m % ow;
        const int ix0 = ox * g.stride - g.pad;
        // In-image kx range as column offsets [v0, v1) within a span.
        const int v0 = std::max(0, -ix0) * ic;
        const int v1 = std::max(std::min(k, g.in_w - ix0), 0) * ic;
        float* d = dst + static_cast<size_t>(r) * cols;
        for (int ky = ky0; ky <= ky1; ++ky) {
            const int s0 = std::max(p0, ky * span) - ky * span;
            const int s1 = std::min(end, (ky + 1) * span) - ky * span;
            const int iy = oy * g.stride - g.pad + ky;
            if (iy < 0 || iy >= g.in_h || v1 <= v0) {
                Isa::zero(d, s1 - s0);
                d += s1 - s0;
                continue;
            }
            const float* src = in + (static_cast<ptrdiff_t>(iy) * g.in_w + ix0) * ic;
            const int c0 = std::min(std::max(s0, v0), s1);  // [s0, c0) zeros
            const int c1 = std::max(std::min(s1, v1), c0);  // [c0, c1) copy, [c1, s1) zeros
            Isa::zero(d, c0 - s0);
            d += c0 - s0;
            Isa::copy(d, src + c0, c1 - c0);
            d += c1 - c0;
            Isa::zero(d, s1 - c1);
            d += s1 - c1;
        }
    }
}

template <class Isa>
size_t packed_floats(const ConvGeometry& g) {
    const size_t K = static_cast<size_t>(g.kernel) * g.kernel * g.in_c;
    return static_cast<size_t>(ceil_div(g.out_c, Isa::NR)) * K * Isa::NR;
}

template <class Isa>
void pack(const ConvGeometry& g, const float* w_ohwi, float* packed) {
    constexpr int NR = Isa::NR;
    const size_t K = static_cast<size_t>(g.kernel) * g.kernel * g.in_c;
    const int panels = ceil_div(g.out_c, NR);
    for (int p = 0; p < panels; ++p) {
        float* dst = packed + static_cast<size_t>(p) * K * NR;
        for (size_t k = 0; k < K; ++k) {
            for (int j = 0; j < NR; ++j) {
                const int o = p * NR + j;
                dst[k * NR + j] = o < g.out_c ? w_ohwi[static_cast<size_t>(o) * K + k] : 0.0f;
            }
        }
    }
}

template <class Isa>
size_t scratch_floats(const ConvGeometry& g, int threads) {
    const Plan p = make_plan<Isa>(g, threads);
    return p.slot * static_cast<size_t>(std::max(threads, 1));
}

template <class Isa>
void conv(const ConvGeometry& g, const float* packed, const float* in, float* out,
          const Epilogue& ep, float* scratch, int threads) {
    constexpr int MR = Isa::MR, NR = Isa::NR;
    threads = std::max(threads, 1);
    const Plan p = make_plan<Isa>(g, threads);
    if (p.M <= 0 || p.N <= 0 || p.K <= 0) return;
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
                    im2col_block<Isa>(g, in, m0, rows, k0, kc, abuf);
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
                    const int n0 = pan * NR;
                    t.b = packed + (static_cast<size_t>(pan) * p.K + k0) * NR;
                    t.nr = std::min(NR, p.N - n0);
                    // Next B micro-panel this task will use: the next panel in
                    // this K block, else the group's first panel in the next one.
                    const float* next_b =
                        pan + 1 < pan1 ? t.b + static_cast<size_t>(p.K) * NR
                        : k0 + kc < p.K
                            ? packed + (static_cast<size_t>(pan0) * p.K + k0 + kc) * NR
                            : t.b;
                    t.bias = (k0 == 0 && ep.bias) ? ep.bias + n0 : nullptr;
                    for (int r0 = 0; r0 < rows; r0 += MR) {
                        const size_t crow = static_cast<size_t>(m0 + r0);
                        t.a = a + r0 * lda;
                        // The first tile of a panel pulls the next panel's B
                        // micro-panel towards L1; the other tiles touch their own.
                        t.pf = r0 == 0 ? next_b : t.b;
                        t.c = out + crow * ldc + n0;
                        t.res = (k0 == 0 && ep.residual) ? ep.residual + crow * ldc + n0 : nullptr;
                        Isa::tile(std::min(MR, rows - r0), t);
                    }
                }
            }
        }
    }
}

}  // namespace
}  // namespace spaedge::kernels::gemm
