// What the two NEON int8 convolutions (qconv.cpp: smull, qconv_dot.cpp:
// sdot) share: the A element (u8 ^ 0x80, a signed byte: NEON has no u8 x s8
// dot product before ARMv8.6, so activations are shifted by 128 in the
// scratch copy and the zero point with them, zp_corr = in_zp - 128; the
// integer sum acc - zp * wsum is unchanged) and QEpilogue's requantization
// of 16 channels in four float32x4 vectors. Internal header.
#pragma once

#include <arm_neon.h>

#include <cstdint>
#include <cstring>

#include "kernels/qgemm.h"

namespace spaedge::kernels::neon {
namespace {

struct QNeonBase {
  using Elem = int8_t;
  static Elem load(uint8_t q) { return static_cast<int8_t>(q ^ 0x80u); }
  static int zp_corr(int in_zp) { return in_zp - 128; }
};

// Row r of a tile: acc holds channels 0..15 of the tile (nr valid).
inline void requant16(const int32x4_t acc[4], const qgemm::QTile<int8_t>& t, int r) {
  const QEpilogue& ep = *t.ep;
  const int n = t.nr;
  float mulb[16] = {}, addb[16] = {};
  const float* mul = t.mul;
  const float* add = t.add;
  if (n < 16) {
    std::memcpy(mulb, t.mul, sizeof(float) * n);
    if (add) std::memcpy(addb, t.add, sizeof(float) * n);
    mul = mulb;
    add = add ? addb : nullptr;
  }
  uint8x16_t rv = vdupq_n_u8(0);
  const uint8_t* res = t.res ? t.res + r * t.ldc : nullptr;
  if (res) {
    uint8_t rb[16] = {};
    std::memcpy(rb, res, static_cast<size_t>(n));
    rv = vld1q_u8(rb);
  }
  const uint16x8_t r16[2] = {vmovl_u8(vget_low_u8(rv)), vmovl_high_u8(rv)};
  const int32x4_t zp = vdupq_n_s32(t.zp);
  const float32x4_t lo = vdupq_n_f32(ep.relu ? 0.0f : static_cast<float>(-ep.out_zp));
  const float32x4_t hi = vdupq_n_f32(static_cast<float>(255 - ep.out_zp));
  const int32x4_t ozp = vdupq_n_s32(ep.out_zp), rzp = vdupq_n_s32(ep.res_zp);
  const float32x4_t rmul = vdupq_n_f32(ep.res_mul);
  uint16x4_t q16[4];
  for (int j = 0; j < 4; ++j) {
    const int32x4_t v = vsubq_s32(acc[j], vmulq_s32(vld1q_s32(t.wsum + 4 * j), zp));
    const float32x4_t a = add ? vld1q_f32(add + 4 * j) : vdupq_n_f32(0.0f);
    float32x4_t f = vfmaq_f32(a, vcvtq_f32_s32(v), vld1q_f32(mul + 4 * j));
    if (res) {
      const uint16x8_t h = r16[j / 2];
      const uint32x4_t w = (j % 2) ? vmovl_high_u16(h) : vmovl_u16(vget_low_u16(h));
      const int32x4_t ri = vsubq_s32(vreinterpretq_s32_u32(w), rzp);
      f = vfmaq_f32(f, vcvtq_f32_s32(ri), rmul);
    }
    f = vminnmq_f32(vmaxnmq_f32(f, lo), hi);  // NaN -> lo, as scalar and maxps
    const int32x4_t q = vaddq_s32(vcvtnq_s32_f32(f), ozp);
    q16[j] = vmovn_u32(vreinterpretq_u32_s32(q));
  }
  const uint8x16_t out =
      vcombine_u8(vmovn_u16(vcombine_u16(q16[0], q16[1])), vmovn_u16(vcombine_u16(q16[2], q16[3])));
  uint8_t* c = t.c + r * t.ldc;
  if (n == 16) {
    vst1q_u8(c, out);
  } else {
    uint8_t ob[16];
    vst1q_u8(ob, out);
    std::memcpy(c, ob, static_cast<size_t>(n));
  }
}

}  // namespace
}  // namespace spaedge::kernels::neon
