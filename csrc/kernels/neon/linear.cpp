// NEON fully connected layer: four output rows at a time share each x load.
#include "kernels/neon/simd.h"

namespace spaedge::kernels::neon {

void linear(int in_f, int out_f, const float* w, const float* bias, const float* x, float* y) {
  const int iv = in_f - in_f % 4;
  int o = 0;
  for (; o + 4 <= out_f; o += 4) {
    const float* w0 = w + static_cast<size_t>(o) * in_f;
    const float* w1 = w0 + in_f;
    const float* w2 = w1 + in_f;
    const float* w3 = w2 + in_f;
    float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0, a2 = a0, a3 = a0;
    for (int i = 0; i < iv; i += 4) {
      const float32x4_t xv = vld1q_f32(x + i);
      a0 = vfmaq_f32(a0, vld1q_f32(w0 + i), xv);
      a1 = vfmaq_f32(a1, vld1q_f32(w1 + i), xv);
      a2 = vfmaq_f32(a2, vld1q_f32(w2 + i), xv);
      a3 = vfmaq_f32(a3, vld1q_f32(w3 + i), xv);
    }
    float s0 = vaddvq_f32(a0), s1 = vaddvq_f32(a1), s2 = vaddvq_f32(a2), s3 = vaddvq_f32(a3);
    for (int i = iv; i < in_f; ++i) {
      s0 += w0[i] * x[i];
      s1 += w1[i] * x[i];
      s2 += w2[i] * x[i];
      s3 += w3[i] * x[i];
    }
    y[o + 0] = (bias ? bias[o + 0] : 0.0f) + s0;
    y[o + 1] = (bias ? bias[o + 1] : 0.0f) + s1;
    y[o + 2] = (bias ? bias[o + 2] : 0.0f) + s2;
    y[o + 3] = (bias ? bias[o + 3] : 0.0f) + s3;
  }
  for (; o < out_f; ++o) {
    const float* wr = w + static_cast<size_t>(o) * in_f;
    float32x4_t a = vdupq_n_f32(0.0f);
    for (int i = 0; i < iv; i += 4) a = vfmaq_f32(a, vld1q_f32(wr + i), vld1q_f32(x + i));
    float s = vaddvq_f32(a);
    for (int i = iv; i < in_f; ++i) s += wr[i] * x[i];
    y[o] = (bias ? bias[o] : 0.0f) + s;
  }
}

}  // namespace spaedge::kernels::neon
