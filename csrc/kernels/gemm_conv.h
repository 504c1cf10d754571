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
// panel group) pairs, claimed one at a time by the workers of the caller's
// Parallel (any worker, any order; each item writes its own part of C).
// A padded conv first copies the input in one parallel phase (bands of rows
// as items), then runs the GEMM items as a second phase.
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
#include <new>
#include <type_traits>

#include "kernels/kernels.h"

namespace spaedge::kernels::gemm {
namespace {

inline int ceil_div(int a, int b) {
  return (a + b - 1) / b;
}

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

// How one conv call is cut: K, M and N blocks, work items, scratch.
struct Blocking {
  int M = 0, N = 0, K = 0, panels = 0;
  int hp = 0, wp = 0;        // rows/cols of the (padded) input that A points into
  bool padded = false;       // input copied into a zero-bordered buffer in scratch
  int span = 0;              // floats per kernel row (kernel * in_c)
  int spans_per_block = 0;   // >= 1: K blocks are this many whole spans
  int parts_per_span = 0;    // >= 1: or each span is cut into this many blocks
  int kc_max = 0;            // largest K block
  int mc = 0, mb = 0;        // rows per M block, number of M blocks
  int np = 0, nb = 0;        // panels per group, number of groups
  int rank = 0;              // fused low-rank: extra K rows of B, T = x_centre A'^T
  int r_panels = 0;          // A' panels (NR columns of T each)
  int ktot = 0;              // B rows per panel: K + rank
  int workers = 1;           // threads the GEMM phase shares (1: small conv, run by the caller)
  size_t padded_floats = 0;  // scratch: the padded input, then one slot per worker
  size_t w_slot = 0;         // floats per worker slot (a multiple of 16: 64-byte aligned)
  size_t scratch = 0;
};

// Per-worker slot in scratch: the M block whose rows the worker last set up,
// its A row offsets and (fused low-rank) its T block.
template <int MC>
struct WorkerState {
  int64_t mblk;        // -1: none yet in this call
  size_t row_off[MC];  // offsets of the block's A rows at ky = 0
};

// Cost model of the split (multiply-adds): an item costs its MACs plus
// kItemMacs (claiming, setting up its rows, colder caches); helpers start
// kLateMacs after the caller (waking up, getting a CPU).
constexpr double kItemMacs = 16384.0;
constexpr double kLateMacs = 65536.0;
// Floats of the padded input per copy item (bands of whole rows), and what a
// copied float weighs against a multiply-add (for Parallel::min_work): a copy
// streams far fewer floats per second than the GEMM does multiply-adds, and
// with 32 the ResNet stem's pad is shared, which keeps the helper awake for
// the big conv after it (docs/benchmarks.md, "Measurements behind the kernel and runtime design").
constexpr double kPadItemFloats = 16384.0;
constexpr double kCopyWork = 32.0;

// `threads`: workers the scratch is sized for; the split uses them when the
// conv is at least `min_work` multiply-adds (Parallel::min_work), else one.
template <class Isa>
Blocking make_blocking(const ConvGeometry& g, int threads, int rank = 0,
                       double min_work = kMinSharedWork) {
  constexpr int MR = Isa::MR, NR = Isa::NR;
  Blocking p;
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

  // Work items are (M block, panel group) pairs that the workers claim
  // one at a time. One worker: the largest blocks the limits allow. More:
  // the split with the earliest estimated finish when the workers
  // claim the items in order, each taking the next one as it comes free
  // (the caller at once, helpers kLateMacs later); ties go to fewer, larger
  // items. More, smaller items balance better, each costs kItemMacs.
  const int mb0 = ceil_div(p.M, Isa::MC_MAX), nb0 = ceil_div(p.panels, Isa::PANELS_MAX);
  p.workers = static_cast<double>(p.M) * p.N * p.ktot < min_work ? 1 : threads;
  // (The search is sized for a handful of workers: beyond 8 it widens no
  // further, and the simulation models at most 16.)
  const int tw = std::min(p.workers, 8);
  const int mb_hi = p.workers == 1 ? mb0 : std::min(std::max(mb0 + tw, 4 * tw), ceil_div(p.M, MR));
  const int nb_hi = p.workers == 1 ? nb0 : std::min(std::max(nb0 + tw, 2 * tw), p.panels);
  const double k_macs = static_cast<double>(p.ktot) * NR;  // per row and panel
  double best = -1.0;
  double finish[16];
  const int sim = std::min(p.workers, 16);
  int last_mbe = 0;
  for (int mb = mb0; mb <= mb_hi; ++mb) {
    const int mc = ceil_div(ceil_div(p.M, mb), MR) * MR;
    const int mbe = ceil_div(p.M, mc);
    if (mbe == last_mbe) continue;  // same split as the last mb
    last_mbe = mbe;
    for (int nb = nb0; nb <= nb_hi; ++nb) {
      const int np = ceil_div(p.panels, nb);
      const int nbe = ceil_div(p.panels, np);
      if (nb > nb0 && ceil_div(p.panels, ceil_div(p.panels, nb - 1)) == nbe) continue;
      double end = 0.0;
      if (sim > 1) {
        finish[0] = 0.0;
        for (int w = 1; w < sim; ++w) finish[w] = kLateMacs;
        for (int task = 0; task < mbe * nbe; ++task) {
          const int rows = std::min(mc, p.M - (task / nbe) * mc);
          const int pans = std::min(np, p.panels - (task % nbe) * np);
          int w = 0;
          for (int v = 1; v < sim; ++v)
            if (finish[v] < finish[w]) w = v;
          finish[w] += static_cast<double>(ceil_div(rows, MR)) * MR * pans * k_macs + kItemMacs;
        }
        for (int w = 0; w < sim; ++w) end = std::max(end, finish[w]);
      }
      if (best < 0.0 || end < best * 0.999) {
        best = end;
        p.mc = mc;
        p.mb = mbe;
        p.np = np;
        p.nb = nbe;
      }
    }
  }

  p.padded_floats = p.padded ? static_cast<size_t>(p.hp) * p.wp * g.in_c : 0;
  // One slot per worker, 64-byte aligned (+16 floats to align the first):
  // its WorkerState, then its T block of up to MC_MAX rows of r_panels * NR
  // floats. Sized by MC_MAX, not mc, so scratch sized for some thread count
  // also serves every smaller one.
  const size_t state = (sizeof(WorkerState<Isa::MC_MAX>) + 63) / 64 * 16;
  p.w_slot = state + (static_cast<size_t>(Isa::MC_MAX) * p.r_panels * NR + 15) / 16 * 16;
  p.scratch = p.padded_floats + 16 + p.w_slot * threads;
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
  return make_blocking<Isa>(g, threads, rank).scratch;
}

template <class Isa>
void conv(const ConvGeometry& g, const float* packed, const float* in, float* out,
          const Epilogue& ep, float* scratch, const Parallel* par, int rank = 0) {
  constexpr int MR = Isa::MR, NR = Isa::NR;
  static_assert(MR <= kMaxMR && Isa::MC_MAX % MR == 0, "M blocks must hold whole tiles");
  const int threads = parallel_threads(par);
  const Blocking p = make_blocking<Isa>(g, threads, rank, par ? par->min_work : kMinSharedWork);
  if (p.M <= 0 || p.N <= 0 || p.K <= 0) return;
  const size_t ldc = static_cast<size_t>(p.N);
  const float* src = p.padded ? scratch : in;
  const size_t row_stride = static_cast<size_t>(p.wp) * g.in_c;    // floats per (padded) input row
  const size_t col_step = static_cast<size_t>(g.stride) * g.in_c;  // floats per output column
  const size_t centre = (g.kernel / 2) * (row_stride + g.in_c);    // window origin -> centre tap
  const int ow = g.out_w();
  const int kblocks =
      p.spans_per_block > 0 ? ceil_div(g.kernel, p.spans_per_block) : g.kernel * p.parts_per_span;
  const float* a_packed = packed + static_cast<size_t>(p.panels) * p.ktot * NR;
  const size_t ldt = static_cast<size_t>(p.r_panels) * NR;  // T row stride

  // Phase 1: the zero-bordered input, bands of whole rows as items.
  if (p.padded) {
    const double row_work = static_cast<double>(row_stride) * kCopyWork;
    parallel_for_bands(par, p.hp, row_work, kPadItemFloats * kCopyWork,
                       [&](int y0, int y1, int) { pad_rows<Isa>(g, in, scratch, y0, y1); });
  }

  // Worker slots: no M block set up yet in this call.
  using State = WorkerState<Isa::MC_MAX>;
  float* slots = reinterpret_cast<float*>(
      (reinterpret_cast<uintptr_t>(scratch + p.padded_floats) + 63) & ~uintptr_t(63));
  for (int w = 0; w < p.workers; ++w) (new (slots + p.w_slot * w) State)->mblk = -1;
  const size_t state_floats = (sizeof(State) + 63) / 64 * 16;

  // Phase 2: the (M block, panel group) items, M block major.
  parallel_for(p.workers > 1 ? par : nullptr, p.mb * p.nb, [&](int task, int worker) {
    float* slot = slots + p.w_slot * worker;
    State& st = *std::launder(reinterpret_cast<State*>(slot));
    float* tbuf = slot + state_floats;
    size_t* row_off = st.row_off;
    const int mblk = task / p.nb, nblk = task % p.nb;
    const int m0 = mblk * p.mc, rows = std::min(p.mc, p.M - m0);
    const int pan0 = nblk * p.np, pan1 = std::min(p.panels, pan0 + p.np);
    if (st.mblk != mblk) {
      // Set up this M block's rows in the worker's slot (reused while the
      // worker's next items stay in the block).
      int oy = m0 / ow, ox = m0 % ow;
      for (int r = 0; r < rows; ++r) {
        row_off[r] = static_cast<size_t>(oy) * g.stride * row_stride + ox * col_step;
        if (++ox == ow) {
          ox = 0;
          ++oy;
        }
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
      st.mblk = mblk;
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
        // Next B micro-panel this item will use: the next panel in
        // this K block, else the group's first panel in the next one.
        const float* next_b = pan + step < pan1 ? t.b + step * pstride
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
  });
}

}  // namespace
}  // namespace spaedge::kernels::gemm

// The conv kernels of kernels.inc for an ISA whose convolutions are this GEMM
// with the tile type `Isa` (expanded inside the ISA's namespace, after Isa).
// SPAEDGE_GEMM_CONV_KERNELS: sizes and the convs; SPAEDGE_GEMM_PACK_KERNELS:
// packing (an ISA that shares another's packed layout takes that ISA's).
#define SPAEDGE_GEMM_CONV_KERNELS(Isa)                                                     \
  size_t conv_packed_floats(const ConvGeometry& g) {                                       \
    return gemm::packed_floats<Isa>(g);                                                    \
  }                                                                                        \
  size_t conv_scratch_floats(const ConvGeometry& g, int threads) {                         \
    return gemm::scratch_floats<Isa>(g, threads);                                          \
  }                                                                                        \
  void conv(const ConvGeometry& g, const float* packed, const float* in, float* out,       \
            const Epilogue& ep, float* scratch, const Parallel* par) {                     \
    gemm::conv<Isa>(g, packed, in, out, ep, scratch, par);                                 \
  }                                                                                        \
  size_t conv_lowrank_packed_floats(const ConvGeometry& g, int rank) {                     \
    return gemm::packed_floats<Isa>(g, rank);                                              \
  }                                                                                        \
  size_t conv_lowrank_scratch_floats(const ConvGeometry& g, int rank, int threads) {       \
    return gemm::scratch_floats<Isa>(g, threads, rank);                                    \
  }                                                                                        \
  void conv_lowrank(const ConvGeometry& g, int rank, const float* packed, const float* in, \
                    float* out, const Epilogue& ep, float* scratch, const Parallel* par) { \
    gemm::conv<Isa>(g, packed, in, out, ep, scratch, par, rank);                           \
  }
#define SPAEDGE_GEMM_PACK_KERNELS(Isa)                                                         \
  void conv_pack(const ConvGeometry& g, const float* w_ohwi, float* packed) {                  \
    gemm::pack<Isa>(g, w_ohwi, packed);                                                        \
  }                                                                                            \
  void conv_lowrank_pack(const ConvGeometry& g, int rank, const float* w_ohwi, const float* a, \
                         const float* b, float* packed) {                                      \
    gemm::pack<Isa>(g, w_ohwi, packed, rank, a, b);                                            \
  }
