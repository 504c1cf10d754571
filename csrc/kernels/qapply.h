// int8 task application shared by every ISA (internal header: include only
// from <isa>/qconv.cpp, before qops.inc; everything has internal linkage, so
// each ISA's copy is compiled with that ISA's flags and its plain loops
// vectorise with them). What it computes is kernels.inc's
// qconv_gather_pack / qconv_dequant_gather / qconv_requant_pack
// (docs/int8.md (c)); the layout written is qgemm.h's (`pack`).
//
// A panel (16 kept outputs) is written in passes of one tap and at most
// kChunk kept inputs: each of its 16 rows computes that run of s8 values
// into a small buffer (zeros for the in_c4 padding and the ragged panel's
// missing rows), and the buffer is then interleaved into the panel's 64-byte
// groups (4 K rows x 16 channels, 4 bytes per channel). No allocation; the
// buffer lives on the stack.
//
// Exactness: every float operation is one IEEE single operation written as
// such: products, a quotient, comparisons and the two additions of the
// rounding below, never a product followed by a sum the compiler could
// contract into an fma (GCC contracts by default in C++). So every ISA, and
// the scalar loops of the runtime this replaces, give the same bits.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kernels/kernels.h"
#include "kernels/qgemm.h"

namespace spaedge::kernels::qapply {
namespace {

constexpr int kNR = qgemm::kNR;
constexpr int kGroup = qgemm::kGroup;
constexpr int kChunk = 256;  // kept inputs per pass (a multiple of kGroup)
static_assert(kChunk % kGroup == 0, "a pass covers whole K groups");

// rne(x) for |x| < 2^22 by the round-to-nearest-even addition of 1.5 * 2^23
// (exact: the sum lies in [2^23, 2^24), where the float spacing is 1), in
// the default rounding mode like nearbyint; vectorises everywhere.
constexpr float kRound = 12582912.0f;

// The 16 rows of a pass, buf[j * stride + c] for c < n4 (a multiple of 4),
// into the panel at K row k0 (a multiple of 4): group g of the pass is the
// 64 bytes at (k0 / 4 + g) * 64, 4 bytes per channel.
inline void interleave(const int8_t* buf, int stride, int n4, int8_t* panel, int k0) {
  int8_t* d = panel + static_cast<size_t>(k0 / kGroup) * (kNR * kGroup);
  for (int g = 0; g < n4 / kGroup; ++g, d += kNR * kGroup)
    for (int j = 0; j < kNR; ++j)
      std::memcpy(d + j * kGroup, buf + j * stride + g * kGroup, kGroup);
}

// q[c] = clamp(rne(f32(f32(r[c] * s) / ws)), -127, 127) for c < n (NaN:
// -127), zeros up to n4; returns the sum of the q. The rounding addition
// is exact rne for |x| < 2^22; beyond, it gives a value beyond the same
// bound (|x| >= 128 stays >= 127.5 in magnitude), and NaN and infinities
// pass through, so the clamp after it gives clamp(rne(x)) for every x.
// (Clamping first would be the same, but GCC does not vectorise that form.)
inline int32_t quantize_run(const float* r, int n, int n4, float s, float ws, int8_t* q) {
  int32_t sum = 0;
  for (int c = 0; c < n; ++c) {
    float x = (r[c] * s) / ws;
    x = (x + kRound) - kRound;
    x = x > -127.0f ? x : -127.0f;  // NaN: -127
    x = x < 127.0f ? x : 127.0f;
    const int32_t v = static_cast<int32_t>(x);
    q[c] = static_cast<int8_t>(v);
    sum += v;
  }
  for (int c = n; c < n4; ++c) q[c] = 0;
  return sum;
}

// What every ISA provides as its Ops (<isa>/qconv.cpp's QApplyOps):
//   row_max(r, n, s): max_k |f32(r[k] * s)| for k < n, 0 for an empty row, a
//     NaN skipped (as std::max(m, |v|) skips it; max is exact, so any order
//     gives the same). Compilers do not vectorise a float max reduction
//     without -ffast-math, so the SIMD ISAs write it with intrinsics.
//   quantize_run: quantize_run's result (AVX2 writes it with intrinsics:
//     GCC's own vectorisation of the NaN-exact clamps is blends).
//   dequant9(row, in_index, ic, bs, dst): dequant_rows' result for a 3x3
//     conv's first kept inputs, in blocks; returns how many it did (AVX2:
//     8 inputs' 8 first taps converted and transposed in registers).
// These are scalar's (and NEON's quantize_run and dequant9).
struct PlainOps {
  static float row_max(const float* r, size_t n, float s) {
    float m = 0.0f;
    for (size_t k = 0; k < n; ++k) {
      const float a = std::fabs(r[k] * s);
      m = a > m ? a : m;
    }
    return m;
  }
  static int32_t quantize_run(const float* r, int n, int n4, float s, float ws, int8_t* q) {
    return qapply::quantize_run(r, n, n4, s, ws, q);
  }
  static size_t dequant9(const int8_t*, const int32_t*, size_t, float, float*) { return 0; }
};

// The panels [p0, p1) holding kept outputs [o0, o1), and the sums' place.
struct Dest {
  qgemm::Layout l;
  int p0, p1;
  int8_t* panels;
  int32_t* wsum;
  Dest(const ConvGeometry& g, int o0, int o1, void* packed)
      : l(qgemm::layout(g)),
        p0(o0 / kNR),
        p1((o1 + kNR - 1) / kNR),
        panels(static_cast<int8_t*>(packed)),
        wsum(reinterpret_cast<int32_t*>(static_cast<int8_t*>(packed) + l.wbytes)) {}
  int8_t* panel(int p) const { return panels + static_cast<size_t>(p) * l.pbytes; }
};

// Panel p in passes: fill(j, t, c0, n, n4, buf_row) writes row j's s8 values
// of tap t, kept inputs [c0, c0 + n), zeros to n4, and returns their sum.
template <class Fill>
void write_panel(const ConvGeometry& g, const Dest& d, int p, Fill&& fill) {
  const int nv = std::min(kNR, g.out_c - p * kNR);
  alignas(64) int8_t buf[kNR * kChunk];
  if (nv < kNR) std::memset(buf + nv * kChunk, 0, static_cast<size_t>(kNR - nv) * kChunk);
  int32_t sums[kNR] = {};
  int8_t* pp = d.panel(p);
  const int in_c4 = d.l.in_c4;
  for (int t = 0; t < g.kernel * g.kernel; ++t)
    for (int c0 = 0; c0 < in_c4; c0 += kChunk) {
      const int n = std::min(kChunk, g.in_c - c0), n4 = std::min(kChunk, in_c4 - c0);
      for (int j = 0; j < nv; ++j) sums[j] += fill(j, t, c0, n, n4, buf + j * kChunk);
      interleave(buf, kChunk, n4, pp, t * in_c4 + c0);
    }
  std::memcpy(d.wsum + static_cast<size_t>(p) * kNR, sums, sizeof sums);
}

inline size_t base_row(const QApplyArgs& a, int o) {
  return static_cast<size_t>(a.out_index[o]) * static_cast<size_t>(a.base_in) * a.g.kernel *
         a.g.kernel;
}

// Kept inputs first (TAPS: the tap count, or 0 for any, `taps`): each kept
// input's taps are adjacent bytes of a base row, so a row is read once, in
// order, instead of once per tap. Passes of `chunk` kept inputs, all taps,
// through buf[t][16][chunk] (at most kTapBuf bytes).
constexpr size_t kTapBuf = 16384;

template <int TAPS>
void gather_panel(const QApplyArgs& a, const Dest& d, int p, const int8_t* const* rows, int nv,
                  int taps_any) {
  const int taps = TAPS ? TAPS : taps_any;
  const int in_c = a.g.in_c, in_c4 = d.l.in_c4;
  const int chunk = static_cast<int>(kTapBuf / (static_cast<size_t>(kNR) * taps)) / kGroup * kGroup;
  alignas(64) int8_t buf[kTapBuf];
  const size_t tstride = static_cast<size_t>(kNR) * chunk;  // bytes per tap
  if (nv < kNR)
    for (int t = 0; t < taps; ++t)
      std::memset(buf + t * tstride + static_cast<size_t>(nv) * chunk, 0,
                  static_cast<size_t>(kNR - nv) * chunk);
  int32_t sums[kNR] = {};
  int8_t* pp = d.panel(p);
  for (int c0 = 0; c0 < in_c4; c0 += chunk) {
    const int n = std::min(chunk, in_c - c0), n4 = std::min(chunk, in_c4 - c0);
    const int32_t* idx = a.in_index + c0;
    for (int j = 0; j < nv; ++j) {
      int8_t* q = buf + static_cast<size_t>(j) * chunk;
      for (int c = 0; c < n; ++c) {
        const int8_t* src = rows[j] + static_cast<size_t>(idx[c]) * taps;
        for (int t = 0; t < taps; ++t) q[t * tstride + c] = src[t];
      }
      int32_t sum = 0;  // over the buffer: contiguous, vectorised
      for (int t = 0; t < taps; ++t) {
        int8_t* qt = q + t * tstride;
        for (int c = 0; c < n; ++c) sum += qt[c];
        for (int c = n; c < n4; ++c) qt[c] = 0;
      }
      sums[j] += sum;
    }
    for (int t = 0; t < taps; ++t) interleave(buf + t * tstride, chunk, n4, pp, t * in_c4 + c0);
  }
  std::memcpy(d.wsum + static_cast<size_t>(p) * kNR, sums, sizeof sums);
}

inline void gather_pack(const QApplyArgs& a, int o0, int o1, float* wscale, void* packed) {
  const ConvGeometry& g = a.g;
  const Dest d(g, o0, o1, packed);
  const int taps = g.kernel * g.kernel;
  for (int o = o0; o < o1; ++o)
    wscale[o] = a.base_scale[a.out_index[o]] * (a.scale ? a.scale[o] : 1.0f);
  for (int p = d.p0; p < d.p1; ++p) {
    const int nv = std::min(kNR, g.out_c - p * kNR);
    const int8_t* rows[kNR];
    for (int j = 0; j < nv; ++j) rows[j] = a.base + base_row(a, p * kNR + j);
    if (taps == 9) {
      gather_panel<9>(a, d, p, rows, nv, taps);
    } else if (taps == 1) {
      gather_panel<1>(a, d, p, rows, nv, taps);
    } else if (static_cast<size_t>(taps) * kNR * kGroup <= kTapBuf) {
      gather_panel<0>(a, d, p, rows, nv, taps);
    } else {  // kernels beyond 16 x 16: one tap per pass
      write_panel(g, d, p, [&](int j, int t, int c0, int n, int n4, int8_t* q) {
        const int8_t* src = rows[j] + t;
        const int32_t* idx = a.in_index + c0;
        int32_t sum = 0;
        for (int c = 0; c < n; ++c) {
          const int8_t v = src[static_cast<size_t>(idx[c]) * taps];
          q[c] = v;
          sum += v;
        }
        for (int c = n; c < n4; ++c) q[c] = 0;
        return sum;
      });
    }
  }
}

// Kept inputs first, as gather_panel: each row of the base read once. The
// bytes of 8 kept inputs go through a small tap-major buffer, so the
// conversion and the scaling run 8 wide on contiguous floats.
template <class Ops, int TAPS>
void dequant_rows(const QApplyArgs& a, int o0, int o1, float* w, int taps_any) {
  constexpr size_t kB = 8;  // kept inputs per block
  const size_t taps = static_cast<size_t>(TAPS ? TAPS : taps_any);
  const size_t ic = static_cast<size_t>(a.g.in_c), ib = ic / kB * kB;
  for (int o = o0; o < o1; ++o) {
    const int8_t* row = a.base + base_row(a, o);
    const float bs = a.base_scale[a.out_index[o]];
    float* dst = w + static_cast<size_t>(o - o0) * taps * ic;
    size_t i = TAPS == 9 ? Ops::dequant9(row, a.in_index, ic, bs, dst) : 0;
    if (taps <= 16)
      for (; i < ib; i += kB) {
        int8_t tb[16][kB];
        for (size_t b = 0; b < kB; ++b) {
          const int8_t* src = row + static_cast<size_t>(a.in_index[i + b]) * taps;
          for (size_t t = 0; t < taps; ++t) tb[t][b] = src[t];
        }
        for (size_t t = 0; t < taps; ++t)
          for (size_t b = 0; b < kB; ++b) dst[t * ic + i + b] = bs * static_cast<float>(tb[t][b]);
      }
    for (; i < ic; ++i) {
      const int8_t* src = row + static_cast<size_t>(a.in_index[i]) * taps;
      for (size_t t = 0; t < taps; ++t) dst[t * ic + i] = bs * static_cast<float>(src[t]);
    }
  }
}

template <class Ops>
void dequant_gather(const QApplyArgs& a, int o0, int o1, float* w) {
  const int taps = a.g.kernel * a.g.kernel;
  if (taps == 9)
    dequant_rows<Ops, 9>(a, o0, o1, w, taps);
  else if (taps == 1)
    dequant_rows<Ops, 1>(a, o0, o1, w, taps);
  else
    dequant_rows<Ops, 0>(a, o0, o1, w, taps);
}

template <class Ops>
void requant_pack(const ConvGeometry& g, const float* w, const float* scale, int o0, int o1,
                  float* wscale, void* packed) {
  const Dest d(g, o0, o1, packed);
  const size_t ic = static_cast<size_t>(g.in_c);
  const size_t K = static_cast<size_t>(g.kernel) * g.kernel * ic;
  for (int p = d.p0; p < d.p1; ++p) {
    const float* rows[kNR];
    float s[kNR], ws[kNR];
    for (int j = 0; j < kNR && p * kNR + j < g.out_c; ++j) {
      const int o = p * kNR + j;
      rows[j] = w + static_cast<size_t>(o - o0) * K;
      s[j] = scale ? scale[o] : 1.0f;
      const float m = Ops::row_max(rows[j], K, s[j]);
      ws[j] = m > 0.0f ? m / 127.0f : 1.0f;
      wscale[o] = ws[j];
    }
    write_panel(g, d, p, [&](int j, int t, int c0, int n, int n4, int8_t* q) {
      return Ops::quantize_run(rows[j] + static_cast<size_t>(t) * ic + c0, n, n4, s[j], ws[j], q);
    });
  }
}

}  // namespace
}  // namespace spaedge::kernels::qapply
