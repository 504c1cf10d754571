// Scalar reference fully connected layer.
#include "kernels/kernels.h"

namespace spaedge::kernels::scalar {

void linear(int in_f, int out_f, const float* w, const float* bias, const float* x, float* y) {
  for (int o = 0; o < out_f; ++o) {
    const float* row = w + static_cast<size_t>(o) * in_f;
    float acc = 0.0f;
    for (int i = 0; i < in_f; ++i) acc += row[i] * x[i];
    y[o] = (bias ? bias[o] : 0.0f) + acc;
  }
}

}  // namespace spaedge::kernels::scalar
