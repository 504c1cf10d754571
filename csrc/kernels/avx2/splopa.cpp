// AVX2+FMA SPLoPA expansion (kernels.inc, splopa_expand). A row of the update
// is periodic along the inputs: lane j takes coefficient C_p[a][j / bi] and
// prototype value P_p[x][j % bi]. Blocks of 1, 2, 4 or 8 inputs tile a
// vector: per row, each prototype's lane pattern is built once (a permute of
// V_p's rows, times U_p's row), the coefficients are spread over their lanes
// by a permute, and up to four prototypes are summed in registers per
// 8-lane step. Blocks of a multiple of 8 inputs take one broadcast
// coefficient per vector; other sizes take the scalar reference.
#include <algorithm>

#include "kernels/avx2/simd.h"

namespace spaedge::kernels::avx2 {

namespace {

// bi divides 8: every 8-lane step of a row covers 8 / bi whole blocks.
void expand_tiled(const SplopaArgs& s, float* dst, size_t ld) {
  const int bi = s.bi, ob = s.out_c / s.bo, ib = s.in_c / bi, per = 8 / bi;
  alignas(32) int div[8], mod[8];
  for (int l = 0; l < 8; ++l) {
    div[l] = l / bi;
    mod[l] = l % bi;
  }
  const __m256i idx_div = _mm256_load_si256(reinterpret_cast<const __m256i*>(div));
  const __m256i idx_mod = _mm256_load_si256(reinterpret_cast<const __m256i*>(mod));
  const __m256i first_bi = tail_mask(bi), first_per = tail_mask(per);
  const int full = s.in_c - s.in_c % 8, tail = s.in_c % 8;
  const __m256i tail_lanes = tail_mask(tail), tail_coefs = tail_mask(tail / bi);
  for (int o = 0; o < s.out_c; ++o) {
    const int a = o / s.bo, x = o % s.bo;
    float* row = dst + static_cast<size_t>(o) * ld;
    for (int p0 = 0; p0 < s.n; p0 += 4) {
      const int g = std::min(4, s.n - p0);
      __m256 pat[4];
      const float* c[4];
      for (int q = 0; q < g; ++q) {
        const int p = p0 + q;
        const float* u = s.u + (static_cast<size_t>(p) * s.bo + x) * s.rank;
        const float* v = s.v + static_cast<size_t>(p) * s.rank * bi;
        __m256 acc = _mm256_setzero_ps();
        for (int k = 0; k < s.rank; ++k) {
          const __m256 vk = _mm256_permutevar8x32_ps(
              _mm256_maskload_ps(v + static_cast<size_t>(k) * bi, first_bi), idx_mod);
          acc = _mm256_fmadd_ps(_mm256_broadcast_ss(u + k), vk, acc);
        }
        pat[q] = acc;
        c[q] = s.coef + (static_cast<size_t>(p) * ob + a) * ib;
      }
      int j = 0;
      for (; j < full; j += 8) {
        __m256 d = _mm256_loadu_ps(row + j);
        for (int q = 0; q < g; ++q) {
          const __m256 cq =
              _mm256_permutevar8x32_ps(_mm256_maskload_ps(c[q] + j / bi, first_per), idx_div);
          d = _mm256_fmadd_ps(cq, pat[q], d);
        }
        _mm256_storeu_ps(row + j, d);
      }
      if (tail) {
        __m256 d = _mm256_maskload_ps(row + j, tail_lanes);
        for (int q = 0; q < g; ++q) {
          const __m256 cq =
              _mm256_permutevar8x32_ps(_mm256_maskload_ps(c[q] + j / bi, tail_coefs), idx_div);
          d = _mm256_fmadd_ps(cq, pat[q], d);
        }
        store_n(row + j, d, tail);
      }
    }
  }
}

// bi a multiple of 8: each 8-lane piece of a block takes one coefficient.
void expand_wide(const SplopaArgs& s, float* dst, size_t ld) {
  const int bi = s.bi, ob = s.out_c / s.bo, ib = s.in_c / bi;
  for (int o = 0; o < s.out_c; ++o) {
    const int a = o / s.bo, x = o % s.bo;
    float* row = dst + static_cast<size_t>(o) * ld;
    for (int p = 0; p < s.n; ++p) {
      const float* u = s.u + (static_cast<size_t>(p) * s.bo + x) * s.rank;
      const float* v = s.v + static_cast<size_t>(p) * s.rank * bi;
      const float* c = s.coef + (static_cast<size_t>(p) * ob + a) * ib;
      for (int y0 = 0; y0 < bi; y0 += 8) {
        __m256 pat = _mm256_setzero_ps();
        for (int k = 0; k < s.rank; ++k)
          pat = _mm256_fmadd_ps(_mm256_broadcast_ss(u + k),
                                _mm256_loadu_ps(v + static_cast<size_t>(k) * bi + y0), pat);
        for (int j = 0; j < ib; ++j) {
          float* d = row + static_cast<size_t>(j) * bi + y0;
          _mm256_storeu_ps(d, _mm256_fmadd_ps(_mm256_broadcast_ss(c + j), pat, _mm256_loadu_ps(d)));
        }
      }
    }
  }
}

}  // namespace

void splopa_expand(const SplopaArgs& s, float* dst, size_t ld) {
  if (s.out_c <= 0 || s.in_c <= 0 || s.n <= 0) return;
  if (8 % s.bi == 0)
    expand_tiled(s, dst, ld);
  else if (s.bi % 8 == 0)
    expand_wide(s, dst, ld);
  else
    scalar::table().splopa_expand(s, dst, ld);  // any other block width: the reference
}

}  // namespace spaedge::kernels::avx2
