// Intrinsic helpers shared by the AVX2 sources (only include from avx2/*.cpp).
#pragma once

#include <immintrin.h>

#include "kernels/kernels.h"

namespace spaedge::kernels::avx2 {

// Lane mask selecting the first n (0..8) floats of a vector.
inline __m256i tail_mask(int n) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx);
}

// Stores the first n (0..8) lanes of v. Masked stores (vmaskmovps) are
// microcoded and very slow on AMD Zen, so this uses plain 128/64/32-bit
// stores; masked loads are fast everywhere and are used freely.
inline void store_n(float* p, __m256 v, int n) {
  if (n <= 0) return;
  if (n >= 8) {
    _mm256_storeu_ps(p, v);
    return;
  }
  __m128 x = _mm256_castps256_ps128(v);
  if (n >= 4) {
    _mm_storeu_ps(p, x);
    x = _mm256_extractf128_ps(v, 1);
    p += 4;
    n -= 4;
  }
  if (n >= 2) {
    _mm_storel_pi(reinterpret_cast<__m64*>(p), x);
    x = _mm_movehl_ps(x, x);
    p += 2;
    n -= 2;
  }
  if (n) _mm_store_ss(p, x);
}

// Horizontal sum of the 8 lanes.
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

}  // namespace spaedge::kernels::avx2
