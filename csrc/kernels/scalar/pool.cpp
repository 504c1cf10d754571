// Scalar reference pooling.
#include <limits>

#include "kernels/kernels.h"

namespace spaedge::kernels::scalar {

void maxpool(int in_h, int in_w, int c, int kernel, int stride, int pad, const float* in,
             float* out, const Parallel* par) {
  const int oh = (in_h + 2 * pad - kernel) / stride + 1;
  const int ow = (in_w + 2 * pad - kernel) / stride + 1;
  maxpool_row_bands(par, oh, ow, c, kernel, [&](int oy0, int oy1, int) {
    for (int oy = oy0; oy < oy1; ++oy) {
      for (int ox = 0; ox < ow; ++ox) {
        float* o = out + (static_cast<size_t>(oy) * ow + ox) * c;
        for (int ch = 0; ch < c; ++ch) o[ch] = -std::numeric_limits<float>::infinity();
        for (int ky = 0; ky < kernel; ++ky) {
          const int iy = oy * stride - pad + ky;
          if (iy < 0 || iy >= in_h) continue;
          for (int kx = 0; kx < kernel; ++kx) {
            const int ix = ox * stride - pad + kx;
            if (ix < 0 || ix >= in_w) continue;
            const float* x = in + (static_cast<size_t>(iy) * in_w + ix) * c;
            for (int ch = 0; ch < c; ++ch)
              if (x[ch] > o[ch]) o[ch] = x[ch];
          }
        }
      }
    }
  });
}

void global_avgpool(int h, int w, int c, const float* in, float* out) {
  const size_t n = static_cast<size_t>(h) * w;
  for (int ch = 0; ch < c; ++ch) {
    double s = 0.0;
    for (size_t p = 0; p < n; ++p) s += in[p * c + ch];
    out[ch] = n ? static_cast<float>(s / static_cast<double>(n)) : 0.0f;
  }
}

}  // namespace spaedge::kernels::scalar
