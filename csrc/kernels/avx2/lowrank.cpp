// AVX2+FMA Channel-SPA merge: centre tap row of each output channel
// += sum_r b[o][r] * a[r][:], 8 input channels per vector.
#include "kernels/avx2/simd.h"

namespace spaedge::kernels::avx2 {

void lowrank_merge(int out_c, int in_c, int kernel, int rank, const float* a, const float* b,
                   float* w_ohwi) {
  const int c = kernel / 2;
  const int iv = in_c - in_c % 8;
  const __m256i tail = tail_mask(in_c % 8);
  for (int o = 0; o < out_c; ++o) {
    float* w = w_ohwi + ((static_cast<size_t>(o) * kernel + c) * kernel + c) * in_c;
    const float* bo = b + static_cast<size_t>(o) * rank;
    int i = 0;
    // 32 input channels at a time: four accumulators per rank step.
    for (; i + 32 <= in_c; i += 32) {
      __m256 d0 = _mm256_setzero_ps(), d1 = d0, d2 = d0, d3 = d0;
      for (int r = 0; r < rank; ++r) {
        const __m256 br = _mm256_broadcast_ss(bo + r);
        const float* ar = a + static_cast<size_t>(r) * in_c + i;
        d0 = _mm256_fmadd_ps(br, _mm256_loadu_ps(ar), d0);
        d1 = _mm256_fmadd_ps(br, _mm256_loadu_ps(ar + 8), d1);
        d2 = _mm256_fmadd_ps(br, _mm256_loadu_ps(ar + 16), d2);
        d3 = _mm256_fmadd_ps(br, _mm256_loadu_ps(ar + 24), d3);
      }
      _mm256_storeu_ps(w + i, _mm256_add_ps(_mm256_loadu_ps(w + i), d0));
      _mm256_storeu_ps(w + i + 8, _mm256_add_ps(_mm256_loadu_ps(w + i + 8), d1));
      _mm256_storeu_ps(w + i + 16, _mm256_add_ps(_mm256_loadu_ps(w + i + 16), d2));
      _mm256_storeu_ps(w + i + 24, _mm256_add_ps(_mm256_loadu_ps(w + i + 24), d3));
    }
    for (; i < iv; i += 8) {
      __m256 d = _mm256_setzero_ps();
      for (int r = 0; r < rank; ++r)
        d = _mm256_fmadd_ps(_mm256_broadcast_ss(bo + r),
                            _mm256_loadu_ps(a + static_cast<size_t>(r) * in_c + i), d);
      _mm256_storeu_ps(w + i, _mm256_add_ps(_mm256_loadu_ps(w + i), d));
    }
    if (iv < in_c) {
      __m256 d = _mm256_setzero_ps();
      for (int r = 0; r < rank; ++r)
        d = _mm256_fmadd_ps(_mm256_broadcast_ss(bo + r),
                            _mm256_maskload_ps(a + static_cast<size_t>(r) * in_c + iv, tail), d);
      store_n(w + iv, _mm256_add_ps(_mm256_maskload_ps(w + iv, tail), d), in_c % 8);
    }
  }
}

}  // namespace spaedge::kernels::avx2
