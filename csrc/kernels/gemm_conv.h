// Convolution as a blocked GEMM over row pointers, shared by the SIMD paths
// (internal header: include only from <isa>/conv.cpp; everything here has
// internal linkage so each ISA's copy is compiled with that ISA's flags).
//
//   C[M x N] = A[M x K] * B[K x N],  M = out_h*out_w pixels, N = out_c,
//   K = kernel*kernel*in_c in (ky, kx, ci) order (matches OHWI weights).
//
// C is the NHWC output itself (row stride out_c). A is never materialised
// (no im2col): for output pixel (oy, ox) and kernel row ky, the k*in_c values
// (kx, ci) of its A row are one contiguous run of the NHWC input starting at
// in[(oy*stride + ky - pad, ox*stride - pad, 0)]. So each A row is a pointer
// plus k "spans" of k*in_c floats, consecutive spans one (padded) input row
// apart. Padded convs first copy the input once into a zero-bordered buffer in
// scratch; unpadded ones read the input in place (a 1x1 stride-1 conv is a
// plain GEMM over the NHWC input). The micro-kernel takes MR row pointers and
// walks nseg segments of seg floats, jumping from one span to the next.
//
// B is packed once at task application into panels of NR output channels,
// packed[panel][k][NR], ragged out_c zero-padded.
//
// Blocking (BLIS order): K in blocks of whole spans (or parts of one long
// span) of <= KC_MAX floats (an NR x kc B micro-panel stays in L1), M in
// blocks of <= MC_MAX rows, N in groups of panels. Work items are (M block,
// panel group) pairs, split statically over the OpenMP threads.
//
// Epilogue: at the first K block the accumulators start from bias + residual
// (so an output aliasing the residual is read before it is overwritten); later
// K blocks accumulate onto C; ReLU is applied at the last K block.
//
// The ISA type provides:
//   static constexpr int MR, NR, KC_MAX, MC_MAX, PANELS_MAX;
//   static void copy(float* d, const float* s, int n);
//   static void zero(float* d, int n);
//   static void tile(int rows, const TileArgs& t);      // 1 <= rows <= MR
// and optionally (AVX-512: one tile spans two adjacent panels)
//   static constexpr bool PAIRS = true;
//   static void tile2(int rows, const TileArgs& t, size_t bstride);  // nr in (NR, 2*NR]
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "kernels/kernels.h"

namespace spaedge::kernels::gemm {
namespace {

inline int ceil_div(int a, int b) { return (a + b - 1) / b; }

// Isa::PAIRS if declared, else false.
template <class I, class = void>
struct tiles_pairs : std::false_type {};
template <class I>
struct tiles_pairs<I, std::void_t<decltype(I::PAIRS)>> : std::bool_constant<I::PAIRS> {};

constexpr int kMaxMR = 8;

struct TileArgs {
    const float* a[kMaxMR];  // A row pointers (first `rows` used), at the K block start
    int seg;                 // k steps per segment
    int nseg;                // segments in this K block (kc = seg * nseg)
    ptrdiff_t jump;          // floats from the end of a segment to the start of the next
    const float* b;          // B micro-panel, kc x NR, at the K block start
    const float* pf;         // kc x NR floats worth pulling towards L1 meanwhile (may be b)
    float* c;                // first C element of the tile
    size_t ldc;              // C (and residual) row stride
    int nr;                  // valid columns (1..NR)
    bool accumulate;         // start from C (later K blocks)
    const float* bias;       // first K block: + bias (or null)
    const float* res;        // first K block: + residual (or null)
    bool relu;               // last K block
};

struct Plan {
    int M = 0, N = 0, K = 0, panels = 0;
    int hp = 0, wp = 0;   // rows/cols of the (padded) input that A points into
    bool padded = false;  // input copied into a zero-bordered buffer in scratch
    int span = 0;         // floats per kernel row (kernel * in_c)
    int spans_per_block = 0;  // >= 1: K blocks are this many whole spans
    int parts_per_span = 0;   // >= 1: or each span is cut into this many blocks
    int kc_max = 0;       // largest K block
    int mc = 0, mb = 0;   // rows per M block, number of M blocks
    int np = 0, nb = 0;   // panels per group, number of groups
    int rank = 0;         // fused low-rank: extra K rows of B, T = x_centre A'^T
    int r_panels = 0;     // A' panels (NR columns of T each)
    int ktot = 0;         // B rows per panel: K + rank
    size_t padded_floats = 0;  // scratch: the padded input, then per-thread T blocks
    size_t t_slot = 0;
    size_t scratch = 0;
};

template <class Isa>
Plan make_plan(const ConvGeometry& g, int threads, int rank = 0) {
    constexpr int MR = Isa::MR, NR = Isa::NR;
    Plan p;
    threads = std::max(threads, 1);
    p.M = g.out_h() * g.out_w();
    p.N = g.out_c;
    p.K = g.kernel * g.kernel * g.in_c;
    p.panels = ceil_div(p.N, NR);
    p.rank = std::max(rank, 0);
    p.r_panels = ceil_div(p.rank, NR);
    p.ktot = p.K + p.rank;
    if (p.M <= 0 || p.N <= 0 || p.K <= 0) return p;
    p.padded = g.pad > 0;
    p.hp = g.in_h + 2 * g.pad;
    p.wp = g.in_w + 2 * g.pad;
    p.span = g.kernel * g.in_c;
    if (p.span <= Isa::KC_MAX) {
        // Group whole spans, as evenly as the limit allows.
        const int blocks = ceil_div(g.kernel, std::max(1, Isa::KC_MAX / p.span));
        p.spans_per_block = ceil_div(g.kernel, blocks);
        p.parts_per_span = 1;
        p.kc_max = p.spans_per_block * p.span;
    } else {
        p.spans_per_block = 0;
        p.parts_per_span = ceil_div(p.span, Isa::KC_MAX);
        p.kc_max = ceil_div(p.span, p.parts_per_span);
    }

    // Work items are (M block, panel group) pairs split contiguously over the
    // threads. Pick the split that minimises the busiest thread's work
    // (rows x panels), with M blocks no larger than MC_MAX; ties go to fewer,
    // larger items.
    const int mb0 = ceil_div(p.M, Isa::MC_MAX), nb0 = ceil_div(p.panels, Isa::PANELS_MAX);
    const int mb_hi = std::min(mb0 * threads, ceil_div(p.M, MR));
    const int nb_hi = std::min(nb0 * threads, p.panels);
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
                    load += static_cast<double>(ceil_div(rows, MR)) * MR * pans;
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

    p.padded_floats = p.padded ? static_cast<size_t>(p.hp) * p.wp * g.in_c : 0;
    // T block per thread: up to MC_MAX rows of r_panels * NR floats, +16 to
    // align to 64 bytes. Sized by MC_MAX, not mc, so scratch sized for some
    // thread count also serves every smaller one.
    p.t_slot = p.rank ? static_cast<size_t>(Isa::MC_MAX) * p.r_panels * NR + 16 : 0;
    p.scratch = p.padded_floats + p.t_slot * threads;
    return p;
}

// Copies rows [y0, y1) of the zero-bordered input: padded row y holds input
// row y - pad with pad zero pixels on either side (all zeros outside).
template <class Isa>
void pad_rows(const ConvGeometry& g, const float* in, float* padded, int y0, int y1) {
    const int ic = g.in_c, wp = g.in_w + 2 * g.pad;
    for (int y = y0; y < y1; ++y) {
        float* d = padded + static_cast<size_t>(y) * wp * ic;
        const int iy = y - g.pad;
        if (iy < 0 || iy >= g.in_h) {
            Isa::zero(d, wp * ic);
            continue;
        }
        Isa::zero(d, g.pad * ic);
        Isa::copy(d + g.pad * ic, in + static_cast<size_t>(iy) * g.in_w * ic, g.in_w * ic);
        Isa::zero(d + (g.pad + g.in_w) * ic, g.pad * ic);
    }
}

// Packed layout: panels of NR output channels, each K + rank rows of NR
// floats (W' rows in (ky, kx, ci) order, then B'^T rows), followed by the A'
// panels (NR rank columns each, in_c rows) that compute T = x_centre A'^T.
template <class Isa>
size_t packed_floats(const ConvGeometry& g, int rank = 0) {
    constexpr int NR = Isa::NR;
    const size_t ktot = static_cast<size_t>(g.kernel) * g.kernel * g.in_c + std::max(rank, 0);
    return static_cast<size_t>(ceil_div(g.out_c, NR)) * ktot * NR +
           static_cast<size_t>(ceil_div(std::max(rank, 0), NR)) * g.in_c * NR;
}

template <class Isa>
void pack(const ConvGeometry& g, const float* w_ohwi, float* packed, int rank = 0,
          const float* a = nullptr, const float* b = nullptr) {
    constexpr int NR = Isa::NR;
    rank = std::max(rank, 0);
    const size_t K = static_cast<size_t>(g.kernel) * g.kernel * g.in_c;
    const size_t ktot = K + rank;
    const int panels = ceil_div(g.out_c, NR);
    for (int p = 0; p < panels; ++p) {
        float* dst = packed + static_cast<size_t>(p) * ktot * NR;
        for (size_t k = 0; k < ktot; ++k) {
            for (int j = 0; j < NR; ++j) {
                const int o = p * NR + j;
                float v = 0.0f;
                if (o < g.out_c)
                    v = k < K ? w_ohwi[static_cast<size_t>(o) * K + k]
                              : b[static_cast<size_t>(o) * rank + (k - K)];
                dst[k * NR + j] = v;
            }
        }
    }
    float* ap = packed + static_cast<size_t>(panels) * ktot * NR;
    for (int p = 0; p < ceil_div(rank, NR); ++p) {
        for (int i = 0; i < g.in_c; ++i) {
            for (int j = 0; j < NR; ++j) {
                const int r = p * NR + j;
                ap[(static_cast<size_t>(p) * g.in_c + i) * NR + j] =
                    r < rank ? a[static_cast<size_t>(r) * g.in_c + i] : 0.0f;
            }
        }
    }
}

template <class Isa>
size_t scratch_floats(const ConvGeometry& g, int threads, int rank = 0) {
    return make_plan<Isa>(g, threads, rank).scratch;
}

template <class Isa>
void conv(const ConvGeometry& g, const float* packed, const float* in, float* out,
          const Epilogue& ep, float* scratch, int threads, int rank = 0) {
    constexpr int MR = Isa::MR, NR = Isa::NR;
    static_assert(MR <= kMaxMR && Isa::MC_MAX % MR == 0, "M blocks must hold whole tiles");
    threads = std::max(threads, 1);
    const Plan p = make_plan<Isa>(g, threads, rank);
    if (p.M <= 0 || p.N <= 0 || p.K <= 0) return;
    const int tasks = p.mb * p.nb;
    const size_t ldc = static_cast<size_t>(p.N);
    const float* src = p.padded ? scratch : in;
    const size_t row_stride = static_cast<size_t>(p.wp) * g.in_c;  // floats per (padded) input row
    const size_t col_step = static_cast<size_t>(g.stride) * g.in_c;  // floats per output column
    const size_t centre = (g.kernel / 2) * (row_stride + g.in_c);   // window origin -> centre tap
    const int ow = g.out_w();
    const int kblocks = p.spans_per_block > 0 ? ceil_div(g.kernel, p.spans_per_block)
                                              : g.kernel * p.parts_per_span;
    const float* a_packed = packed + static_cast<size_t>(p.panels) * p.ktot * NR;
    const size_t ldt = static_cast<size_t>(p.r_panels) * NR;  // T row stride

#pragma omp parallel num_threads(threads) if (threads > 1 && (tasks > 1 || p.padded))
    {
        int tid = 0, nthr = 1;
#ifdef _OPENMP
        tid = omp_get_thread_num();
        nthr = omp_get_num_threads();
#endif
        if (p.padded) {
            const int y0 = static_cast<int>(static_cast<long long>(p.hp) * tid / nthr);
            const int y1 = static_cast<int>(static_cast<long long>(p.hp) * (tid + 1) / nthr);
            pad_rows<Isa>(g, in, scratch, y0, y1);
#pragma omp barrier
        }
        float* tbuf = nullptr;
        if (p.rank) {
            float* slot = scratch + p.padded_floats + p.t_slot * tid;
            tbuf = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(slot) + 63) & ~uintptr_t(63));
        }
        // Offsets of this M block's A rows at ky = 0 (reused for every K block).
        size_t row_off[Isa::MC_MAX];
        // Static contiguous split: consecutive tasks share an M block.
        const int t0 = static_cast<int>(static_cast<long long>(tasks) * tid / nthr);
        const int t1 = static_cast<int>(static_cast<long long>(tasks) * (tid + 1) / nthr);
        int cached_mblk = -1;
        for (int task = t0; task < t1; ++task) {
            const int mblk = task / p.nb, nblk = task % p.nb;
            const int m0 = mblk * p.mc, rows = std::min(p.mc, p.M - m0);
            const int pan0 = nblk * p.np, pan1 = std::min(p.panels, pan0 + p.np);
            if (mblk != cached_mblk) {
                for (int r = 0; r < rows; ++r) {
                    const int m = m0 + r, oy = m / ow, ox = m % ow;
                    row_off[r] = static_cast<size_t>(oy) * g.stride * row_stride + ox * col_step;
                }
                if (p.rank) {
                    // T[r][:] = A' x_centre(r) for the block's rows: a small GEMM
                    // over in_c with the same micro-kernel, A' packed as B.
                    for (int tp = 0; tp < p.r_panels; ++tp) {
                        for (int i0 = 0; i0 < g.in_c; i0 += Isa::KC_MAX) {
                            TileArgs t;
                            t.seg = std::min(Isa::KC_MAX, g.in_c - i0);
                            t.nseg = 1;
                            t.jump = 0;
                            t.b = a_packed + (static_cast<size_t>(tp) * g.in_c + i0) * NR;
                            t.pf = t.b;
                            t.ldc = ldt;
                            t.nr = std::min(NR, p.rank - tp * NR);
                            t.accumulate = i0 > 0;
                            t.bias = nullptr;
                            t.res = nullptr;
                            t.relu = false;
                            for (int r0 = 0; r0 < rows; r0 += MR) {
                                const int mr = std::min(MR, rows - r0);
                                for (int r = 0; r < mr; ++r) t.a[r] = src + row_off[r0 + r] + centre + i0;
                                for (int r = mr; r < MR; ++r) t.a[r] = t.a[0];
                                t.c = tbuf + r0 * ldt + tp * NR;
                                Isa::tile(mr, t);
                            }
                        }
                    }
                }
                cached_mblk = mblk;
            }
            int k0 = 0;  // K index of the block start (B row)
            const int all_blocks = kblocks + (p.rank ? 1 : 0);
            for (int kb = 0; kb < all_blocks; ++kb) {
                TileArgs t;
                const bool lowrank_block = kb == kblocks;
                size_t a_off = 0;  // offset of the block start within an A row
                if (lowrank_block) {
                    t.seg = p.rank;
                    t.nseg = 1;
                } else if (p.spans_per_block > 0) {
                    const int ky0 = kb * p.spans_per_block;
                    t.seg = p.span;
                    t.nseg = std::min(p.spans_per_block, g.kernel - ky0);
                    a_off = static_cast<size_t>(ky0) * row_stride;
                } else {
                    const int ky = kb / p.parts_per_span, part = kb % p.parts_per_span;
                    const int s0 = part * p.kc_max;
                    t.seg = std::min(p.kc_max, p.span - s0);
                    t.nseg = 1;
                    a_off = static_cast<size_t>(ky) * row_stride + s0;
                }
                t.jump = static_cast<ptrdiff_t>(row_stride) - p.span;
                const int kc = t.seg * t.nseg;
                t.ldc = ldc;
                t.accumulate = kb > 0;
                t.relu = ep.relu && kb + 1 == all_blocks;
                const size_t pstride = static_cast<size_t>(p.ktot) * NR;  // panel to panel
                for (int pan = pan0; pan < pan1;) {
                    // Isas with PAIRS take two adjacent panels per tile when
                    // the group has them; a lone last panel goes alone.
                    const int step = tiles_pairs<Isa>::value && pan + 1 < pan1 ? 2 : 1;
                    const int n0 = pan * NR;
                    t.b = packed + (static_cast<size_t>(pan) * p.ktot + k0) * NR;
                    t.nr = std::min(step * NR, p.N - n0);
                    // Next B micro-panel this task will use: the next panel in
                    // this K block, else the group's first panel in the next one.
                    const float* next_b =
                        pan + step < pan1 ? t.b + step * pstride
                        : k0 + kc < p.ktot
                            ? packed + (static_cast<size_t>(pan0) * p.ktot + k0 + kc) * NR
                            : t.b;
                    t.bias = (kb == 0 && ep.bias) ? ep.bias + n0 : nullptr;
                    for (int r0 = 0; r0 < rows; r0 += MR) {
                        const int mr = std::min(MR, rows - r0);
                        const size_t crow = static_cast<size_t>(m0 + r0);
                        if (lowrank_block) {
                            for (int r = 0; r < mr; ++r) t.a[r] = tbuf + (r0 + r) * ldt;
                        } else {
                            for (int r = 0; r < mr; ++r) t.a[r] = src + row_off[r0 + r] + a_off;
                        }
                        for (int r = mr; r < MR; ++r) t.a[r] = t.a[0];
                        // The first tile of a panel pulls the next panel's B
                        // micro-panel towards L1; the other tiles touch their own.
                        t.pf = r0 == 0 ? next_b : t.b;
                        t.c = out + crow * ldc + n0;
                        t.res = (kb == 0 && ep.residual) ? ep.residual + crow * ldc + n0 : nullptr;
                        if constexpr (tiles_pairs<Isa>::value) {
                            if (step == 2) {
                                Isa::tile2(mr, t, pstride);
                                continue;
                            }
                        }
                        Isa::tile(mr, t);
                    }
                    pan += step;
                }
                k0 += kc;
            }
        }
    }
}

}  // namespace
}  // namespace spaedge::kernels::gemm
