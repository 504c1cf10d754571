// int8 convolution shared by every ISA (internal header: include only from
// <isa>/qconv*.cpp; everything has internal linkage, so each ISA's copy is
// compiled with that ISA's flags). The scheme and the layout are README.md's
// "int8"; the requantization formula is QEpilogue's (kernels.h).
//
//   C[M x N] = A[M x K] * B[K x N],  M = out_h*out_w pixels, N = out_c,
//   K = kernel * kernel * in_c4 in (ky, kx, ci) order, in_c4 = in_c rounded
//   up to a multiple of 4.
//
// A: the input is always copied first into scratch, (in_h + 2 pad) x
// (in_w + 2 pad) pixels of in_c4 elements, the border and the channels
// beyond in_c set to the input zero point, each value passed through the
// ISA's `load` (u8 as is, NEON u8 ^ 0x80 as s8, AVX2 widened to int16). The
// (kx, ci) part of an A row for one ky is then one contiguous run of
// kernel * in_c4 elements (a "segment"), consecutive segments one padded
// input row apart, so a tile takes one pointer per row (as gemm_conv.h).
//
// B: packed[panel][K / 4][16][4] int8: panel p holds output channels
// [16p, 16p + 16), each 64-byte row group g the 4 K rows [4g, 4g + 4) of the
// 16 channels, 4 consecutive bytes per channel (one int32 lane of vpdpbusd,
// sdot, or a pair of vpmaddwd / smull pairs). Ragged channels and the
// in_c4 padding are zeros. After the panels: int32 wsum[panels * 16], the sum
// of each output channel's weights (0 for padding channels), which turns
// the zero points into one integer correction: acc - in_zp * wsum.
//
// Work: M in blocks of rows (items of the caller's Parallel), each block
// all column tiles, each column tile all of its row tiles: the B panel
// stays in L2 while its block's A rows are reused from L1/L2. No K blocking:
// a tile accumulates all of K in registers and requantizes from them.
//
// The ISA type provides:
//   using Elem = ...;                          // A element in scratch
//   static Elem load(uint8_t q);               // u8 activation -> A element
//   static int zp_corr(int in_zp);             // zero point as the tile sees it
//   static constexpr int MR, NT;               // tile rows, tile columns (8, 16, 32)
//   static void tile(int rows, const QTile<Elem>& t);   // 1 <= rows <= MR
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels/kernels.h"

namespace spaedge::kernels::qgemm {
namespace {

constexpr int kNR = 16;    // output channels per panel
constexpr int kGroup = 4;  // K rows interleaved per channel
constexpr int kMaxMR = 8;

struct Layout {
  int in_c4 = 0;      // in_c rounded up to 4
  int seg = 0;        // elements per segment (kernel * in_c4)
  int K = 0;          // kernel * seg
  int panels = 0;     // ceil(out_c / 16)
  size_t pbytes = 0;  // bytes per panel (K * 16)
  size_t wbytes = 0;  // bytes of all panels (wsum follows)
  size_t total = 0;   // + 4 * 16 * panels
};

inline Layout layout(const ConvGeometry& g) {
  Layout l;
  l.in_c4 = (g.in_c + 3) / 4 * 4;
  l.seg = g.kernel * l.in_c4;
  l.K = g.kernel * l.seg;
  l.panels = (g.out_c + kNR - 1) / kNR;
  l.pbytes = static_cast<size_t>(l.K) * kNR;
  l.wbytes = l.pbytes * l.panels;
  l.total = l.wbytes + sizeof(int32_t) * kNR * l.panels;
  return l;
}

inline const int32_t* wsum_of(const Layout& l, const void* packed) {
  return reinterpret_cast<const int32_t*>(static_cast<const uint8_t*>(packed) + l.wbytes);
}

// The packing, identical on every ISA.
inline void pack(const ConvGeometry& g, const int8_t* w, void* packed) {
  const Layout l = layout(g);
  int8_t* dst = static_cast<int8_t*>(packed);
  std::memset(dst, 0, l.wbytes);
  int32_t sums[kNR];
  const size_t row = static_cast<size_t>(g.kernel) * g.kernel * g.in_c;  // one OHWI output
  for (int p = 0; p < l.panels; ++p) {
    int8_t* pp = dst + p * l.pbytes;
    for (int j = 0; j < kNR; ++j) {
      const int o = p * kNR + j;
      sums[j] = 0;
      if (o >= g.out_c) continue;
      const int8_t* wo = w + o * row;
      for (int t = 0; t < g.kernel * g.kernel; ++t)
        for (int ci = 0; ci < g.in_c; ++ci) {
          const int8_t v = wo[static_cast<size_t>(t) * g.in_c + ci];
          const int k = t * l.in_c4 + ci;
          pp[(k / kGroup) * (kNR * kGroup) + j * kGroup + k % kGroup] = v;
          sums[j] += v;
        }
    }
    std::memcpy(dst + l.wbytes + sizeof(int32_t) * kNR * p, sums, sizeof sums);
  }
}

// QEpilogue's formula for one element, the reference every ISA's vector
// code reproduces operation for operation.
inline uint8_t requant(int32_t acc_minus_corr, float mul, float add, const uint8_t* res,
                       const QEpilogue& ep) {
  float t = std::fma(static_cast<float>(acc_minus_corr), mul, add);
  if (res) t = std::fma(static_cast<float>(static_cast<int>(*res) - ep.res_zp), ep.res_mul, t);
  const float lo = ep.relu ? 0.0f : static_cast<float>(-ep.out_zp);
  const float hi = static_cast<float>(255 - ep.out_zp);
  t = t > lo ? t : lo;  // NaN -> lo, as maxps(t, lo) and fmaxnm
  t = t < hi ? t : hi;
  return static_cast<uint8_t>(static_cast<int>(std::nearbyint(t)) + ep.out_zp);
}

template <class E>
struct QTile {
  const E* a[kMaxMR];   // A row pointers (first `rows` used), at ky = 0
  int groups;           // 4-element groups per segment
  int nseg;             // segments (kernel)
  ptrdiff_t jump;       // elements from one segment's start to the next
  const int8_t* b;      // the tile's first panel, at K row 0
  size_t pstride;       // bytes from one panel to the next
  int sub;              // first channel of the tile within its panel (0 or 8)
  int nr;               // valid columns (1..NT)
  uint8_t* c;           // first output element of the tile
  size_t ldc;           // output (and residual) row stride = out_c
  const uint8_t* res;   // residual at the tile's first element, or null
  const int32_t* wsum;  // at the tile's first channel
  const float* mul;     // at the tile's first channel
  const float* add;     // at the tile's first channel, or null
  int32_t zp;           // I::zp_corr(in_zp): acc - zp * wsum
  const QEpilogue* ep;
};

// Scalar requantization of `n` accumulators of one tile row (tails, scalar).
inline void requant_row(const int32_t* acc, int n, const int32_t* wsum, int32_t zp,
                        const float* mul, const float* add, const uint8_t* res, const QEpilogue& ep,
                        uint8_t* out) {
  for (int j = 0; j < n; ++j)
    out[j] =
        requant(acc[j] - zp * wsum[j], mul[j], add ? add[j] : 0.0f, res ? res + j : nullptr, ep);
}

template <class I>
size_t scratch_bytes(const ConvGeometry& g) {
  const Layout l = layout(g);
  const size_t px = static_cast<size_t>(g.in_h + 2 * g.pad) * (g.in_w + 2 * g.pad);
  return px * l.in_c4 * sizeof(typename I::Elem) + 64;
}

// The conv: input copy (bands of padded rows), then the GEMM (blocks of M).
template <class I>
void run(const ConvGeometry& g, const void* packed, const uint8_t* in, uint8_t* out,
         const QEpilogue& ep, void* scratch, const Parallel* par) {
  using E = typename I::Elem;
  const Layout l = layout(g);
  const int oh = g.out_h(), ow = g.out_w();
  const int M = oh * ow;
  if (M <= 0 || g.out_c <= 0) return;
  // A strided 1x1 conv without padding copies only the pixels it reads and
  // runs as a stride-1 conv over them.
  const int step = g.kernel == 1 && g.pad == 0 && g.stride > 1 ? g.stride : 1;
  const int hb = step > 1 ? oh : g.in_h + 2 * g.pad;  // rows of the copy
  const int wb = step > 1 ? ow : g.in_w + 2 * g.pad;  // columns of the copy
  const int cols = step > 1 ? ow : g.in_w;            // input pixels per copied row
  const int stride = step > 1 ? 1 : g.stride;         // over the copy
  E* buf = static_cast<E*>(scratch);
  const E zpe = I::load(static_cast<uint8_t>(ep.in_zp));
  const size_t prow = static_cast<size_t>(wb) * l.in_c4;  // elements per copied row
  parallel_for_bands(par, hb, static_cast<double>(prow) * 8.0, 262144.0, [&](int y0, int y1, int) {
    for (int y = y0; y < y1; ++y) {
      E* d = buf + y * prow;
      const int iy = y * step - g.pad;
      if (iy < 0 || iy >= g.in_h) {
        std::fill(d, d + prow, zpe);
        continue;
      }
      std::fill(d, d + static_cast<size_t>(g.pad) * l.in_c4, zpe);
      const uint8_t* s = in + static_cast<size_t>(iy) * g.in_w * g.in_c;
      const size_t sstep = static_cast<size_t>(step) * g.in_c;
      E* dx = d + static_cast<size_t>(g.pad) * l.in_c4;
      if (l.in_c4 == 4) {
        // Few channels (the stem's 3): one pixel at a time in registers; a
        // memcpy call per 3-byte pixel cost as much as the stem's GEMM.
        for (int x = 0; x < cols; ++x, s += sstep, dx += 4)
          for (int ci = 0; ci < 4; ++ci) dx[ci] = ci < g.in_c ? I::load(s[ci]) : zpe;
      } else {
        for (int x = 0; x < cols; ++x, s += sstep, dx += l.in_c4) {
          if constexpr (std::is_same<E, uint8_t>::value)
            std::memcpy(dx, s, static_cast<size_t>(g.in_c));
          else
            for (int ci = 0; ci < g.in_c; ++ci) dx[ci] = I::load(s[ci]);
          for (int ci = g.in_c; ci < l.in_c4; ++ci) dx[ci] = zpe;
        }
      }
      std::fill(dx, d + prow, zpe);
    }
  });

  const int32_t* wsum = wsum_of(l, packed);
  const int8_t* b = static_cast<const int8_t*>(packed);
  const int32_t zp = I::zp_corr(ep.in_zp);
  // M block: A rows of a block fit in ~256 KB.
  const size_t row_bytes = static_cast<size_t>(l.K) * sizeof(E);
  int mc = static_cast<int>(std::max<size_t>(1, (256u << 10) / row_bytes));
  mc = std::max(I::MR, mc / I::MR * I::MR);
  mc = std::min(mc, (M + I::MR - 1) / I::MR * I::MR);
  int blocks = (M + mc - 1) / mc;
  const double work = static_cast<double>(M) * l.K * g.out_c;
  const int threads = worth_sharing(par, work) ? parallel_threads(par) : 1;
  if (threads > 1) {
    // Enough items to balance, in a multiple of the threads (9 blocks on 2
    // threads leave one idle for the ninth: the stem ran 1.5x faster on 2).
    int want = std::max(blocks, 4 * threads);
    want = (want + threads - 1) / threads * threads;
    mc = ((M + want - 1) / want + I::MR - 1) / I::MR * I::MR;
    blocks = (M + mc - 1) / mc;
  }
  const int ntiles = (g.out_c + I::NT - 1) / I::NT;
  parallel_for(threads > 1 ? par : nullptr, blocks, [&](int blk, int) {
    const int m0 = blk * mc, m1 = std::min(M, m0 + mc);
    QTile<E> t;
    t.groups = l.seg / kGroup;
    t.nseg = g.kernel;
    t.jump = static_cast<ptrdiff_t>(prow);
    t.pstride = l.pbytes;
    t.ldc = static_cast<size_t>(g.out_c);
    t.zp = zp;
    t.ep = &ep;
    for (int ct = 0; ct < ntiles; ++ct) {
      const int c0 = ct * I::NT;
      t.b = b + (c0 / kNR) * l.pbytes;
      t.sub = c0 % kNR;
      t.nr = std::min(I::NT, g.out_c - c0);
      t.wsum = wsum + c0;
      t.mul = ep.mul + c0;
      t.add = ep.add ? ep.add + c0 : nullptr;
      // Row m's output pixel, advanced with m (a division per row costs
      // as much as the stem's arithmetic).
      int oy = m0 / ow, ox = m0 % ow;
      for (int m = m0; m < m1; m += I::MR) {
        const int rows = std::min(I::MR, m1 - m);
        for (int r = 0; r < rows; ++r) {
          t.a[r] =
              buf +
              (static_cast<size_t>(oy) * stride * wb + static_cast<size_t>(ox) * stride) * l.in_c4;
          if (++ox == ow) {
            ox = 0;
            ++oy;
          }
        }
        const size_t off = static_cast<size_t>(m) * g.out_c + c0;
        t.c = out + off;
        t.res = ep.residual ? ep.residual + off : nullptr;
        I::tile(rows, t);
      }
    }
  });
}

// ---- the elementwise and pooling ops (plain loops, vectorised by each
// ISA's compiler flags; integer or single IEEE operations: exact everywhere)

inline void quantize(size_t n, const float* x, float scale, int zp, uint8_t* q) {
  const float inv = 1.0f / scale;
  const float lo = static_cast<float>(-zp), hi = static_cast<float>(255 - zp);
  for (size_t i = 0; i < n; ++i) {
    float t = x[i] * inv;
    t = t > lo ? t : lo;  // NaN -> lo (q = 0)
    t = t < hi ? t : hi;
    q[i] = static_cast<uint8_t>(static_cast<int>(std::nearbyint(t)) + zp);
  }
}

inline void dequantize(size_t n, const uint8_t* q, float scale, int zp, float* x) {
  for (size_t i = 0; i < n; ++i) x[i] = scale * static_cast<float>(static_cast<int>(q[i]) - zp);
}

// The maximum of one pooling window (rows [y0, y1), columns [x0, x1)) into
// the c outputs o: 16 channels at a time (GCC/Clang vector extension:
// pmaxub, umax), each block's maximum kept in a register over the window
// and stored once, the last block overlapping the one before it (its
// stores repeat equal values). Plain loops stay scalar here: u8 pointers
// may alias anything.
inline void window_max(const uint8_t* in, int in_w, int c, int y0, int y1, int x0, int x1,
                       uint8_t* o) {
  using U8x16 = uint8_t __attribute__((vector_size(16)));
  if (c < 16) {
    std::memset(o, 0, static_cast<size_t>(c));
    for (int y = y0; y < y1; ++y)
      for (int x = x0; x < x1; ++x) {
        const uint8_t* s = in + (static_cast<size_t>(y) * in_w + x) * c;
        for (int ch = 0; ch < c; ++ch) o[ch] = std::max(o[ch], s[ch]);
      }
    return;
  }
  for (int c0 = 0; c0 < c; c0 += 16) {
    const int b = std::min(c0, c - 16);
    U8x16 m = {};
    for (int y = y0; y < y1; ++y) {
      const uint8_t* s = in + (static_cast<size_t>(y) * in_w + x0) * c + b;
      for (int x = x0; x < x1; ++x, s += c) {
        U8x16 v;
        std::memcpy(&v, s, 16);
        m = m > v ? m : v;
      }
    }
    std::memcpy(o + b, &m, 16);
  }
}

inline void maxpool(int in_h, int in_w, int c, int kernel, int stride, int pad, const uint8_t* in,
                    uint8_t* out, const Parallel* par) {
  maxpool_windows(par, in_h, in_w, c, kernel, stride, pad, out,
                  [&](uint8_t* o, int y0, int y1, int x0, int x1) {
                    window_max(in, in_w, c, y0, y1, x0, x1, o);
                  });
}

inline void global_avgpool(int h, int w, int c, const uint8_t* in, float scale, int zp,
                           float* out) {
  const size_t n = static_cast<size_t>(h) * w;
  const float m = n ? scale / static_cast<float>(n) : 0.0f;
  const int32_t corr = static_cast<int32_t>(n) * zp;
  constexpr int kChunk = 256;  // channels summed per pass (no allocation)
  int32_t sums[kChunk];
  for (int c0 = 0; c0 < c; c0 += kChunk) {
    const int nc = std::min(kChunk, c - c0);
    std::fill(sums, sums + nc, 0);
    for (size_t p = 0; p < n; ++p) {
      const uint8_t* s = in + p * c + c0;
      for (int ch = 0; ch < nc; ++ch) sums[ch] += s[ch];
    }
    for (int ch = 0; ch < nc; ++ch) out[c0 + ch] = static_cast<float>(sums[ch] - corr) * m;
  }
}

}  // namespace
}  // namespace spaedge::kernels::qgemm
