// NEON pooling: 4 channels per vector, partial tail.
#include <algorithm>
#include <limits>

#include "kernels/neon/simd.h"

namespace spaedge::kernels::neon {

void maxpool(int in_h, int in_w, int c, int kernel, int stride, int pad, const float* in,
             float* out, const Parallel* par) {
  const float32x4_t ninf = vdupq_n_f32(-std::numeric_limits<float>::infinity());
  const int cv = c - c % 4;
  maxpool_windows(
      par, in_h, in_w, c, kernel, stride, pad, out, [&](float* o, int y0, int y1, int x0, int x1) {
        for (int ch = 0; ch < cv; ch += 4) {
          float32x4_t m = ninf;
          for (int iy = y0; iy < y1; ++iy)
            for (int ix = x0; ix < x1; ++ix)
              m = vmaxq_f32(m, vld1q_f32(in + (static_cast<size_t>(iy) * in_w + ix) * c + ch));
          vst1q_f32(o + ch, m);
        }
        for (int ch = cv; ch < c; ++ch) {
          float m = -std::numeric_limits<float>::infinity();
          for (int iy = y0; iy < y1; ++iy)
            for (int ix = x0; ix < x1; ++ix)
              m = std::max(m, in[(static_cast<size_t>(iy) * in_w + ix) * c + ch]);
          o[ch] = m;
        }
      });
}

void global_avgpool(int h, int w, int c, const float* in, float* out) {
  const size_t n = static_cast<size_t>(h) * w;
  const float inv = n ? 1.0f / static_cast<float>(n) : 0.0f;
  const int cv = c - c % 4;
  for (int ch = 0; ch < cv; ch += 4) {
    float32x4_t s0 = vdupq_n_f32(0.0f), s1 = s0, s2 = s0, s3 = s0;
    size_t p = 0;
    for (; p + 4 <= n; p += 4) {
      s0 = vaddq_f32(s0, vld1q_f32(in + (p + 0) * c + ch));
      s1 = vaddq_f32(s1, vld1q_f32(in + (p + 1) * c + ch));
      s2 = vaddq_f32(s2, vld1q_f32(in + (p + 2) * c + ch));
      s3 = vaddq_f32(s3, vld1q_f32(in + (p + 3) * c + ch));
    }
    for (; p < n; ++p) s0 = vaddq_f32(s0, vld1q_f32(in + p * c + ch));
    const float32x4_t s = vaddq_f32(vaddq_f32(s0, s1), vaddq_f32(s2, s3));
    vst1q_f32(out + ch, vmulq_n_f32(s, inv));
  }
  for (int ch = cv; ch < c; ++ch) {
    float s = 0.0f;
    for (size_t p = 0; p < n; ++p) s += in[p * c + ch];
    out[ch] = s * inv;
  }
}

}  // namespace spaedge::kernels::neon
