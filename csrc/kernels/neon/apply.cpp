// NEON task application: gather + centre-tap merge + BN scale straight into
// the conv panels (8 output channels per panel, packed[panel][k][8]), from
// the base's stored OIHW weights (kernels.h: conv_apply).
//
// A panel's 8 kept outputs are 8 base rows
// base[o][i][t]; for each kept input i' the k^2 taps of the 8 rows are
// (usually) one cache line per row. A full panel takes the taps 4 at a time
// (one 4-float load per row, two 4x4 transposes in registers); the taps
// left over (k^2 mod 4) are lane loads, which hit L1. Same values, same
// arithmetic either way.
//
// The ragged last panel is done lane by lane with the same arithmetic (fma,
// add, mul).
#include <algorithm>
#include <cmath>

#include "kernels/apply_panels.h"
#include "kernels/neon/simd.h"

namespace spaedge::kernels::neon {

namespace {
constexpr int kNR = 8;  // must match conv.cpp

inline float32x4_t gather4(const float* s, const int32_t* idx) {
  float32x4_t v = vdupq_n_f32(0.0f);
  v = vld1q_lane_f32(s + idx[0], v, 0);
  v = vld1q_lane_f32(s + idx[1], v, 1);
  v = vld1q_lane_f32(s + idx[2], v, 2);
  v = vld1q_lane_f32(s + idx[3], v, 3);
  return v;
}

using Shape = panels::Shape<kNR>;

// A full panel's BN scale (ones without one, or for a ragged panel, which
// is done lane by lane), loaded once per panel.
struct PanelScale {
  float32x4_t s0, s1;
  PanelScale(const ApplyArgs& a, int o0, bool full) {
    const bool load = full && a.scale;
    s0 = load ? vld1q_f32(a.scale + o0) : vdupq_n_f32(1.0f);
    s1 = load ? vld1q_f32(a.scale + o0 + 4) : vdupq_n_f32(1.0f);
  }
};

// A full panel's row: v (8 base values of outputs o0..o0+7) + B'A' at input
// column `col` when `centre`, times the BN scale, stored at dst.
inline void full_row(const ApplyArgs& a, const Shape& s, int o0, int col, bool centre,
                     const PanelScale& sc, float32x4_t v0, float32x4_t v1, float* dst) {
  if (centre) {
    float32x4_t d0 = vdupq_n_f32(0.0f), d1 = d0;
    for (int q = 0; q < s.rank; ++q) {
      const float av = a.a[static_cast<size_t>(q) * s.ic + col];
      const float* bq = a.bt + static_cast<size_t>(q) * s.oc + o0;
      d0 = vfmaq_n_f32(d0, vld1q_f32(bq), av);
      d1 = vfmaq_n_f32(d1, vld1q_f32(bq + 4), av);
    }
    v0 = vaddq_f32(v0, d0);
    v1 = vaddq_f32(v1, d1);
  }
  vst1q_f32(dst, vmulq_f32(v0, sc.s0));
  vst1q_f32(dst + 4, vmulq_f32(v1, sc.s1));
}

// One lane (output o) of the ragged last panel.
inline float ragged_value(const ApplyArgs& a, const Shape& s, int o, int col, bool centre,
                          float v) {
  if (centre) {
    float d = 0.0f;
    for (int q = 0; q < s.rank; ++q)
      d = std::fma(a.bt[static_cast<size_t>(q) * s.oc + o],
                   a.a[static_cast<size_t>(q) * s.ic + col], d);
    v += d;
  }
  return a.scale ? v * a.scale[o] : v;
}

// c[q] = column q of the 4x4 block whose rows are r0..r3.
inline void transpose4(float32x4_t r0, float32x4_t r1, float32x4_t r2, float32x4_t r3,
                       float32x4_t* c) {
  const float32x4x2_t p01 = vtrnq_f32(r0, r1), p23 = vtrnq_f32(r2, r3);
  c[0] = vcombine_f32(vget_low_f32(p01.val[0]), vget_low_f32(p23.val[0]));
  c[1] = vcombine_f32(vget_low_f32(p01.val[1]), vget_low_f32(p23.val[1]));
  c[2] = vcombine_f32(vget_high_f32(p01.val[0]), vget_high_f32(p23.val[0]));
  c[3] = vcombine_f32(vget_high_f32(p01.val[1]), vget_high_f32(p23.val[1]));
}

}  // namespace

void conv_apply(const ApplyArgs& a, int o0, int o1, float* packed) {
  const Shape s(a);
  const panels::PanelRange<kNR> range(o0, o1);
  const size_t orow = static_cast<size_t>(a.base_in) * s.taps;  // floats per base output row
  for (int p = range.p0; p < range.p1; ++p) {
    const int ob = p * kNR, nv = std::min(kNR, s.oc - ob);
    int32_t off[kNR];  // each lane's base row
    for (int j = 0; j < kNR; ++j)
      off[j] = j < nv ? static_cast<int32_t>(static_cast<size_t>(a.out_index[ob + j]) * orow) : 0;
    float* dst = packed + static_cast<size_t>(p) * s.ktot * kNR;
    const PanelScale sc(a, ob, nv == kNR);
    for (int i = 0; i < s.ic; ++i) {
      const float* src = a.base + static_cast<size_t>(a.in_index[i]) * s.taps;
      int t = 0;
      if (nv == kNR) {
        for (; t + 4 <= s.taps; t += 4) {
          float32x4_t lo[4], hi[4];  // taps t..t+3 of outputs 0-3 and 4-7
          transpose4(vld1q_f32(src + off[0] + t), vld1q_f32(src + off[1] + t),
                     vld1q_f32(src + off[2] + t), vld1q_f32(src + off[3] + t), lo);
          transpose4(vld1q_f32(src + off[4] + t), vld1q_f32(src + off[5] + t),
                     vld1q_f32(src + off[6] + t), vld1q_f32(src + off[7] + t), hi);
          for (int q = 0; q < 4; ++q)
            full_row(a, s, ob, i, s.merge && t + q == s.centre, sc, lo[q], hi[q],
                     dst + (static_cast<size_t>(t + q) * s.ic + i) * kNR);
        }
      }
      for (; t < s.taps; ++t) {
        float* d = dst + (static_cast<size_t>(t) * s.ic + i) * kNR;
        const bool centre = s.merge && t == s.centre;
        if (nv == kNR) {
          full_row(a, s, ob, i, centre, sc, gather4(src + t, off), gather4(src + t, off + 4), d);
        } else {
          for (int j = 0; j < kNR; ++j) d[j] = 0.0f;
          for (int j = 0; j < nv; ++j)
            d[j] = ragged_value(a, s, ob + j, i, centre, src[t + off[j]]);
        }
      }
    }
  }
  panels::finish_outputs(a, s, range, o1, packed);
}

}  // namespace spaedge::kernels::neon
