// Scalar reference convolution: direct loops over OHWI weights. Deliberately
// plain; every other ISA is tested against this.
#include <cstring>

#include "kernels/scalar/scalar.h"

namespace spaedge::kernels::scalar {

size_t conv_packed_floats(const ConvGeometry& g) {
    return static_cast<size_t>(g.out_c) * g.kernel * g.kernel * g.in_c;
}

void conv_pack(const ConvGeometry& g, const float* w_ohwi, float* packed) {
    std::memcpy(packed, w_ohwi, conv_packed_floats(g) * sizeof(float));
}

size_t conv_scratch_floats(const ConvGeometry&, int) { return 0; }

void conv(const ConvGeometry& g, const float* packed, const float* in, float* out,
          const Epilogue& ep, float* /*scratch*/, int threads) {
    const int oh = g.out_h(), ow = g.out_w();
    const int k = g.kernel, ic = g.in_c, oc = g.out_c;
    (void)threads;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (int oy = 0; oy < oh; ++oy) {
        for (int ox = 0; ox < ow; ++ox) {
            const size_t opix = (static_cast<size_t>(oy) * ow + ox) * oc;
            for (int o = 0; o < oc; ++o) {
                float acc = 0.0f;
                for (int ky = 0; ky < k; ++ky) {
                    const int iy = oy * g.stride - g.pad + ky;
                    if (iy < 0 || iy >= g.in_h) continue;
                    for (int kx = 0; kx < k; ++kx) {
                        const int ix = ox * g.stride - g.pad + kx;
                        if (ix < 0 || ix >= g.in_w) continue;
                        const float* x = in + (static_cast<size_t>(iy) * g.in_w + ix) * ic;
                        const float* w =
                            packed + ((static_cast<size_t>(o) * k + ky) * k + kx) * ic;
                        for (int i = 0; i < ic; ++i) acc += w[i] * x[i];
                    }
                }
                if (ep.bias) acc += ep.bias[o];
                if (ep.residual) acc += ep.residual[opix + o];  // same index: in-place safe
                if (ep.relu && acc < 0.0f) acc = 0.0f;
                out[opix + o] = acc;
            }
        }
    }
}

}  // namespace spaedge::kernels::scalar
