// NEON SPLoPA expansion (kernels.inc, splopa_expand). Blocks of a multiple
// of 4 inputs (the toolchain's 8 included): per row and prototype, each
// 4-lane piece of the prototype row P_p[x][:] is built once (U_p's row times
// V_p) and added to every block, times that block's coefficient (fma by
// scalar). Blocks of 1 or 2 inputs tile a vector: the prototype row is
// repeated across the lanes, the coefficients spread over theirs. Other
// widths take the scalar reference.
#include "kernels/neon/simd.h"

namespace spaedge::kernels::neon {

namespace {

void expand_wide(const SplopaArgs& s, float* dst, size_t ld) {
  const int bi = s.bi, ob = s.out_c / s.bo, ib = s.in_c / bi;
  for (int o = 0; o < s.out_c; ++o) {
    const int a = o / s.bo, x = o % s.bo;
    float* row = dst + static_cast<size_t>(o) * ld;
    for (int p = 0; p < s.n; ++p) {
      const float* u = s.u + (static_cast<size_t>(p) * s.bo + x) * s.rank;
      const float* v = s.v + static_cast<size_t>(p) * s.rank * bi;
      const float* c = s.coef + (static_cast<size_t>(p) * ob + a) * ib;
      for (int y0 = 0; y0 < bi; y0 += 4) {
        float32x4_t pat = vdupq_n_f32(0.0f);
        for (int k = 0; k < s.rank; ++k)
          pat = vfmaq_n_f32(pat, vld1q_f32(v + static_cast<size_t>(k) * bi + y0), u[k]);
        float* d = row + y0;
        int j = 0;
        for (; j + 2 <= ib; j += 2) {
          float* d0 = d + static_cast<size_t>(j) * bi;
          float* d1 = d0 + bi;
          vst1q_f32(d0, vfmaq_n_f32(vld1q_f32(d0), pat, c[j]));
          vst1q_f32(d1, vfmaq_n_f32(vld1q_f32(d1), pat, c[j + 1]));
        }
        if (j < ib) {
          float* d0 = d + static_cast<size_t>(j) * bi;
          vst1q_f32(d0, vfmaq_n_f32(vld1q_f32(d0), pat, c[j]));
        }
      }
    }
  }
}

// bi = 1 or 2: lane l of a 4-lane step takes block l / bi, prototype entry l % bi.
void expand_tiled(const SplopaArgs& s, float* dst, size_t ld) {
  const int bi = s.bi, ob = s.out_c / s.bo, ib = s.in_c / bi;
  const int full = s.in_c - s.in_c % 4, tail = s.in_c % 4;
  for (int o = 0; o < s.out_c; ++o) {
    const int a = o / s.bo, x = o % s.bo;
    float* row = dst + static_cast<size_t>(o) * ld;
    for (int p = 0; p < s.n; ++p) {
      const float* u = s.u + (static_cast<size_t>(p) * s.bo + x) * s.rank;
      const float* v = s.v + static_cast<size_t>(p) * s.rank * bi;
      const float* c = s.coef + (static_cast<size_t>(p) * ob + a) * ib;
      float pv[2] = {0.0f, 0.0f};
      for (int y = 0; y < bi; ++y)
        for (int k = 0; k < s.rank; ++k) pv[y] += u[k] * v[static_cast<size_t>(k) * bi + y];
      const float32x4_t pat =
          bi == 1 ? vdupq_n_f32(pv[0]) : vcombine_f32(vld1_f32(pv), vld1_f32(pv));
      auto coefs = [&](int j, int lanes) {  // the coefficients of lanes [j, j + lanes)
        if (bi == 1) return load_n(c + j, lanes);
        const float32x4_t q = load_n(c + j / 2, lanes / 2);  // [c0 c1 . .]
        return vzip1q_f32(q, q);                             // [c0 c0 c1 c1]
      };
      int j = 0;
      for (; j < full; j += 4) vst1q_f32(row + j, vfmaq_f32(vld1q_f32(row + j), coefs(j, 4), pat));
      if (tail) store_n(row + j, vfmaq_f32(load_n(row + j, tail), coefs(j, tail), pat), tail);
    }
  }
}

}  // namespace

void splopa_expand(const SplopaArgs& s, float* dst, size_t ld) {
  if (s.out_c <= 0 || s.in_c <= 0 || s.n <= 0) return;
  if (s.bi % 4 == 0)
    expand_wide(s, dst, ld);
  else if (s.bi <= 2)
    expand_tiled(s, dst, ld);
  else
    scalar::table().splopa_expand(s, dst, ld);  // any other block width: the reference
}

}  // namespace spaedge::kernels::neon
