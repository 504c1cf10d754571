// Scalar reference SPLoPA expansion (kernels.inc, splopa_expand): for each
// kept output row and prototype, the prototype's row P_p[o % bo][:] is
// computed once (U_p row times V_p, in chunks of input lanes) and added,
// scaled by the row's block coefficients, to every input block in turn.
#include <algorithm>

#include "kernels/kernels.h"

namespace spaedge::kernels::scalar {

void splopa_expand(const SplopaArgs& s, float* dst, size_t ld) {
  constexpr int kChunk = 16;  // prototype-row lanes computed at a time
  const int ob = s.out_c / s.bo, ib = s.in_c / s.bi;
  float prow[kChunk];
  for (int o = 0; o < s.out_c; ++o) {
    const int a = o / s.bo, x = o % s.bo;
    float* row = dst + static_cast<size_t>(o) * ld;
    for (int p = 0; p < s.n; ++p) {
      const float* u = s.u + (static_cast<size_t>(p) * s.bo + x) * s.rank;  // U_p[x][:]
      const float* v = s.v + static_cast<size_t>(p) * s.rank * s.bi;        // V_p
      const float* c = s.coef + (static_cast<size_t>(p) * ob + a) * ib;     // C_p[a][:]
      for (int y0 = 0; y0 < s.bi; y0 += kChunk) {
        const int m = std::min(kChunk, s.bi - y0);
        for (int y = 0; y < m; ++y) {
          float acc = 0.0f;
          for (int k = 0; k < s.rank; ++k) acc += u[k] * v[static_cast<size_t>(k) * s.bi + y0 + y];
          prow[y] = acc;
        }
        for (int j = 0; j < ib; ++j) {
          const float cj = c[j];
          float* d = row + static_cast<size_t>(j) * s.bi + y0;
          for (int y = 0; y < m; ++y) d[y] += cj * prow[y];
        }
      }
    }
  }
}

}  // namespace spaedge::kernels::scalar
