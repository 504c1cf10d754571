// NEON Channel-SPA merge: centre tap row of each output channel
// += sum_r b[o][r] * a[r][:], 4 input channels per vector.
#include "kernels/neon/simd.h"

namespace spaedge::kernels::neon {

void lowrank_merge(int out_c, int in_c, int kernel, int rank, const float* a, const float* b,
                   float* w_ohwi) {
  const int c = kernel / 2;
  for (int o = 0; o < out_c; ++o) {
    float* w = w_ohwi + ((static_cast<size_t>(o) * kernel + c) * kernel + c) * in_c;
    const float* bo = b + static_cast<size_t>(o) * rank;
    int i = 0;
    for (; i + 16 <= in_c; i += 16) {
      float32x4_t d0 = vdupq_n_f32(0.0f), d1 = d0, d2 = d0, d3 = d0;
      for (int r = 0; r < rank; ++r) {
        const float br = bo[r];
        const float* ar = a + static_cast<size_t>(r) * in_c + i;
        d0 = vfmaq_n_f32(d0, vld1q_f32(ar), br);
        d1 = vfmaq_n_f32(d1, vld1q_f32(ar + 4), br);
        d2 = vfmaq_n_f32(d2, vld1q_f32(ar + 8), br);
        d3 = vfmaq_n_f32(d3, vld1q_f32(ar + 12), br);
      }
      vst1q_f32(w + i, vaddq_f32(vld1q_f32(w + i), d0));
      vst1q_f32(w + i + 4, vaddq_f32(vld1q_f32(w + i + 4), d1));
      vst1q_f32(w + i + 8, vaddq_f32(vld1q_f32(w + i + 8), d2));
      vst1q_f32(w + i + 12, vaddq_f32(vld1q_f32(w + i + 12), d3));
    }
    for (; i + 4 <= in_c; i += 4) {
      float32x4_t d = vdupq_n_f32(0.0f);
      for (int r = 0; r < rank; ++r)
        d = vfmaq_n_f32(d, vld1q_f32(a + static_cast<size_t>(r) * in_c + i), bo[r]);
      vst1q_f32(w + i, vaddq_f32(vld1q_f32(w + i), d));
    }
    for (; i < in_c; ++i) {
      float d = 0.0f;
      for (int r = 0; r < rank; ++r) d += bo[r] * a[static_cast<size_t>(r) * in_c + i];
      w[i] += d;
    }
  }
}

}  // namespace spaedge::kernels::neon
