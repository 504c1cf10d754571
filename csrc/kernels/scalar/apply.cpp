// Scalar reference task application: gather + centre-tap merge + BN scale,
// written straight into the scalar packed layout (OHWI, then A' and B' for
// the fused low-rank mode). Plain loops; the SIMD variants are tested
// against this.
#include "kernels/scalar/scalar.h"

namespace spaedge::kernels::scalar {

void conv_apply(const ApplyArgs& a, int k0, int k1, float* packed) {
    const ConvGeometry& g = a.g;
    const size_t ic = static_cast<size_t>(g.in_c), oc = static_cast<size_t>(g.out_c);
    const size_t K = static_cast<size_t>(g.kernel) * g.kernel * ic;
    const size_t centre = static_cast<size_t>(g.kernel / 2) * g.kernel + g.kernel / 2;
    const size_t tap_floats = static_cast<size_t>(a.base_in) * a.base_out;
    const bool merge = a.rank > 0 && !a.fused;
    for (size_t o = 0; o < oc; ++o) {
        const size_t bo = static_cast<size_t>(a.out_index[o]);
        const float s = a.scale ? a.scale[o] : 1.0f;
        float* dst = packed + o * K;
        for (size_t k = static_cast<size_t>(k0); k < static_cast<size_t>(k1); ++k) {
            const size_t t = k / ic, i = k % ic;
            float w = a.base[t * tap_floats + static_cast<size_t>(a.in_index[i]) * a.base_out + bo];
            if (merge && t == centre) {
                float acc = 0.0f;
                for (int r = 0; r < a.rank; ++r)
                    acc += a.bt[static_cast<size_t>(r) * oc + o] * a.a[static_cast<size_t>(r) * ic + i];
                w += acc;
            }
            dst[k] = a.scale ? w * s : w;
        }
    }
    if (a.fused && a.rank > 0 && static_cast<size_t>(k1) == K) {
        // [W' out_c x K][A' rank x in_c][B' out_c x rank], as conv_lowrank_pack.
        float* ap = packed + oc * K;
        const size_t an = static_cast<size_t>(a.rank) * ic;
        for (size_t j = 0; j < an; ++j) ap[j] = a.a[j];
        float* bp = ap + an;
        for (size_t o = 0; o < oc; ++o)
            for (int r = 0; r < a.rank; ++r) {
                const float b = a.bt[static_cast<size_t>(r) * oc + o];
                bp[o * a.rank + r] = a.scale ? b * a.scale[o] : b;
            }
    }
}

}  // namespace spaedge::kernels::scalar
