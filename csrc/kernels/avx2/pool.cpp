// AVX2 pooling: 8 channels per vector, masked tail.
#include <algorithm>
#include <limits>

#include "kernels/avx2/simd.h"

namespace spaedge::kernels::avx2 {

void maxpool(int in_h, int in_w, int c, int kernel, int stride, int pad, const float* in,
             float* out, const Parallel* par) {
  const __m256 ninf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  const __m256i tail = tail_mask(c % 8);
  const int cv = c - c % 8;
  maxpool_windows(
      par, in_h, in_w, c, kernel, stride, pad, out, [&](float* o, int y0, int y1, int x0, int x1) {
        for (int ch = 0; ch < cv; ch += 8) {
          __m256 m = ninf;
          for (int iy = y0; iy < y1; ++iy)
            for (int ix = x0; ix < x1; ++ix)
              m = _mm256_max_ps(
                  m, _mm256_loadu_ps(in + (static_cast<size_t>(iy) * in_w + ix) * c + ch));
          _mm256_storeu_ps(o + ch, m);
        }
        if (cv < c) {
          __m256 m = ninf;
          for (int iy = y0; iy < y1; ++iy)
            for (int ix = x0; ix < x1; ++ix)
              m = _mm256_max_ps(
                  m, _mm256_maskload_ps(in + (static_cast<size_t>(iy) * in_w + ix) * c + cv, tail));
          store_n(o + cv, m, c % 8);
        }
      });
}

void global_avgpool(int h, int w, int c, const float* in, float* out) {
  const size_t n = static_cast<size_t>(h) * w;
  const __m256 inv = _mm256_set1_ps(n ? 1.0f / static_cast<float>(n) : 0.0f);
  const __m256i tail = tail_mask(c % 8);
  const int cv = c - c % 8;
  // Four independent partial sums per channel group keep the adds pipelined
  // and the rounding error small.
  for (int ch = 0; ch < cv; ch += 8) {
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    size_t p = 0;
    for (; p + 4 <= n; p += 4) {
      s0 = _mm256_add_ps(s0, _mm256_loadu_ps(in + (p + 0) * c + ch));
      s1 = _mm256_add_ps(s1, _mm256_loadu_ps(in + (p + 1) * c + ch));
      s2 = _mm256_add_ps(s2, _mm256_loadu_ps(in + (p + 2) * c + ch));
      s3 = _mm256_add_ps(s3, _mm256_loadu_ps(in + (p + 3) * c + ch));
    }
    for (; p < n; ++p) s0 = _mm256_add_ps(s0, _mm256_loadu_ps(in + p * c + ch));
    const __m256 s = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
    _mm256_storeu_ps(out + ch, _mm256_mul_ps(s, inv));
  }
  if (cv < c) {
    __m256 s = _mm256_setzero_ps();
    for (size_t p = 0; p < n; ++p) s = _mm256_add_ps(s, _mm256_maskload_ps(in + p * c + cv, tail));
    store_n(out + cv, _mm256_mul_ps(s, inv), c % 8);
  }
}

}  // namespace spaedge::kernels::avx2
