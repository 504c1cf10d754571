// AVX2+FMA fully connected layer: four output rows at a time share each x load.
#include "kernels/avx2/simd.h"

namespace spaedge::kernels::avx2 {

void linear(int in_f, int out_f, const float* w, const float* bias, const float* x, float* y) {
  const int iv = in_f - in_f % 8;
  const __m256i tail = tail_mask(in_f % 8);
  int o = 0;
  for (; o + 4 <= out_f; o += 4) {
    const float* w0 = w + static_cast<size_t>(o) * in_f;
    const float* w1 = w0 + in_f;
    const float* w2 = w1 + in_f;
    const float* w3 = w2 + in_f;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int i = 0; i < iv; i += 8) {
      const __m256 xv = _mm256_loadu_ps(x + i);
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + i), xv, a0);
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + i), xv, a1);
      a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w2 + i), xv, a2);
      a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + i), xv, a3);
    }
    if (iv < in_f) {
      const __m256 xv = _mm256_maskload_ps(x + iv, tail);
      a0 = _mm256_fmadd_ps(_mm256_maskload_ps(w0 + iv, tail), xv, a0);
      a1 = _mm256_fmadd_ps(_mm256_maskload_ps(w1 + iv, tail), xv, a1);
      a2 = _mm256_fmadd_ps(_mm256_maskload_ps(w2 + iv, tail), xv, a2);
      a3 = _mm256_fmadd_ps(_mm256_maskload_ps(w3 + iv, tail), xv, a3);
    }
    y[o + 0] = (bias ? bias[o + 0] : 0.0f) + hsum(a0);
    y[o + 1] = (bias ? bias[o + 1] : 0.0f) + hsum(a1);
    y[o + 2] = (bias ? bias[o + 2] : 0.0f) + hsum(a2);
    y[o + 3] = (bias ? bias[o + 3] : 0.0f) + hsum(a3);
  }
  for (; o < out_f; ++o) {
    const float* wr = w + static_cast<size_t>(o) * in_f;
    __m256 a = _mm256_setzero_ps();
    for (int i = 0; i < iv; i += 8)
      a = _mm256_fmadd_ps(_mm256_loadu_ps(wr + i), _mm256_loadu_ps(x + i), a);
    if (iv < in_f)
      a = _mm256_fmadd_ps(_mm256_maskload_ps(wr + iv, tail), _mm256_maskload_ps(x + iv, tail), a);
    y[o] = (bias ? bias[o] : 0.0f) + hsum(a);
  }
}

}  // namespace spaedge::kernels::avx2
