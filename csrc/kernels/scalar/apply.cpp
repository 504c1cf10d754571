// Scalar reference task application: gather + centre-tap merge + BN scale,
// written straight into the scalar packed layout (OHWI, then A' and B' for
// the fused low-rank mode). Plain loops; the SIMD variants are tested
// against this.
#include "kernels/kernels.h"

namespace spaedge::kernels::scalar {

namespace {

// Packed rows of kept outputs [o0, o1), the base read OIHW (base[o][i][t]).
void apply_outputs(const ApplyArgs& a, size_t o0, size_t o1, float* packed) {
  const ConvGeometry& g = a.g;
  const size_t ic = static_cast<size_t>(g.in_c), oc = static_cast<size_t>(g.out_c);
  const size_t taps = static_cast<size_t>(g.kernel) * g.kernel;
  const size_t K = taps * ic;
  const size_t centre = static_cast<size_t>(g.kernel / 2) * g.kernel + g.kernel / 2;
  const size_t bin = static_cast<size_t>(a.base_in);
  const bool merge = a.rank > 0 && !a.fused;
  for (size_t o = o0; o < o1; ++o) {
    const size_t bo = static_cast<size_t>(a.out_index[o]);
    const float s = a.scale ? a.scale[o] : 1.0f;
    float* dst = packed + o * K;
    for (size_t k = 0; k < K; ++k) {
      const size_t t = k / ic, i = k % ic, bi = static_cast<size_t>(a.in_index[i]);
      float w = a.base[(bo * bin + bi) * taps + t];
      if (merge && t == centre) {
        float acc = 0.0f;
        for (int r = 0; r < a.rank; ++r)
          acc += a.bt[static_cast<size_t>(r) * oc + o] * a.a[static_cast<size_t>(r) * ic + i];
        w += acc;
      }
      dst[k] = a.scale ? w * s : w;
    }
  }
}

// Fused mode, layout [W' out_c x K][A' rank x in_c][B' out_c x rank] as
// conv_lowrank_pack: B' rows of outputs [o0, o1), and A' when `with_a`.
void fused_parts(const ApplyArgs& a, size_t o0, size_t o1, bool with_a, float* packed) {
  const size_t ic = static_cast<size_t>(a.g.in_c), oc = static_cast<size_t>(a.g.out_c);
  const size_t K = static_cast<size_t>(a.g.kernel) * a.g.kernel * ic;
  float* ap = packed + oc * K;
  const size_t an = static_cast<size_t>(a.rank) * ic;
  if (with_a)
    for (size_t j = 0; j < an; ++j) ap[j] = a.a[j];
  float* bp = ap + an;
  for (size_t o = o0; o < o1; ++o)
    for (int r = 0; r < a.rank; ++r) {
      const float b = a.bt[static_cast<size_t>(r) * oc + o];
      bp[o * a.rank + r] = a.scale ? b * a.scale[o] : b;
    }
}

}  // namespace

void conv_apply(const ApplyArgs& a, int o0, int o1, float* packed) {
  const size_t oc = static_cast<size_t>(a.g.out_c);
  apply_outputs(a, static_cast<size_t>(o0), static_cast<size_t>(o1), packed);
  if (a.fused && a.rank > 0)
    fused_parts(a, static_cast<size_t>(o0), static_cast<size_t>(o1), static_cast<size_t>(o1) == oc,
                packed);
}

}  // namespace spaedge::kernels::scalar
